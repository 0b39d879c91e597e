"""Each image holds every module its code imports: proved offline, from this venv's metadata.

Images cannot be built here (tests/test_images.py), but what pip puts in them can be known.
Both install under requirements.lock, which pins every distribution this venv has at the
version it has (checked below), so an image gets the closure of its requirements over the
installed Requires-Dist, and the modules those distributions' RECORDs list. Against that:

- every module an import statement names, anywhere (KFP components and the smoke check import
  inside functions) in the files the image runs and the project modules they reach, must be in
  the image (static: about a second);
- the same imports, run in a fresh interpreter whose finders see nothing else, must succeed:
  this also catches a library importing what its own metadata does not declare, and a
  `from m import x` without x (slow: torch, great_expectations, kserve... load, 15-35 s on 2
  cores).

A dev-only dependency is then named as missing, as tritonclient was before it moved from the
`dev` extra to `dependencies` (the canary's smoke check failed half-way on a cluster).
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("model", "components", "sign2text", "pipelines", "app")


@dataclass(frozen=True)
class Image:
    requirements: tuple[str, ...]  # what the Dockerfile asks pip for
    own: tuple[str, ...]  # the project's packages in the image (installed or copied)
    entries: tuple[str, ...]  # the project files the image runs
    own_dists: tuple[str, ...] = ()  # the project, where pip installs it as a distribution
    never: tuple[str, ...] = ()  # name prefixes of distributions this venv has but it does not


def components() -> Image:
    """pipelines/Dockerfile: `pip install -c requirements.lock .`, no extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The steps run components.py's bodies (and glue.py); the CLI is the image's CMD.
    entries = ("pipelines/kfp_components.py", "pipelines/glue.py", "sign2text/cli.py")
    return Image(tuple(project["dependencies"]), PROJECT_PACKAGES, entries, ("sign2text",))


# The serving images run model/serving/server.py, and the runtime modules model/runtimes/choice.py
# imports by name (so that nothing on the ONNX image's path names torch): each image the ones it
# serves.
RUNTIMES = {
    "torch": "model/runtimes/torch_runtime.py",
    "onnx": "model/runtimes/onnx_runtime.py",
    "openvino": "model/runtimes/openvino_runtime.py",
    "triton": "model/runtimes/triton_runtime.py",
}


def serving() -> Image:
    """model/Dockerfile: torch, then model/requirements.txt; model/ copied to /app."""
    lines = (ROOT / "model" / "requirements.txt").read_text().splitlines()
    reqs = ("torch==2.14.1", *(ln for ln in lines if ln and not ln.startswith("#")))
    # By default the image takes torch's CPU wheel, which requires none of the CUDA wheels this
    # venv's (PyPI) torch does; the -cuda build has them too, so checking without covers both.
    entries = ("model/serving/server.py", *RUNTIMES.values())
    return Image(reqs, ("model",), entries, never=("cuda-", "nvidia-", "triton"))


def serving_onnx() -> Image:
    """model/Dockerfile with RUNTIME=onnx: model/requirements.txt alone, no torch; also the
    Triton transformer's image (manifests/overlays/triton)."""
    lines = (ROOT / "model" / "requirements.txt").read_text().splitlines()
    reqs = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    entries = ("model/serving/server.py", *(RUNTIMES[r] for r in ("onnx", "openvino", "triton")))
    return Image(reqs, ("model",), entries)


def app() -> Image:
    """app/Dockerfile: app/requirements.txt; app/ copied to /app. Every module of app/ is an
    entry (the server and whatever it imports lazily); torch and kserve never come along."""
    lines = (ROOT / "app" / "requirements.txt").read_text().splitlines()
    reqs = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    entries = tuple(str(p.relative_to(ROOT)) for p in sorted((ROOT / "app").rglob("*.py")))
    return Image(reqs, ("app",), entries)


IMAGES = {"components": components, "serving": serving, "serving-onnx": serving_onnx, "app": app}


def installed_mb(image: Image) -> float:
    """The image's install tree: the sizes its distributions' RECORDs list, in MB."""
    total = 0
    for dist in installed_in(image).values():
        for line in (dist.read_text("RECORD") or "").splitlines():
            size = line.rsplit(",", 1)[-1]
            total += int(size) if size.isdigit() else 0
    return total / 1e6


def test_onnx_serving_image_has_no_torch_and_is_a_fraction_of_the_torch_one():
    """The ONNX build serves without torch; its install tree, against the torch build's (here
    torch is the PyPI wheel, whose own files hold its CUDA kernels too: the CPU wheel the torch
    image takes is smaller, so the ratio below flatters the ONNX image; see docs/serving.md)."""
    onnx, torch_image = installed_in(serving_onnx()), installed_in(serving())
    assert not [n for n in onnx if n.startswith(("torch", "nvidia-", "triton"))]
    assert {"onnxruntime", "openvino"} <= set(onnx) and "torch" in torch_image
    sizes = {name: installed_mb(image()) for name, image in IMAGES.items()}
    print("install trees (MB):", {k: round(v) for k, v in sizes.items()})
    # 714 vs 1893 MB here: OpenVINO (184 MB, in both builds) took the ONNX build from 28% to 38%.
    assert sizes["serving-onnx"] < sizes["serving"] / 2.5


