"""The whole Kubeflow pipeline run by kfp.local (SubprocessRunner) on a tiny real dataset, with a
real S3 server for the model bucket and a real KServe ModelServer as the deploy target.

Both runs use params.yaml's values with a few changed (BASE), and the first is held to what
`dvc repro` computes from the same params: the same shards, byte for byte the same model and
the same metrics (test_the_kubeflow_path_and_dvc_repro_compute_the_same_model).

Run 1 (min_top1 0) passes the gate: package, metrics, confusion matrix, the validation report,
the model published and served (REST and gRPC agree). Run 2 (min_top1 above 1) fails it: publish
and deploy are skipped, the run still succeeds, the data steps and training come from the cache,
and the gate compared against the production model run 1 rolled out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip(
    "components.validation.validate", reason="validate() comes with the data branch"
)

from components.data.dataset import load_glosses  # noqa: E402
from components.data.synth import synthesize  # noqa: E402
from components.data.version import local_hash  # noqa: E402
from components.params import load_params, overrides  # noqa: E402
from pipelines import glue  # noqa: E402
from pipelines.runner import run_local  # noqa: E402
from tests import containers  # noqa: E402
from tests.s3 import s3_server_fixture  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]

CLASSES = 3
TINY = {
    "epochs": 1,
    "context_epochs": 1,
    "num_frames": 8,
    "resize": 64,
    "crop": 56,
    "batch_size": 4,
}
# params.yaml's values with some changed, each read by a different step: a step that dropped
# one of them on either path would compute something else than the other path.
CHANGED = {
    "validate.min_frames": 9,
    "convert.shard_size": 16,
    "train.color_jitter": 0.05,
    "train.bn_clips": 12,
    "train.weight_decay": 0.001,
    "evaluate.sentences": 4,
}
BASE = overrides(load_params(ROOT / "params.yaml"), CHANGED, "test")
BASE.pop("profiles")


@pytest.fixture(
    scope="module",
    # In this environment (SubprocessRunner), and every step in the components image (kfp's
    # DockerRunner): 7 GB to build, so `make test-images-full`, not `make test`.
    params=["here", pytest.param("components-image", marks=pytest.mark.heavy)],
)
def runs(request, s3_server, tmp_path_factory) -> dict:
    image = containers.image("components") if request.param == "components-image" else None
    tmp = tmp_path_factory.mktemp("kfp-local")
    data = tmp / "data"
    synthesize(data, classes=CLASSES, per_class=6, signers=6, progress=False)
    bucket = s3_server.make_bucket()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", os.environ["PATH"])  # run_local prepends the venv; undo afterwards
        for var, value in s3_server.env().items():
            mp.setenv(var, value)
        args = TINY | {"model_bucket": bucket, "min_top1": 0.0, "base_params": json.dumps(BASE)}
        first = run_local(data, tmp / "out", args, ROOT / "params.yaml", image)
        second = run_local(
            data, tmp / "out", args | {"min_top1": 1.01}, ROOT / "params.yaml", image
        )
    return {"data": data, "bucket": bucket, "out": tmp / "out", "first": first, "second": second}


def _executor_output(run: Path, task: str) -> dict:
    return json.loads((run / task / "executor_output.json").read_text())


def _artifact(run: Path, task: str, name: str) -> dict:
    return _executor_output(run, task)["artifacts"][name]["artifacts"][0]


def test_passing_run_packages_reports_publishes_and_serves(runs, s3_server):
    run, data = runs["first"], runs["data"]
    labels = load_glosses(data)
    package = run / "publish-model" / "package"
    assert {"model.pt", "config.json", "labels.txt", "metrics.json", "lineage.json"} <= {
        p.name for p in package.iterdir()
    }
    lineage = json.loads((package / "lineage.json").read_text())
    assert lineage["gate"] == "pass" and lineage["data_md5"] == local_hash(data)
    # params package.onnx (default true): model.onnx checked against torch and kept, so the
    # predictors serve it with ONNX Runtime
    assert lineage["onnx"]["exported"] and lineage["onnx"]["max_abs_diff"] <= 1e-4
    assert json.loads((package / "config.json").read_text())["onnx"]["file"] == "model.onnx"
    assert json.loads((package / "config.json").read_text())["preprocess"]["num_frames"] == 8

    metrics = _artifact(run, "evaluate-model", "metrics")["metadata"]
    assert {"test_top1", "test_top5", "test_top10", "val_top1"} <= set(metrics)
    assert {"sentence_correct", "sentence_word_error_rate"} <= set(metrics)  # context_epochs 1
    cm = _artifact(run, "evaluate-model", "confusion")["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == labels
    rows = [r["row"] for r in cm["rows"]]
    eval_metrics = json.loads((run / "evaluate-model" / "evaluation" / "metrics.json").read_text())
    assert len(rows) == CLASSES and sum(map(sum, rows)) == eval_metrics["test"]["n"] > 0
    assert "gate **pass**" in (run / "evaluate-model" / "summary").read_text()
    page = (run / "validate-data" / "docs").read_text()  # the UI's HTML: the offline report
    assert "<h1>Validation report</h1>" in page and "Dataset accepted" in page
    assert "://" not in page and "<script" not in page
    curves = (run / "train-model" / "curves").read_text()  # 1 epoch + 1 context epoch
    assert curves.count("<svg") == 2 and curves.count("<tr>") == 1 + 2
    assert _executor_output(run, "evaluate-model")["parameterValues"]["Output"] == "pass"

    deployed = json.loads(_executor_output(run, "deploy-model")["parameterValues"]["Output"])
    assert deployed["target"] == "local" and deployed["canary"] == [10, 40, 70]
    answer = deployed["result"]
    assert answer["rest"]["glosses"] == answer["grpc"]["glosses"]
    assert answer["rest"]["glosses"][0] in labels

    uri = deployed["model_uri"]
    assert uri.startswith(f"s3://{runs['bucket']}/models/sign2text/")
    keys = set(s3_server.keys(runs["bucket"]))
    prefix = uri.removeprefix(f"s3://{runs['bucket']}/")
    assert {f"{prefix}model.pt", f"{prefix}model.onnx"} <= keys
    assert "models/sign2text/production/metrics.json" in keys

    outcome = _artifact(run, "record-outcome", "outcome")["metadata"]
    assert outcome["state"] == "SUCCEEDED" and not outcome["error_message"]


def test_failing_gate_skips_publish_and_deploy_and_the_run_succeeds(runs):
    run = runs["second"]
    assert _executor_output(run, "evaluate-model")["parameterValues"]["Output"] == "fail"
    assert not (run / "publish-model").exists() and not (run / "deploy-model").exists()
    gate = json.loads((run / "evaluate-model" / "evaluation" / "gate.json").read_text())
    assert [c["check"] for c in gate["checks"]] == ["min_top1", "baseline"]  # production's
    assert "below the minimum 1.0100" in gate["reasons"][0]
    assert "gate **fail**" in (run / "evaluate-model" / "summary").read_text()
    outcome = _artifact(run, "record-outcome", "outcome")["metadata"]
    assert outcome["state"] == "SUCCEEDED"
    # Same data md5 and data params: fetched, validated, converted and trained only once.
    for task in ("fetch-data", "validate-data", "convert-data", "train-model"):
        assert (runs["first"] / task).is_dir() and not (run / task).exists(), task


def test_a_retried_training_attempt_resumes_from_its_checkpoint(runs, tmp_path, capsys):
    """What a retry (a new pod on the same checkpoint volume) finds: the first attempt's state,
    under the key of its shards and recipe, so it resumes instead of training from scratch."""
    run = runs["first"]
    params = _executor_output(run, "configure")["parameterValues"]["train"]
    shards_hash = _artifact(run, "convert-data", "shards")["metadata"]["content_hash"]
    root = runs["out"] / "checkpoints"
    state = glue.checkpoint_dir(root, shards_hash, params) / "state.pt"
    assert state.is_file()
    stamp = state.stat().st_mtime_ns
    final = glue.train_step(
        run / "convert-data" / "shards", shards_hash, params, root, tmp_path / "model"
    )
    assert "resumed from" in capsys.readouterr().out
    assert state.stat().st_mtime_ns == stamp  # no epoch was trained again
    assert final["loss"] == _artifact(run, "train-model", "metrics")["metadata"]["loss"]
    first = torch.load(run / "train-model" / "model" / "model.pt", weights_only=True)
    again = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def _dvc_repro(params: dict, data: Path, repo: Path) -> None:
    """`dvc repro evaluate` of the project's dvc.yaml with these params, in a fresh repository."""
    for d in ("sign2text", "components", "model"):  # the stages' code deps
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(data, repo / "data")
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    # up to evaluate: what is compared (package adds only the ONNX export, tested elsewhere)
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "add", "-q", "data"],
        ["dvc", "repro", "-q", "evaluate"],
    ):
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"


