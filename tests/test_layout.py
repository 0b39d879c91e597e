"""Project layout rules that a refactor could silently break."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_package_never_imports_the_rest():
    """The serving image ships model/ alone."""
    for path in (ROOT / "model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for top in ("components", "sign2text", "pipelines", "tools", "tests"):
                assert not any(n == top or n.startswith(top + ".") for n in names), path


def _imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_app_package_never_imports_the_model_or_the_project():
    """The app image ships app/ alone: it reaches the model over HTTP, never in-process."""
    banned = (
        "model",
        "components",
        "sign2text",
        "torch",
        "torchvision",
        "pipelines",
        "tools",
        "tests",
    )
    for path in (ROOT / "app").rglob("*.py"):
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
        "{'model', 'sign2text', 'torch', 'cv2', 'numpy'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == "[]"


def test_top_level_layout():
    for name in (
        "sign2text",
        "model",
        "pipelines",
        "tools",
        "manifests",
        "tests",
        "data.dvc",
        "dvc.yaml",
        "params.yaml",
        "Makefile",
        "pyproject.toml",
        "README.md",
        ".ci/run",
    ):
        assert (ROOT / name).exists(), name
    assert "make demo" in (ROOT / "README.md").read_text().split("##")[1]
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_checkpoints_are_only_loaded_with_weights_only():
    for path in [
        p
        for d in ("model", "components", "sign2text", "pipelines", "tools")
        for p in (ROOT / d).rglob("*.py")
    ]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load":
                if getattr(node.func.value, "id", "") == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert "weights_only" in kw and kw["weights_only"].value is True, path
