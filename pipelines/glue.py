"""Glue between Kubeflow Pipelines components and the step functions.

The component bodies in pipelines/kfp_components.py only unpack their artifacts and call one
function here, which calls the same step functions the CLI and the DVC stages call. Everything
KFP-specific that is worth testing (params from pipeline parameters, metrics and confusion
matrices in the UI's artifact formats, the gate's baseline, where models are published) lives
here, importable without a pipeline.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components import steps
from components.evaluation.evaluate import TOP_K
from components.params import Params
from components.steps import VALID
from components.training.trainjob import (
    run_trainjob,
    train_command,
    trainjob_manifest,
    trainjob_name,
    uses_trainjob,
)
from pipelines.parameters import apply_recipe

# Object store layout under s3://<model bucket>/models/<InferenceService name>/:
#   <run id>/      one packaged model per pipeline run that passed the gate
#   production/    the model the deploy step last rolled out: the gate's baseline
PRODUCTION = "production"
DEPLOY_SOAK_S = 60.0  # each canary step serves this long before the next one
DEPLOY_TIMEOUT_S = 900.0  # one rollout step must become ready within this
TRAINJOB_POLL_S = 30.0  # a TrainJob's status and log are read this often


def run_params(base: str, **values) -> str:
    """params.yaml's content (JSON) with a run's pipeline parameters applied (RECIPE), as JSON,
    checked: the first step fails on a bad value, not the step that reads it."""
    params = apply_recipe(Params.from_json(base, "base_params").values, values)
    return Params.checked(params, "pipeline parameters").to_json()  # `profiles` left behind


def _params(text: str) -> Params:
    """Params travel between components as JSON text: exact ints and floats, unlike KFP dicts."""
    return Params.from_json(text)


def model_root(bucket: str, isvc_name: str) -> str:
    if not bucket or "/" in bucket or bucket.startswith("s3:"):
        raise ValueError(f"model_bucket must be a bucket name, got {bucket!r}")
    return f"s3://{bucket}/models/{isvc_name}/"


# What each group of steps gets of the run's params: only the sections they read (steps.READS),
# so a step's cache key changes only when they do (new epochs must not re-convert the data).
SECTIONS = {
    "data": sorted({*steps.READS["validate"], *steps.READS["convert"]}),
    "train": steps.READS["train"],
    "evaluate": steps.READS["evaluate"],
}


def step_sections(params: str, step: str) -> str:
    return _params(params).to_json(*SECTIONS[step])


def validate_step(data: Path, params: str, out: Path, report_html: Path) -> dict:
    """Validation into `out` (report.json, report.html, valid.json, docs/); the UI's HTML
    artifact `report_html` is the self-contained report, not the Data Docs' index: the UI shows
    that one file alone, and the index's styles and links would point off it."""
    from components.validation.report import write_report_html

    report = steps.validate(_params(params), Path(data), Path(out))
    write_report_html(Path(report_html), report, docs=None)  # docs/ are in `out`, not beside it
    return report


def convert_step(data: Path, validation: Path, params: str, out: Path) -> dict:
    return steps.convert(_params(params), Path(data), Path(validation) / VALID, Path(out))


def _samples(validation: Path) -> list:
    """The samples validation kept (its valid.json)."""
    return steps.read_samples(Path(validation) / VALID)


def checkpoint_dir(root: Path, shards_hash: str, params: str) -> Path:
    """Where training keeps its state: the same for every attempt at the same shards and
    recipe, so a retried attempt (a new pod on the same volume) resumes instead of restarting."""
    key = hashlib.sha256(f"{shards_hash}\n{step_sections(params, 'train')}".encode()).hexdigest()
    return Path(root) / key[:16]


def train_step(
    shards: Path,
    shards_hash: str,
    params: str,
    checkpoint_root: Path,
    model_out: Path,
    curves_html: Path | None = None,
    *,
    nodes: int = 1,
    gpus_per_node: int = 1,
    image: str = "",
    timeout_h: float = 48.0,
    cluster: str = "{}",
    namespace: str = "",
    api: Any = None,
    poll_s: float = TRAINJOB_POLL_S,
) -> dict:
    """Train (resuming from this recipe's checkpoint if an earlier attempt left one), then copy
    the trained model to the step's output and, to `curves_html`, a page with the per-epoch
    curves and table (history.json, complete on a retried attempt too: it comes from state.pt).

    One node with at most one GPU trains in this pod; more (uses_trainjob, the rule the
    pipeline's branch follows too) run as a Kubeflow Trainer TrainJob
    (`nodes` x `gpus_per_node`, `image` or else the cluster settings' image) in `namespace`,
    training into the same checkpoint dir on the shared claim. `cluster` is the pipeline's JSON
    of what the job needs from the cluster (image, tolerations, node_selector, cpu, memory,
    pvc, mount); `api` a TrainJobApi (default: the in-cluster client)."""
    from components.training.train import HISTORY, METRICS, MODEL_DIR

    work = checkpoint_dir(checkpoint_root, shards_hash, params)
    if not uses_trainjob(nodes, gpus_per_node):
        final = steps.train(_params(params), Path(shards), work, resume=True)
    else:
        settings = json.loads(cluster)
        manifest = trainjob_for(
            work,
            Path(shards),
            shards_hash,
            params,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            image=image or settings["image"],
            settings=settings,
            namespace=namespace,
        )
        if api is None:
            from components.training.trainjob import KubernetesTrainJobApi

            api = KubernetesTrainJobApi()
        run_trainjob(api, manifest, timeout_s=timeout_h * 3600, poll_s=poll_s)
        final = json.loads((work / METRICS).read_text())
    shutil.copytree(work / MODEL_DIR, model_out, dirs_exist_ok=True)
    if curves_html is not None:
        from components.training.curves import curves_html as page

        Path(curves_html).parent.mkdir(parents=True, exist_ok=True)
        Path(curves_html).write_text(page(json.loads((work / HISTORY).read_text())))
    return final


