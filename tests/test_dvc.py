"""`dvc repro` on the project's own dvc.yaml, on a dataset with planted defects: validate
quarantines them and the other stages run on valid.json; a second repro is a no-op; a train
param change re-runs only train and what follows; a validate threshold change that quarantines
nothing new re-runs validate alone (from its probe cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sign2text.data.synth import synthesize
from tests.test_train import TINY_MODEL, TINY_TRAIN
from tests.test_validate import plant

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "SIGN2TEXT_CACHE_DIR": str(cwd / ".probe-cache")}  # fmt: skip
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project's pipeline files with tiny params and a tiny dataset."""
    root = tmp_path_factory.mktemp("repo")
    for d in ("sign2text", "model"):
        shutil.copytree(ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = TINY_MODEL
    params["train"] = {**TINY_TRAIN, "epochs": 2}
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
    assert _ran(fourth) == {"validate"}
    report = json.loads((repo / "artifacts/validate/report.json").read_text())
    assert report["probe"]["decoded"] == 0 and report["thresholds"]["max_duration_s"] == 30.0

    metrics = _run([dvc, "metrics", "show", "--json"], repo)
    shown = json.dumps(json.loads(metrics))
    assert "val_top1" in shown and "top10" in shown and "decision" in shown
    plots = _run([dvc, "plots", "show", "--json"], repo)
    assert "history.json" in plots and "confusion_test.png" in plots
