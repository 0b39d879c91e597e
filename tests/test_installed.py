"""The project installed as the components image installs it (issue 27): pipelines/Dockerfile
copies its sources, runs `pip install .` (not editable) and runs from /app, where only
params.yaml is. Here: the same sources, installed into a temporary folder, run by this
virtualenv's Python (for the dependencies) from a folder that is not the repository. What the
code ships it finds beside itself (package data: the InferenceService templates, the app's page);
params.yaml it reads from the working directory or --params, never from beside its source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "pipelines" / "Dockerfile"
TEMPLATES = ("inferenceservice-rest.yaml", "inferenceservice-grpc.yaml")
# The packaged copies of manifests/base's InferenceServices (see components/release/isvc.py).
PACKAGED = ROOT / "components" / "release" / "templates"
COMPILED = ROOT / "pipelines" / "sign2text.yaml"
NOT_FOUND = "; run sign2text from the repository root, or pass --params FILE"


def _build_context() -> list[str]:
    """What the Dockerfile's build stage copies before it installs the project (`pip install
    ... .`; an earlier one installs only its dependencies)."""
    sources = []
    for line in DOCKERFILE.read_text().split("\nFROM ")[1].splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words):
            sources += [w.rstrip("/") for w in words[1:-1]]
        if "pip install" in line and words[-1] == ".":
            return sources
    raise AssertionError(f"no `pip install ... .` in {DOCKERFILE}'s build stage")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The components image's install, in a folder: its sources copied (so the build leaves
    nothing in the checkout), then `pip install --target` without the network."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    for name in _build_context():
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile"]
    pip += ["--no-build-isolation", "--disable-pip-version-check", "-q"]
    out = subprocess.run(
        [*pip, "--target", str(tmp / "site"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp / "site"


def _start(site: Path, cwd: Path, *argv: str) -> subprocess.Popen:
    """`python ...` or `sign2text ...` (the console script pip installed) in `cwd`, with only
    the installed copy of the project importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    program = {"python": sys.executable, "sign2text": str(site / "bin" / "sign2text")}
    return subprocess.Popen(
        [program[argv[0]], *argv[1:]],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    return _wait(_start(site, cwd, *argv))


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A fresh working directory outside the repository."""
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


def test_the_installed_copy_is_what_runs(site, elsewhere):
    code = "import components, pipelines, sign2text, app, model; print(components.__file__)"
    out = _run(site, elsewhere, "python", "-c", code)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(site)


def test_the_packaged_templates_are_the_kustomize_base():
    """One source: manifests/base (what kubectl applies and the overlays patch). The package
    ships a copy for deploy's first rollout; it must be the same bytes."""
    for name in TEMPLATES:
        source = ROOT / "manifests" / "base" / name
        assert (PACKAGED / name).read_bytes() == source.read_bytes(), (
            f"components/release/templates/{name} differs from manifests/base/{name}: "
            f"edit manifests/base/{name}, then copy it over (cp manifests/base/{name} "
            "components/release/templates/)"
        )


def test_deploys_default_templates_ship_with_the_package(site, elsewhere):
    code = (
        "from components.release.isvc import DEFAULT_TEMPLATES as T, load_templates; "
        "print([str(p) for p in T]); print(sorted(load_templates(T)))"
    )
    out = _run(site, elsewhere, "python", "-c", code)
    assert out.returncode == 0, out.stderr
    paths, names = out.stdout.splitlines()
    assert all(Path(p).is_relative_to(site) for p in yaml.safe_load(paths)), paths
    assert names == "['sign2text', 'sign2text-grpc']"


@pytest.mark.slow  # two compiles, each importing torch and kfp: 10 to 30 s on 2 cores
def test_pipeline_compile_reads_the_working_directorys_params(site, tmp_path):
    """As in the components image: params.yaml in the working directory; or --params (after
    the subcommand, as the steps take it) from anywhere; else the steps' clear error."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    for d in (here, elsewhere):
        d.mkdir()
    out = _run(site, elsewhere, "sign2text", "pipeline", "compile", "--out", "spec.yaml")
    assert out.returncode == 2
    assert out.stderr == (
        f"sign2text: error: params file not found: params.yaml in {elsewhere}{NOT_FOUND}\n"
    )
    assert not (elsewhere / "spec.yaml").exists()

    shutil.copy(ROOT / "params.yaml", here / "params.yaml")
    executors = next(yaml.safe_load_all(COMPILED.read_text()))["deploymentSpec"]["executors"]
    (image,) = {e["container"]["image"] for e in executors.values()}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = 123
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(params))
    compile_ = ("sign2text", "pipeline", "compile", "--out", "spec.yaml")
    compiles = [  # at once: each takes seconds
        _start(site, here, *compile_, "--image", image),
        _start(site, elsewhere, *compile_, "--params", str(other)),
    ]
    for out in [_wait(p) for p in compiles]:
        assert out.returncode == 0, out.stderr
    assert (here / "spec.yaml").read_text() == COMPILED.read_text()
    spec = next(yaml.safe_load_all((elsewhere / "spec.yaml").read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["epochs"]["defaultValue"] == 123


def test_the_app_serves_its_page(site, elsewhere):
    files = {"/": "index.html", "/static/app.js": "app.js", "/static/style.css": "style.css"}
    code = (
        "from fastapi.testclient import TestClient; "
        "from app.main import build_parser, create_app; "
        "args = build_parser().parse_args(['--model-url', 'http://x.test']); "
        "web = TestClient(create_app(args)); "
        f"print([(r.status_code, len(r.content)) for r in map(web.get, {list(files)!r})])"
    )
    out = _run(site, elsewhere, "python", "-c", code)
    assert out.returncode == 0, out.stderr
    sizes = [len((ROOT / "app" / "static" / f).read_bytes()) for f in files.values()]
    assert out.stdout.strip() == str([(200, n) for n in sizes])
