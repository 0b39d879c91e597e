"""Project layout rules that a refactor could silently break: the design card's top level, imports
that never run back up the tree and never go round in a circle, what each image ships importing
only what it ships, file names and sizes, and the formatter's word on every file."""

from __future__ import annotations

import ast
import collections
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("model", "components", "sign2text", "pipelines", "app", "tools", "tests")
# The design card's top level (DESIGN.md), plus the project's own dotfiles and lock files.
TOP_LEVEL = {
    "components",
    "pipelines",
    "manifests",
    "model",
    "data.dvc",
    "tests",
    "Makefile",
    "pyproject.toml",
    "README.md",
    "app",
    "tools",
    "docs",
    "sign2text",
    "dvc.yaml",
    "dvc.lock",
    "params.yaml",
    "LICENSE",
    "requirements.lock",
    "requirements-checkov.lock",
    ".ci",
    ".dvc",
    ".dvcignore",
    ".dockerignore",
    ".gitignore",
}
# Floors, bottom up: a module may import its own room's modules and those of lower floors only.
# model/ and app/ ship alone in their images; components/ stages are ordered as the pipeline is.
FLOORS = {
    "model": 0,
    "app": 0,
    "components.params": 1,
    "components.infra": 1,
    "components.data": 2,
    "components.validation": 3,
    "components.conversion": 3,
    "components.training": 4,
    "components.evaluation": 5,
    "components.release": 5,
    "components.scoring": 5,
    "components.steps": 6,
    "components": 6,
    "pipelines": 7,
    "sign2text": 8,
    "tools": 9,
}
MAX_LINES = 450


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
    return [ROOT / f for f in out.stdout.split()]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "components" and len(parts) > 1 else parts[0]


def _imported(path: Path) -> list[str]:
    """Absolute imports anywhere in the file, function bodies included."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (outside tests)."""
    modules = {_module(p): p for p in _tracked("*.py") if not p.is_relative_to(ROOT / "tests")}
    return {m: {n for n in _imported(p) if n in modules and n != m} for m, p in modules.items()}


def test_top_level_matches_the_design_card():
    tracked = {p.relative_to(ROOT).parts[0] for p in _tracked()}
    assert tracked == TOP_LEVEL
    assert "make demo" in (ROOT / "README.md").read_text().split("##")[1]
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_no_import_runs_back_up_the_tree():
    wrong = []
    for module, imports in _graph().items():
        if _room(module) == "tests":
            continue
        for target in imports:
            a, b = _room(module), _room(target)
            if a != b and FLOORS[b] >= FLOORS[a]:
                wrong.append(f"{module} imports {target} ({a} -> {b})")
    assert not wrong, "\n".join(wrong)


def test_no_modules_import_each_other_in_a_circle():
    graph, state, circles = _graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                circles.append(" -> ".join(path[path.index(n) :] + [n]))
            elif n not in state:
                visit(n, [*path, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


@pytest.mark.parametrize(
    "package, banned",
    [
        # The serving image ships model/ alone.
        ("model", ("components", "sign2text", "pipelines", "tools", "tests", "app")),
        # The app image ships app/ alone: it reaches the model over HTTP, never in-process.
        ("app", ("model", "components", "sign2text", "torch", "pipelines", "tools", "tests")),
    ],
)
def test_an_image_package_imports_only_what_its_image_ships(package, banned):
    for path in (ROOT / package).rglob("*.py"):
        for name in _imported(path):
            assert name.split(".")[0] not in banned, f"{path} imports {name}"


def test_app_feedback_store_runs_without_the_project(tmp_path):
    """What the AST check cannot see (an import hidden in a dependency): a store in use loads
    none of the banned packages."""
    code = (
        "import sys; from app.feedback_store import FeedbackStore; "
        f"FeedbackStore({str(tmp_path / 'fb')!r}, {str(tmp_path / 'spool')!r})"
        ".submit(b'v', 'a.mp4', {'verdict': 'correct'}); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'model', 'components', 'sign2text', 'torch', 'cv2', 'numpy'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_file_names_say_one_thing():
    """No module name is used twice for different roles (package markers and entry points
    aside), so a name in a traceback or a review points at one file."""
    shared = {"__init__.py", "__main__.py", "conftest.py"}
    seen = collections.defaultdict(list)
    for path in _tracked("*.py"):
        if path.name not in shared:
            seen[path.name].append(str(path.relative_to(ROOT)))
    assert not {n: p for n, p in seen.items() if len(p) > 1}


def test_no_source_file_is_longer_than_a_reader_holds():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _tracked("*.py", "*.js", "*.css", "*.html", "Makefile", "*Dockerfile")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_the_formatter_has_the_last_word():
    """ruff check and ruff format agree with every file, and no line opts out of the format."""
    ruff = Path(sys.executable).with_name("ruff")
    dirs = [d for d in PROJECT if (ROOT / d).is_dir()]
    for args in (["check", *dirs], ["format", "--check", *dirs]):
        r = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
    opted_out = re.compile(r"#\s*fmt:\s*(skip|off)")
    lines = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _tracked("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if opted_out.search(line)
    ]
    assert not lines, lines


def test_checkpoints_are_only_loaded_with_weights_only():
    for path in _tracked("*.py"):
        if path.is_relative_to(ROOT / "tests"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load":
                if getattr(node.func.value, "id", "") == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert "weights_only" in kw and kw["weights_only"].value is True, path