def stage_shards(shards: Path, shards_hash: str, work: Path) -> Path:
    """The shards copied to work/shards on the shared claim, where every node reads them; a
    retried attempt finds them there (the hash file is written last, after a complete copy)."""
    dest, marker, partial = work / "shards", work / "shards.hash", work / "shards.partial"
    if dest.is_dir() and marker.is_file() and marker.read_text().strip() == shards_hash:
        return dest
    marker.unlink(missing_ok=True)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(shards, partial)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    marker.write_text(shards_hash + "\n")
    return dest


def trainjob_for(
    work: Path,
    shards: Path,
    shards_hash: str,
    params: str,
    *,
    nodes: int,
    gpus_per_node: int,
    image: str,
    settings: dict,
    namespace: str,
) -> dict:
    """Stage the shards and params in `work` (on the claim mounted at settings' `mount`, here
    and on every node), and the TrainJob that trains them there."""
    import yaml

    mount = Path(settings["mount"])
    if not Path(work).is_relative_to(mount):
        raise ValueError(f"checkpoint_root must lie on the claim at {mount} for a TrainJob")
    if not namespace:
        raise ValueError("no namespace for the TrainJob: the step's POD_NAMESPACE is unset")
    work.mkdir(parents=True, exist_ok=True)
    staged = stage_shards(Path(shards), shards_hash, work)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(json.loads(params), sort_keys=True))
    manifest = trainjob_manifest(
        "",
        namespace,
        image=image,
        command=train_command(staged, work, params_file),
        num_nodes=nodes,
        gpus_per_node=gpus_per_node,
        cpu=settings["cpu"],
        memory=settings["memory"],
        tolerations=settings.get("tolerations", []),
        node_selector=settings.get("node_selector", {}),
        pvc=settings["pvc"],
        mount=str(mount),
        env={"PYTHONUNBUFFERED": "1"},  # log lines reach `kubectl logs` as they are written
    )
    manifest["metadata"]["name"] = trainjob_name(work, manifest["spec"])
    return manifest


def fetch_baseline(root: str, dest: Path) -> Path | None:
    """Production's metrics.json when a model has been rolled out before, else None."""
    from components.infra.objstore import fetch_dir, is_published

    uri = root + PRODUCTION + "/"
    if not is_published(uri):
        return None
    return fetch_dir(uri, dest) / "metrics.json"


def evaluate_step(
    model_dir: Path,
    data: Path,
    validation: Path,
    params: str,
    out: Path,
    baseline_root: str,
) -> dict:
    """Evaluate + gate against params' threshold and production's metrics; writes out/."""
    with tempfile.TemporaryDirectory() as tmp:
        baseline = fetch_baseline(baseline_root, Path(tmp)) if baseline_root else None
        _, decision = steps.evaluate(
            _params(params),
            Path(model_dir),
            Path(data),
            Path(validation) / VALID,
            Path(out),
            baseline=baseline,
        )
    return decision


def log_scalars(artifact: Any, values: dict) -> None:
    """The numbers of a flat dict (e.g. training's final epoch) as KFP scalar metrics."""
    for key, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            artifact.log_metric(key, float(value))
    _write_metadata(artifact)


def _write_metadata(artifact: Any) -> None:
    # The values live in the artifact's metadata; the file makes them downloadable too, and
    # kfp.local's cache treats an output whose file is missing as a miss.
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=2) + "\n")


def log_metrics(artifact: Any, metrics: dict) -> None:
    """top-1/5/10 (and per-class mean) of each split, and the sentence-mode scores, as KFP
    scalar metrics."""
    for split, values in metrics.items():
        if not isinstance(values, dict):
            continue
        keys = [f"top{k}" for k in TOP_K] + ["per_class_mean"]
        if split == "sentence":
            keys = ["correct", "word_error_rate", "mean_iou"]
        for key in keys:
            if values.get(key) is not None:
                artifact.log_metric(f"{split}_{key}", float(values[key]))
    _write_metadata(artifact)


