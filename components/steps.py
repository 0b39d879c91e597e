"""Every step of the pipeline, defined once: validate, convert, train, evaluate, package, publish,
deploy; and batch scoring with a released model (predict_batch).

Each entry takes the run's `Params` (params.yaml, or a pipeline run's values) and its inputs, and
returns its outputs. The CLI (sign2text/cli.py, which the DVC stages in dvc.yaml run) and the
Kubeflow components (pipelines/glue.py) are thin callers: they turn paths and artifacts into
these arguments and never pick a value out of params themselves, so both paths compute the same
thing from the same params (tests/test_pipeline_local.py holds them to the same bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

from components.params import Params

VALID = "valid.json"  # validate's list of the samples every later step uses
# The params.yaml sections each step reads: what its DVC stage declares (dvc.yaml `params:`) and
# what its Kubeflow cache key covers (pipelines/glue.py). tests/test_dvc.py checks both, and
# that each step below reads exactly these. package records them all in its lineage.
READS = {
    "validate": ("validate",),
    "convert": ("model", "convert"),
    "train": ("model", "train"),
    "evaluate": ("evaluate",),
    "package": ("data", "model", "validate", "convert", "train", "evaluate", "package"),
}


def read_samples(samples: Path | None) -> list | None:
    """The samples validation kept (its valid.json); None = every sample of the dataset."""
    from components.data.dataset import Sample

    if samples is None:
        return None
    return [Sample.from_dict(d) for d in json.loads(Path(samples).read_text())]


def validate(
    params: Params,
    data: Path,
    out: Path,
    *,
    workers: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict:
    """Great Expectations checks (params `validate:`) -> out/{report.json, report.html,
    valid.json, docs/}; returns the report."""
    from dataclasses import asdict

    from components.validation.validate import validate as run

    limits = asdict(params.validate)
    return run(
        Path(data),
        Path(out),
        max_bad_fraction=limits.pop("max_bad_fraction"),
        workers=workers,
        progress=progress,
        cache_dir=cache_dir,
        **limits,
    )


def convert(
    params: Params, data: Path, samples: Path | None, out: Path, *, progress: bool = False
) -> dict:
    """Valid samples -> WebDataset shards in `out` (params `model:` preprocessing, `convert:`);
    returns the manifest."""
    from components.conversion.convert import convert as run

    cfg = params.convert
    return run(
        Path(data),
        Path(out),
        params.preprocess,
        shard_size=cfg.shard_size,
        idle_clips=cfg.idle_clips,
        samples=read_samples(samples),
        progress=progress,
    )


def train(
    params: Params, shards, out: Path, *, resume: bool = False, progress: bool = False
) -> dict:
    """I3D on the shards (params `model:`, `train:`) -> out/{model/, state.pt, metrics.json,
    history.json}; returns the last epoch's metrics."""
    from components.training.train import train as run

    cfg = params.train  # a device this machine lacks fails here, before any data is read
    return run(
        shards,  # a folder, or S3Shards (train --shards s3://..., streamed)
        Path(out),
        params.preprocess,
        cfg,
        params.arch,
        resume=resume,
        progress=progress,
    )


def evaluate(
    params: Params,
    model_dir: Path,
    data: Path,
    samples: Path | None,
    out: Path,
    *,
    baseline: Path | None = None,
    progress: bool = False,
) -> tuple[dict, dict]:
    """Scores on val and test (and sentence mode) plus the release gate (params `evaluate:`)
    -> out/{metrics.json, gate.json, predictions, confusion matrices}; returns (metrics,
    decision). `baseline` (production's metrics.json) overrides params' `evaluate.baseline`."""
    from components.evaluation.evaluate import evaluate as run
    from components.evaluation.evaluate import gate, write_gate

    cfg = params.evaluate
    metrics = run(
        Path(model_dir),
        Path(data),
        Path(out),
        samples=read_samples(samples),
        batch_size=cfg.batch_size,
        sentences=cfg.sentences,
        progress=progress,
    )
    if baseline is None and cfg.baseline:
        baseline = Path(cfg.baseline)
    decision = gate(metrics, min_top1=cfg.min_top1, tolerance=cfg.tolerance, baseline=baseline)
    write_gate(Path(out), decision)
    return metrics, decision


def package(params: Params, model_dir: Path, eval_dir: Path, out: Path, **options) -> dict:
    """The release candidate: the trained model with its metrics, gate and lineage (data
    version, commit, params) -> out/; returns the lineage. `options`: release/package.py's
    (data_pointer, the data.dvc the lineage records; allow_failed_gate)."""
    from components.release.package import package as run

    return run(
        Path(model_dir),
        Path(eval_dir),
        Path(out),
        params=params.sections(*READS["package"]),
        onnx=params.package.onnx,
        **options,
    )


def publish(model_dir: Path, uri: str, *, overwrite: bool = False) -> dict:
    """A servable model directory (a package) -> s3:// (verified, manifest last); returns the
    manifest."""
    from components.infra.objstore import publish_dir
    from model.network.bundle import load_model_dir

    load_model_dir(model_dir)  # only a servable package goes where predictors load from
    return publish_dir(Path(model_dir), uri, overwrite=overwrite)


def predict_batch(model_dir: Path, src: str, out: Path, **options) -> dict:
    """Every video under `src` (a folder or an s3:// prefix) scored with the model in
    `model_dir` -> `out`, one JSON line per video, resumable; returns the summary. `options`:
    scoring/predict_batch.py's (mode, top_k, workers, device, retry_errors, progress)."""
    from components.scoring.predict_batch import predict_batch as run

    return run(Path(model_dir), src, Path(out), **options)


def deploy(
    model_dir: Path, model_uri: str, *, smoke_videos: list[Path], dry_run: bool = False, **rollout
) -> dict:
    """Publish the package `model_dir` at `model_uri` and roll it out to the InferenceServices
    through the canary percents, each step smoke-checked with `smoke_videos` against the
    previous revision; promote, or roll back and raise RolloutFailed. `rollout`:
    release/deploy.py's deploy() options (namespace, names, percents, soak_s, timeout_s,
    margins, api, templates, log)."""
    from components.release.deploy import deploy as run
    from components.release.smoke import VideoSmoke

    if not dry_run and not smoke_videos:
        raise ValueError("a rollout needs at least one video to smoke-test the model with")
    smoke = None if dry_run else VideoSmoke([Path(v) for v in smoke_videos])
    return run(Path(model_dir), model_uri=model_uri, smoke=smoke, dry_run=dry_run, **rollout)
