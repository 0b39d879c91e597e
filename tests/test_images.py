"""Dockerfiles (lint, COPY sources, non-root, no secrets) and stamping an image into overlays.

Images cannot be built here (no Docker daemon, no registry); what can be checked offline is.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from components.release.images import stamp_overlays
from components.release.package import COMMIT_ENV, git_commit
from sign2text.cli import main
from tests.kustomize import BIN, OVERLAYS, ROOT, manifests_copy, one, render

DOCKERFILES = (
    ROOT / "model" / "Dockerfile",
    ROOT / "pipelines" / "Dockerfile",
    ROOT / "app" / "Dockerfile",
)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
        for ln in lines
        if ln and not ln.startswith("#")
    ]


def dockerignored(rel: str) -> bool:
    """Whether .dockerignore keeps `rel` out of the context (last matching pattern wins)."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        negate, pat = pat.startswith("!"), pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel.split("/")[0], pat):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_is_clean(dockerfile):
    done = subprocess.run(
        [BIN / "hadolint", "--no-color", "-f", "json", dockerfile],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(done.stdout or "[]") == [], done.stdout


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    done = subprocess.run(
        [BIN / "hadolint", "--no-color", "-f", "json", bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert {f["code"] for f in json.loads(done.stdout)} >= {"DL3007", "DL3013"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copied_file_exists_and_enters_the_build_context(dockerfile):
    copies = [a for op, a in instructions(dockerfile) if op == "COPY" and "--from=" not in a]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.parent.name}: COPY {src}: missing"
            assert not dockerignored(src.rstrip("/")), f"{src} is excluded by .dockerignore"


def test_dockerignore_keeps_data_and_secrets_out():
    for rel in ("data", "artifacts", ".venv", ".dvc", ".git", "manifests", "tests"):
        assert dockerignored(rel), rel
    assert not dockerignored("model") and not dockerignored("app")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_are_multi_stage_pinned_non_root_without_secrets(dockerfile):
    ops = instructions(dockerfile)
    args = dict(a.split("=", 1) for op, a in ops if op == "ARG" and "=" in a)
    bases = [a.split()[0] for op, a in ops if op == "FROM"]
    assert len(bases) >= 2, "multi-stage"
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
        assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", image), f"{image}: not pinned to a version"
    users = [a for op, a in ops if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "runs as root"
    secret = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)", re.I)
    for op, a in ops:
        if op in ("ARG", "ENV"):
            assert not secret.search(a), f"{op} {a}: credentials never go into an image"


def test_serving_requirements_match_the_project_pins():
    """model/requirements.txt installs only what model/ needs, at pyproject's versions: no torch
    (the Dockerfile adds it to the torch build only)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    serving = [
        ln
        for ln in (ROOT / "model" / "requirements.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert set(serving) <= set(project)
    assert {s.split("==")[0].split("[")[0] for s in serving} == {
        "onnxruntime",
        "openvino",
        "numpy",
        "opencv-python-headless",
        "kserve",
    }


def requirement_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def test_app_requirements_match_the_project_pins():
    """app/requirements.txt installs the web app's libraries only, each at the lock's version
    (they come with the project through kserve, not as direct dependencies)."""
    lock = set(requirement_lines(ROOT / "requirements.lock"))
    app = requirement_lines(ROOT / "app" / "requirements.txt")
    assert app and set(app) <= lock, set(app) - lock
    names = {s.split("==")[0].split("[")[0] for s in app}
    allowed = {"fastapi", "uvicorn", "websockets", "python-multipart", "boto3", "httpx"}
    assert {"fastapi", "uvicorn"} <= names <= allowed, names - allowed


def test_app_image_holds_app_alone_and_runs_its_server(tmp_path):
    """Only app/ from the context (no model code, no torch), the contract's command line, and
    the spool where the Deployment mounts its volume."""
    ops = instructions(ROOT / "app" / "Dockerfile")
    final = ops[max(i for i, (op, _) in enumerate(ops) if op == "FROM") :]
    copies = [shlex.split(a) for op, a in final if op == "COPY" and "--from=" not in a]
    assert copies == [["app/", "/app/app/"]]
    assert ("EXPOSE", "8501") in final
    (cmd,) = [json.loads(a) for op, a in final if op == "CMD"]
    assert cmd[:3] == ["python", "-m", "app.main"]
    args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert set(args) <= {"--host", "--port", "--model-url", "--feedback", "--spool"}
    assert args["--port"] == "8501" and "--model-url" in args
    dev = render(manifests_copy(tmp_path) / "overlays" / "dev")
    (container,) = one(dev, "Deployment", "sign2text-app")["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert args["--spool"] in mounts and f"--spool={args['--spool']}" in container["args"]


def test_stamp_points_every_overlay_at_the_pushed_image(tmp_path):
    manifests = manifests_copy(tmp_path)
    assert (
        main(
            [
                "images",
                "stamp",
                "--registry",
                "registry.example.com:5000/ml",
                "--tag",
                "0.2.0",
                "--manifests",
                str(manifests),
            ]
        )
        == 0
    )
    images = {}
    for name in OVERLAYS:
        objects = render(manifests / "overlays" / name)
        rt = one(objects, "ServingRuntime", "sign2text")
        app = one(objects, "Deployment", "sign2text-app")["spec"]["template"]["spec"]
        images[name] = (rt["spec"]["containers"][0]["image"], app["containers"][0]["image"])
    assert images == {
        "dev": (
            "registry.example.com:5000/ml/sign2text-serving:0.2.0",
            "registry.example.com:5000/ml/sign2text-app:0.2.0",
        ),
        "prod": (
            "registry.example.com:5000/ml/sign2text-serving:0.2.0-cuda",
            "registry.example.com:5000/ml/sign2text-app:0.2.0",  # one build: no torch
        ),
        "triton": (
            "registry.example.com:5000/ml/sign2text-serving:0.2.0",
            "registry.example.com:5000/ml/sign2text-app:0.2.0",
        ),
    }
    # Stamping again replaces, it does not append.
    stamp_overlays(manifests, "ghcr.io/acme", "0.3.0")
    objects = render(manifests / "overlays" / "prod")
    rt = one(objects, "ServingRuntime", "sign2text")
    assert rt["spec"]["containers"][0]["image"] == "ghcr.io/acme/sign2text-serving:0.3.0-cuda"
    app = one(objects, "Deployment", "sign2text-app")["spec"]["template"]["spec"]
    assert app["containers"][0]["image"] == "ghcr.io/acme/sign2text-app:0.3.0"


def test_stamp_changes_nothing_when_an_overlay_lacks_an_image(tmp_path, capsys):
    """Every overlay is checked before any is written: no half-stamped release."""
    manifests = manifests_copy(tmp_path)
    prod = manifests / "overlays" / "prod" / "kustomization.yaml"
    prod.write_text(prod.read_text().replace("- name: sign2text-app", "- name: other-app"))
    before = {p: p.read_text() for p in manifests.glob("overlays/*/kustomization.yaml")}
    argv = ["images", "stamp", "--registry=ghcr.io/acme", "--tag=1", f"--manifests={manifests}"]
    assert main(argv) == 2
    assert "expected one images: entry for sign2text-app" in capsys.readouterr().err
    assert {p: p.read_text() for p in before} == before


@pytest.mark.parametrize(
    ("registry", "tag"),
    [("Bad Registry", "1"), ("ghcr.io/acme", "a:b"), ("ghcr.io/acme", "-x"), ("https://r.io", "1")],
)
def test_stamp_rejects_bad_references_and_changes_nothing(tmp_path, capsys, registry, tag):
    manifests = manifests_copy(tmp_path)
    before = {p: p.read_text() for p in manifests.glob("overlays/*/kustomization.yaml")}
    argv = ["images", "stamp", f"--registry={registry}", f"--tag={tag}", f"--manifests={manifests}"]
    assert main(argv) == 2
    assert "sign2text: error:" in capsys.readouterr().err
    assert {p: p.read_text() for p in before} == before


def test_components_image_knows_its_commit():
    """`make images` passes the commit to the components build, whose final stage turns it into
    the variable lineage reads (pipeline pods have no git checkout)."""
    ops = instructions(ROOT / "pipelines" / "Dockerfile")
    final = ops[max(i for i, (op, _) in enumerate(ops) if op == "FROM") :]
    assert ("ARG", 'GIT_COMMIT=""') in final
    assert ("ENV", f'{COMMIT_ENV}="${{GIT_COMMIT}}"') in final
    dry = subprocess.run(
        ["make", "-n", "images", "REGISTRY=r.test/t", "TAG=1", "GIT_COMMIT=abc123-dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    builds = re.sub(r"\\\n\s*", " ", dry.stdout).splitlines()
    (components,) = [b for b in builds if "pipelines/Dockerfile" in b and "docker build" in b]
    assert "--build-arg GIT_COMMIT=abc123-dirty" in components
    if (ROOT / ".git").exists():  # by default: this checkout's HEAD
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dry = subprocess.run(
            ["make", "-n", "images", "REGISTRY=r.test/t", "TAG=1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"--build-arg GIT_COMMIT={head}" in dry.stdout


def test_lineage_commit_comes_from_git_else_from_the_image(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # tmp_path/x: not in a repo
    outside = tmp_path / "x"
    outside.mkdir()
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    assert git_commit(outside) is None
    monkeypatch.setenv(COMMIT_ENV, "0123abc")
    assert git_commit(outside) == "0123abc"
    monkeypatch.setenv("PATH", str(tmp_path))  # as in the image: no git at all
    assert git_commit(outside) == "0123abc"
    monkeypatch.undo()
    # In a checkout, its HEAD is the more exact answer, whatever the environment says.
    monkeypatch.setenv(COMMIT_ENV, "0123abc")
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert git_commit(repo) == head.stdout.strip()
