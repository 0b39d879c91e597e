"""`dvc repro` on the project's own dvc.yaml, on a dataset with planted defects: validate
quarantines them and the other stages run on valid.json; a second repro is a no-op; a train
param change re-runs only train and what follows; a validate threshold change that quarantines
nothing new re-runs validate (from its probe cache) and package (its lineage records params),
not convert, train or evaluate."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.data.synth import synthesize
from tests.test_train import TINY_MODEL, TINY_TRAIN
from tests.test_validate import plant

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "SIGN2TEXT_CACHE_DIR": str(cwd / ".probe-cache"),
    }
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project's pipeline files with tiny params and a tiny dataset."""
    root = tmp_path_factory.mktemp("repo")
    for d in ("sign2text", "components", "model"):
        shutil.copytree(ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = TINY_MODEL
    # DVC's bookkeeping is under test, not learning: the least training that makes every file
    params["train"] = {
        **TINY_TRAIN,
        "epochs": 1,
        "context_fraction": 0.0,
        "context_epochs": 0,
        "bn_clips": 8,
    }
    params["evaluate"]["sentences"] = 0
    params["package"]["onnx"] = False  # the export is tested elsewhere; this is bookkeeping
    params["evaluate"]["min_top1"] = 0.0
    params["validate"]["max_bad_fraction"] = 0.5  # the planted share is 15 of 41
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    synthesize(root / "data", classes=4, per_class=6, signers=4, seed=5, progress=False)
    plant(root / "data")
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    _run([str(BIN / "dvc"), "add", "-q", "data"], root)
    return root


def _ran(out: str) -> set[str]:
    stages = ("validate", "convert", "train", "evaluate", "package")
    return {s for s in stages if f"Running stage '{s}'" in out}


def test_repro_runs_all_then_nothing_then_only_what_a_param_touches(repo):
    dvc = str(BIN / "dvc")
    first = _run([dvc, "repro"], repo)
    assert _ran(first) == {"validate", "convert", "train", "evaluate", "package"}
    assert (repo / "artifacts/model/model.pt").is_file()
    assert json.loads((repo / "artifacts/model/lineage.json").read_text())["data_md5"]
    valid = json.loads((repo / "artifacts/validate/valid.json").read_text())
    report = json.loads((repo / "artifacts/validate/report.json").read_text())
    assert len(valid) == report["valid"] == 26 and len(report["quarantined"]) == 15
    shards = json.loads((repo / "artifacts/shards/manifest.json").read_text())
    assert sum(v["samples"] for v in shards["splits"].values()) == 26
    evaluated = json.loads((repo / "artifacts/eval/metrics.json").read_text())
    assert sum(evaluated[s]["n"] for s in ("val", "test")) == sum(
        d["split"] in ("val", "test") for d in valid
    )

    again = _run([dvc, "repro"], repo)
    assert _ran(again) == set() and "up to date" in again

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.001
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run([dvc, "repro"], repo)
    assert _ran(third) == {"train", "evaluate", "package"}

    params["validate"]["max_duration_s"] = 30.0  # every clip is far shorter
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    fourth = _run([dvc, "repro"], repo)
    assert _ran(fourth) == {"validate", "package"}  # the same samples; the lineage's params
    report = json.loads((repo / "artifacts/validate/report.json").read_text())
    assert report["probe"]["decoded"] == 0 and report["thresholds"]["max_duration_s"] == 30.0

    metrics = _run([dvc, "metrics", "show", "--json"], repo)
    shown = json.dumps(json.loads(metrics))
    assert "val_top1" in shown and "top10" in shown and "decision" in shown
    plots = _run([dvc, "plots", "show", "--json"], repo)
    assert "history.json" in plots and "confusion_test.png" in plots


# The CLI (sign2text/) and components/steps.py import each step's code inside the function that
# runs it, so for them the import closure is taken per function (and their top level); every
# other module counts whole.
def _dispatcher(module: str) -> bool:
    return module.split(".")[0] == "sign2text" or module == "components.steps"


# Params properties (components/params.py) -> the params.yaml section each reads.
SECTIONS = {
    "preprocess": "model",
    "arch": "model",
    "validate": "validate",
    "convert": "convert",
    "train": "train",
    "evaluate": "evaluate",
    "package": "package",
}


def _file(module: str) -> Path | None:
    p = ROOT.joinpath(*module.split("."))
    for f in (p / "__init__.py", p.with_suffix(".py")):
        if f.is_file() and module.split(".")[0] in ("sign2text", "components", "model"):
            return f
    return None


def _imports(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            out |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}  # a.name may be a module
    return out


def _top_level(tree: ast.Module) -> ast.Module:
    return ast.Module([s for s in tree.body if not isinstance(s, ast.FunctionDef)], [])


def _function_closure(module: str, name: str, mods: set[str], seen: set) -> None:
    """What calling `module.name` imports: the module's top level, the function's own imports,
    and those of the dispatcher functions it calls: `helper(...)` in its module or imported by
    name from another dispatcher (`load_params(args)`), `steps.train(...)`."""
    if (module, name) in seen:
        return
    seen.add((module, name))
    tree = ast.parse(_file(module).read_text())
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    imported = {
        a.asname or a.name: n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and _dispatcher(n.module)
        for a in n.names
    }
    mods |= _imports(_top_level(tree)) | _imports(funcs[name])
    for call in ast.walk(funcs[name]):
        if not isinstance(call, ast.Call):
            continue
        if isinstance(call.func, ast.Name) and call.func.id in funcs:
            _function_closure(module, call.func.id, mods, seen)
        elif isinstance(call.func, ast.Name) and call.func.id in imported:
            _function_closure(imported[call.func.id], call.func.id, mods, seen)
        elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
            if call.func.value.id == "steps":
                _function_closure("components.steps", call.func.attr, mods, seen)


def _code_closure(func) -> set[str]:
    """The files running the CLI command `func` imports: the CLI's own modules at their top
    level (parse_args runs first), and what `func` and the dispatchers it calls import."""
    mods, seen = {"sign2text.cli"}, set()
    _function_closure(func.__module__, func.__name__, mods, seen)
    files: set[Path] = set()
    todo = sorted(mods | {m for m, _ in seen})
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # a module's parent packages are imported first
            name = ".".join(parts[:i])
            f = _file(name)
            if f and f not in files:
                files.add(f)
                tree = ast.parse(f.read_text())
                todo += _imports(_top_level(tree) if _dispatcher(name) else tree)
                if f == ROOT / "model" / "runtimes" / "choice.py":  # it imports them by name
                    from model.runtimes.choice import RUNTIMES

                    todo += RUNTIMES.values()
    return {str(f.relative_to(ROOT)) for f in files}


def _step_sections(step: str) -> set[str]:
    """The sections a step function reads, from its code: its `params.<property>` uses, or
    the sections it names in `params.sections(...)`."""
    from components.steps import READS

    tree = ast.parse((ROOT / "components" / "steps.py").read_text())
    (func,) = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == step]
    used = {
        n.attr
        for n in ast.walk(func)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "params"
    }
    if "sections" in used:
        assert "sections(*READS[" in ast.unparse(func).replace(" ", ""), step
        return set(READS[step])
    return {SECTIONS[a] for a in used}


def test_each_stage_depends_on_the_code_it_runs_and_the_params_it_reads():
    """DVC re-runs a stage only when a dep changes: a module the stage imports but does not
    list would let a code change keep a stale model (train once missed convert, package,
    checkpoint and params code). Deps are compared with the import closure of the stage's
    command; params sections with those the step reads (components/steps.py)."""
    from components.steps import READS
    from sign2text.cli import parse_args

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        argv = stage["cmd"].replace("${data.dir}", "data").split()
        assert argv[0] == "sign2text", name
        command = parse_args(argv[1:]).func
        code = {d for d in stage["deps"] if d.endswith(".py")}
        assert code == _code_closure(command), f"{name}: deps differ from its import closure"
        params = {p.split(".")[0] for p in stage["params"]}
        assert params == _step_sections(name), f"{name}: params differ from what it reads"
        assert params == set(READS[name]), f"{name}: dvc.yaml and steps.READS differ"
    assert set(READS) == set(stages)