def test_app_image_installs_no_model_runtime():
    """The app talks to the model over HTTP only: nothing of the model's stack is in its image."""
    heavy = ("torch", "nvidia-", "triton", "kserve", "opencv", "numpy")
    assert not [n for n in installed_in(app()) if n.startswith(heavy)]


# ---- what pip installs -----------------------------------------------------------------------


def _installed(name: str) -> Distribution:
    try:
        return distribution(name)
    except PackageNotFoundError:
        pytest.fail(f"{name} is not installed here: run make setup (the proof reads its metadata)")


def closure(requirements: Iterable[str], never: tuple[str, ...] = ()) -> dict[str, Distribution]:
    """The distributions pip installs for `requirements`, by normalised name: Requires-Dist
    followed recursively, markers evaluated here (the images' Python 3.11 on Linux, as here)
    for the extras each distribution is asked for."""
    todo = [Requirement(r) for r in requirements]
    extras: dict[str, set[str]] = {}
    dists: dict[str, Distribution] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name.startswith(never) or name in dists and set(req.extras) <= extras[name]:
            continue
        extras[name] = extras.get(name, set()) | set(req.extras)
        dists[name] = dist = _installed(name)
        for dep in map(Requirement, dist.requires or ()):
            wanted = ("", *extras[name])  # "" for the unconditional ones
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(dep)
    return dists


def provided_modules(dist: Distribution) -> set[str]:
    """The dotted names a distribution's installed files make importable: its packages
    (namespace ones too, which several distributions share: hence full names, not top-level
    ones), modules and extension modules."""
    names = set()
    # RECORD read directly: dist.files builds an object per file, seconds for torch & co.
    for line in (dist.read_text("RECORD") or "").splitlines():
        path = line.rsplit(",", 2)[0].strip('"')
        *dirs, last = path.split("/")
        if path.startswith("..") or dirs and dirs[0].endswith((".dist-info", ".data")):
            continue  # scripts, metadata, data files
        names.update(".".join(dirs[:i]) for i in range(1, len(dirs) + 1))
        if last.endswith((".py", ".so")):
            names.add(".".join([*dirs, last.split(".")[0]]))
    return {n for n in names if all(p.isidentifier() for p in n.split("."))}


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


# ---- what the image's code imports -----------------------------------------------------------