def log_confusion(artifact: Any, csv_path: Path) -> None:
    """A confusion CSV written by evaluate -> ClassificationMetrics (the UI draws the matrix)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    labels = rows[0][1:]
    matrix = [[int(v) for v in row[1:]] for row in rows[1:]]
    artifact.log_confusion_matrix(labels, matrix)
    _write_metadata(artifact)


def summary_markdown(metrics: dict, decision: dict) -> str:
    lines = [f"# Evaluation: gate **{decision['decision']}**", ""]
    lines += [
        "| split | n | top-1 | top-5 | top-10 | per-class mean |",
        "|---|---|---|---|---|---|",
    ]
    for split, v in metrics.items():
        if isinstance(v, dict):
            cells = [v.get(k) for k in ("n", "top1", "top5", "top10", "per_class_mean")]
            lines.append(f"| {split} | " + " | ".join("-" if c is None else str(c) for c in cells))
    lines += ["", "## Gate checks", ""]
    lines += [
        f"- {c['check']}: {'passed' if c['passed'] else 'FAILED'}" for c in decision["checks"]
    ]
    lines += [f"- reason: {r}" for r in decision["reasons"]]
    return "\n".join(lines) + "\n"


def report_evaluation(
    eval_dir: Path, decision: dict, metrics_art: Any, confusion_art: Any, summary: Path
) -> None:
    """evaluate's files -> the UI's Metrics, ClassificationMetrics (test split) and Markdown."""
    metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())
    log_metrics(metrics_art, metrics)
    log_confusion(confusion_art, Path(eval_dir) / "confusion_test.csv")
    Path(summary).write_text(summary_markdown(metrics, decision))


def _write_pointer(md5: str, dest: Path) -> Path:
    dest.write_text(json.dumps({"outs": [{"md5": md5, "path": "data"}]}) + "\n")  # JSON is YAML
    return dest


def publish_step(
    model_dir: Path, eval_dir: Path, params: str, data_md5: str, out: Path, model_uri: str
) -> dict:
    """Package the release candidate into `out`, then upload it to `model_uri`."""
    with tempfile.TemporaryDirectory() as tmp:
        pointer = _write_pointer(data_md5, Path(tmp) / "data.dvc")
        lineage = steps.package(
            _params(params), Path(model_dir), Path(eval_dir), Path(out), data_pointer=pointer
        )
    steps.publish(Path(out), model_uri)
    return lineage


def deploy_step(
    model_dir: Path,
    *,
    root: str,
    model_uri: str,
    target: str,
    namespace: str,
    isvc_name: str,
    canary_percents: str,
    smoke_video: Path | None,
) -> dict:
    """Roll `model_uri` out (cluster: KServe canary; local: the local stand-in), then copy it to
    `root`/production/, the baseline the next run's gate compares against."""
    from components.infra.objstore import publish_dir
    from components.release.deploy import parse_percents

    plan = parse_percents(canary_percents, "canary_percents")
    if smoke_video is None:
        raise ValueError("the deploy step needs a video to smoke-test the model with")
    if target == "cluster":
        result = steps.deploy(
            Path(model_dir),
            model_uri,
            smoke_videos=[smoke_video],
            namespace=namespace,
            names=(isvc_name, f"{isvc_name}-grpc"),  # REST and gRPC InferenceServices
            percents=plan,
            soak_s=DEPLOY_SOAK_S,
            timeout_s=DEPLOY_TIMEOUT_S,
        )
    elif target == "local":
        from components.release.local_deploy import serve_and_smoke_test

        result = serve_and_smoke_test(model_uri, smoke_video)
    else:
        raise ValueError(f"deploy_target must be 'cluster' or 'local', got {target!r}")
    # Replaces the previous production copy: this model is the next run's baseline now.
    publish_dir(Path(model_dir), root + PRODUCTION + "/", overwrite=True)
    return {"target": target, "model_uri": model_uri, "canary": plan, "result": result}


def predict_batch_step(
    model: str, videos: str, out: Path, *, mode: str, top_k: int, workers: int
) -> dict:
    """Score every video under `videos` (s3:// prefix or a folder the pod sees) with the model
    at `model` (a published s3:// package or a folder) into `out` (JSON Lines); returns the
    summary. workers 0: the step's default (one per 2 cores)."""
    from components.infra.objstore import local_input

    with local_input(model) as model_dir:
        return steps.predict_batch(
            model_dir, videos, Path(out), mode=mode, top_k=top_k, workers=workers or None
        )


def smoke_video(data: Path, validation: Path) -> Path:
    """One valid test-split video to send to the deployed model."""
    samples = _samples(validation)
    test = [s for s in samples if s.split == "test"] or samples
    if not test:
        raise ValueError(f"{validation}: no valid samples to smoke-test the deployment with")
    return test[0].video_path(data)


def outcome(status: Any, *, isvc_name: str) -> dict:
    """What the exit handler records from KFP's PipelineTaskFinalStatus."""
    fields = (
        "state",
        "pipeline_job_resource_name",
        "pipeline_task_name",
        "error_code",
        "error_message",
    )
    return {"inference_service": isvc_name} | {f: getattr(status, f, None) for f in fields}