def test_the_kubeflow_path_and_dvc_repro_compute_the_same_model(runs, tmp_path):
    """One definition of every step: from the same params and data (same machine, same
    threads), the pipeline's steps and `dvc repro`'s stages keep the same samples, write the
    same shards, train byte for byte the same model and measure the same metrics."""
    run = runs["first"]
    params = json.loads(_executor_output(run, "configure")["parameterValues"]["full"])
    assert all(params[k.split(".")[0]][k.split(".")[1]] == v for k, v in CHANGED.items())
    repo = tmp_path / "repo"
    _dvc_repro(params, runs["data"], repo)
    art = repo / "artifacts"

    def valid(path: Path) -> list:
        return sorted(s["video_id"] for s in json.loads(path.read_text()))

    assert valid(art / "validate" / "valid.json") == valid(
        run / "validate-data" / "validation" / "valid.json"
    )
    manifest = json.loads((art / "shards" / "manifest.json").read_text())
    shards = _artifact(run, "convert-data", "shards")["metadata"]
    assert manifest["content_hash"] == shards["content_hash"]
    assert {k: v["samples"] for k, v in manifest["splits"].items()} == shards["samples"]
    ours = (art / "train" / "model" / "model.pt").read_bytes()
    assert ours == (run / "train-model" / "model" / "model.pt").read_bytes()
    for name in ("config.json", "labels.txt"):
        assert (art / "train" / "model" / name).read_text() == (
            run / "train-model" / "model" / name
        ).read_text()
    metrics = json.loads((art / "eval" / "metrics.json").read_text())
    assert metrics == json.loads(
        (run / "evaluate-model" / "evaluation" / "metrics.json").read_text()
    )
    assert metrics["sentence"]["n"] == CHANGED["evaluate.sentences"]