@dataclass(frozen=True)
class Import:
    module: str
    names: tuple[str, ...]  # `from module import names` (may be submodules)
    where: str  # file:line


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(path: Path) -> Iterator[Import]:
    """Every import statement in the file, wherever it sits."""
    rel = path.relative_to(ROOT)
    for node in ast.walk(ast.parse(path.read_text(), str(rel))):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            yield from (Import(a.name, (), where) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the file's package upwards
                package = _module_name(rel).split(".")
                package = package if path.name == "__init__.py" else package[:-1]
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names = tuple(a.name for a in node.names if a.name != "*")
            yield Import(module, names, where)


def _source(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def reachable_imports(image: Image) -> list[Import]:
    """The imports of the image's entry files and of every project module they reach (with
    the packages above it, whose __init__ runs first)."""
    todo = [ROOT / e for e in image.entries]
    seen: set[Path] = set()
    found: list[Import] = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for imp in imports_in(path):
            found.append(imp)
            if imp.module.split(".")[0] not in image.own:
                continue
            parts = imp.module.split(".")
            modules = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
            modules += [f"{imp.module}.{n}" for n in imp.names]
            todo += [p for p in map(_source, modules) if p is not None]
    return found


# ---- checking them against the image ---------------------------------------------------------


def in_image(module: str, provided: set[str], own: set[str]) -> bool:
    """Whether the image can import `module`: the standard library, the project's own
    packages in it, or a module its distributions installed."""
    top = module.partition(".")[0]
    # The _sysconfigdata_* module is stdlib, generated per platform, so not in the names list.
    stdlib = top in sys.stdlib_module_names or top.startswith("_sysconfigdata_")
    return stdlib or top in own or module in provided


@functools.cache
def installed_in(image: Image) -> dict[str, Distribution]:
    return closure(image.requirements, image.never)


@functools.cache
def provided_by(image: Image) -> frozenset[str]:
    return frozenset().union(*map(provided_modules, installed_in(image).values()))


def _report(name: str, missing: dict[str, list[str]]) -> str:
    lines = [f"{m} (imported at {', '.join(sorted(set(w)))})" for m, w in sorted(missing.items())]
    return f"the {name} image lacks: " + "; ".join(lines)


@pytest.mark.parametrize("name", IMAGES)
def test_image_provides_every_module_its_code_names(name):
    """Fast, no import run: each module an import statement names (`from m import x`: m) is
    in the image. The project's own modules are followed, not checked (they are the image)."""
    image = IMAGES[name]()
    provided, own = provided_by(image), set(image.own)
    missing: dict[str, list[str]] = {}
    for imp in reachable_imports(image):
        if not in_image(imp.module, provided, own):
            missing.setdefault(imp.module, []).append(imp.where)
    assert not missing, _report(name, missing)


# Runs in a fresh interpreter: -I -S, so neither PYTHONPATH nor this venv's .pth files (the
# editable install of the main checkout) decide where modules come from. One finder wraps the
# others and answers "no such module" for what the image lacks, as the image would: an import
# raises ModuleNotFoundError, a find_spec probe gets None (altair probes for anywidget so, and
# goes on without it), and importlib.metadata sees only the image's distributions.
IMPORTER = """
import importlib, json, re, sys

spec = json.loads(open(sys.argv[1]).read())
sys.path[:0] = [spec["root"]]
sys.path += spec["site"]
provided, own, dists = set(spec["provided"]), set(spec["own"]), set(spec["dists"])

# in_image


class ImageFinder:
    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        if not in_image(name, provided, own):
            return None
        for finder in self.finders:
            found = finder.find_spec(name, path, target)
            if found is not None:
                return found
        return None

    def find_distributions(self, *args, **kwargs):
        for finder in self.finders:
            for dist in getattr(finder, "find_distributions", lambda *a, **k: ())(*args, **kwargs):
                if re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() in dists:
                    yield dist

    def invalidate_caches(self):
        for finder in self.finders:
            getattr(finder, "invalidate_caches", lambda: None)()


sys.meta_path[:] = [ImageFinder(list(sys.meta_path))]
missing = {}
for module, names, where in spec["imports"]:
    try:
        m = importlib.import_module(module)
        for n in names:
            if not hasattr(m, n):  # `from m import n`: n may be a submodule
                importlib.import_module(module + "." + n)
    except ImportError as e:  # a module missing, or a name missing from one
        key = e.name if isinstance(e, ModuleNotFoundError) else str(e)
        missing.setdefault(key, []).append(where)
with open(sys.argv[2], "w") as out:
    json.dump(missing, out)
"""


# kserve and tritonclient.grpc register the same gRPC protos, so no process imports both (the
# deploy step, which runs the gRPC smoke check, imports no kserve): those imports run apart.
APART = ("tritonclient.grpc",)


def import_groups(image: Image) -> dict[str, list[Import]]:
    """The image's imports, split into those that must run in processes of their own."""
    groups: dict[str, list[Import]] = {}
    for imp in reachable_imports(image):
        key = next((m for m in APART if (imp.module + ".").startswith(m + ".")), "main")
        groups.setdefault(key, []).append(imp)
    return groups


def import_as_in(image: Image, imports: list[Import], workdir: Path) -> subprocess.Popen:
    """Starts running `imports` seeing only what the image holds (IMPORTER)."""
    spec = {
        "root": str(ROOT),
        "site": sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}),
        "provided": sorted(provided_by(image)),
        "own": image.own,
        "dists": sorted({*installed_in(image), *image.own_dists}),
        "imports": [[i.module, i.names, i.where] for i in imports],
    }
    workdir.mkdir()
    (workdir / "spec.json").write_text(json.dumps(spec))
    script = IMPORTER.replace("# in_image", inspect.getsource(in_image))
    argv = [sys.executable, "-I", "-S", "-c", script, "spec.json", "missing.json"]
    with open(workdir / "log", "w") as log:  # libraries' warnings: read only on a crash
        return subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)


def missing_in(proc: subprocess.Popen, workdir: Path) -> dict[str, list[str]]:
    proc.wait(timeout=300)
    assert proc.returncode == 0, (workdir / "log").read_text()[-5000:]
    return json.loads((workdir / "missing.json").read_text())


@pytest.mark.slow
def test_image_code_imports_with_only_the_image_distributions(tmp_path):
    """All processes at once: importing torch, great_expectations, kserve... takes seconds."""
    procs = {
        (name, key): import_as_in(IMAGES[name](), imports, tmp_path / f"{name}-{key}")
        for name in IMAGES
        for key, imports in import_groups(IMAGES[name]()).items()
    }
    missing: dict[str, dict[str, list[str]]] = {}
    for (name, key), proc in procs.items():
        for module, where in missing_in(proc, tmp_path / f"{name}-{key}").items():
            missing.setdefault(name, {}).setdefault(module, []).extend(where)
    assert not missing, "\n".join(_report(n, m) for n, m in missing.items())


# pip-tools leaves setuptools out of a lock ("unsafe"): pip takes the newest that satisfies
# torch's setuptools>=77.0.3 (the venv's seeded one is older). Not a module the code imports.
UNPINNED = {"setuptools"}


@pytest.mark.parametrize("name", IMAGES)
def test_lock_pins_what_the_image_installs_at_this_venvs_versions(name):
    """The premise of the proof: the metadata read here is that of what the image installs."""
    pins = lock_pins()
    dists = installed_in(IMAGES[name]())
    unpinned = sorted(n for n in dists if n not in pins and n not in UNPINNED)
    assert not unpinned, f"requirements.lock does not pin {unpinned}"
    differ = {n: (d.version, pins[n]) for n, d in dists.items() if n in pins}
    differ = {n: vs for n, vs in differ.items() if vs[0] != vs[1]}
    assert not differ, f"(installed here, locked) differ: {differ}"
