"""Kubeflow Pipelines (v2) lightweight components, one per pipeline step.

Each body unpacks its typed artifacts and calls one step function (directly, or through
pipelines/glue.py, where the testable glue lives); no step logic is written here. KFP ships a
component's source into its container, so the imports sit inside the bodies and the container
image (`--image`, default DEFAULT_IMAGE) must hold this package: `build(image)` makes the
components for one image, so the image is chosen when the pipeline is compiled.
"""

from types import SimpleNamespace
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

DEFAULT_IMAGE = "registry.example.com/sign2text-components:0.1.0"


def configure(
    base: str,
    num_frames: int,
    resize: int,
    crop: int,
    epochs: int,
    context_epochs: int,
    batch_size: int,
    lr: float,
    min_top1: float,
    tolerance: float,
) -> NamedTuple("Params", full=str, data=str, train=str, evaluate=str):
    """The run's params as JSON (a KFP dict parameter would turn every int into a float): the
    recipe parameters (pipelines/parameters.py's RECIPE) applied to params.yaml's values. Each
    step gets only the sections it reads, so its cache key changes only when they do (new
    epochs must not re-convert the data)."""
    recipe = {k: v for k, v in locals().items() if k != "base"}  # every parameter, by name
    from pipelines.glue import run_params, step_sections

    p = run_params(base, **recipe)
    return (p, step_sections(p, "data"), step_sections(p, "train"), step_sections(p, "evaluate"))


def resolve_data(data_repo: str, data_rev: str, data_path: str) -> str:
    """The DVC md5 of the dataset this run uses (never cached: a revision can move)."""
    from components.data.version import resolve

    return resolve(local_path=data_path, repo=data_repo, rev=data_rev)


def fetch_data(
    data_md5: str, subset: int, data_remote: str, data_path: str, dataset: Output[Dataset]
):
    """The dataset with that md5 (first `subset` glosses; 0 = all) as a Dataset artifact."""
    from pathlib import Path

    from components.data.version import materialise

    summary = materialise(
        data_md5, Path(dataset.path), subset=subset, local_path=data_path, remote=data_remote
    )
    dataset.metadata.update(summary)


def validate_data(
    dataset: Input[Dataset], params: str, validation: Output[Dataset], docs: Output[HTML]
):
    """Great Expectations validation: valid samples + report + Data Docs."""
    from pathlib import Path

    from pipelines.glue import validate_step

    report = validate_step(Path(dataset.path), params, Path(validation.path), Path(docs.path))
    validation.metadata.update({k: v for k, v in report.items() if isinstance(v, int | float)})


def convert_data(
    dataset: Input[Dataset], validation: Input[Dataset], params: str, shards: Output[Dataset]
):
    """Valid samples -> WebDataset shards."""
    from pathlib import Path

    from pipelines.glue import convert_step

    manifest = convert_step(Path(dataset.path), Path(validation.path), params, Path(shards.path))
    shards.metadata.update(
        content_hash=manifest["content_hash"],
        samples={k: v["samples"] for k, v in manifest["splits"].items()},
    )


def choose_training(train_nodes: int, train_gpus_per_node: int) -> str:
    """Where the train step runs: "pod" (one node, at most one GPU: a GPU pod trains) or
    "trainjob" (a small pod creates and follows a Kubeflow Trainer TrainJob). The pipeline
    branches on it: a dsl.If condition has no `or` to test the two parameters with."""
    from components.training.trainjob import training_mode

    return training_mode(train_nodes, train_gpus_per_node)


def train_model(
    shards: Input[Dataset],
    params: str,
    checkpoint_root: str,
    train_nodes: int,
    train_gpus_per_node: int,
    train_image: str,
    train_timeout_h: float,
    cluster: str,
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
):
    """I3D training; a retried attempt resumes from its checkpoint under checkpoint_root. More
    than one node or GPU: a Kubeflow Trainer TrainJob trains (cluster: what it needs, as JSON).
    The last epoch's values as Metrics, every epoch's as an HTML page of curves and a table."""
    import os
    from pathlib import Path

    from pipelines.glue import log_scalars, train_step

    final = train_step(
        Path(shards.path),
        shards.metadata["content_hash"],
        params,
        Path(checkpoint_root),
        Path(model.path),
        Path(curves.path),
        nodes=train_nodes,
        gpus_per_node=train_gpus_per_node,
        image=train_image,
        timeout_h=train_timeout_h,
        cluster=cluster,
        namespace=os.environ.get("POD_NAMESPACE", ""),
    )
    log_scalars(metrics, final)


def evaluate_model(
    model: Input[Model],
    dataset: Input[Dataset],
    validation: Input[Dataset],
    params: str,
    model_bucket: str,
    isvc_name: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    summary: Output[Markdown],
) -> str:
    """top-1/5/10, confusion matrix and the gate ("pass" / "fail") against production."""
    from pathlib import Path

    from pipelines.glue import evaluate_step, model_root, report_evaluation

    out = Path(evaluation.path)
    decision = evaluate_step(
        Path(model.path),
        Path(dataset.path),
        Path(validation.path),
        params,
        out,
        model_root(model_bucket, isvc_name),
    )
    report_evaluation(out, decision, metrics, confusion, Path(summary.path))
    return decision["decision"]


def publish_model(
    model: Input[Model],
    evaluation: Input[Artifact],
    dataset: Input[Dataset],
    params: str,
    model_bucket: str,
    isvc_name: str,
    run_id: str,
    package: Output[Model],
) -> str:
    """Package the release candidate and upload it to the model bucket; returns its URI."""
    from pathlib import Path

    from pipelines.glue import model_root, publish_step

    uri = model_root(model_bucket, isvc_name) + run_id + "/"
    lineage = publish_step(
        Path(model.path),
        Path(evaluation.path),
        params,
        dataset.metadata["data_md5"],
        Path(package.path),
        uri,
    )
    package.metadata.update(uri=uri, data_md5=lineage["data_md5"], test_top1=lineage["test_top1"])
    return uri


def deploy_model(
    package: Input[Model],
    dataset: Input[Dataset],
    validation: Input[Dataset],
    model_uri: str,
    deploy_target: str,
    namespace: str,
    isvc_name: str,
    model_bucket: str,
    canary_percents: str,
) -> str:
    """Canary rollout on the cluster (or the local stand-in); returns the result as JSON."""
    import json
    from pathlib import Path

    from pipelines.glue import deploy_step, model_root, smoke_video

    result = deploy_step(
        Path(package.path),
        root=model_root(model_bucket, isvc_name),
        model_uri=model_uri,
        target=deploy_target,
        namespace=namespace,
        isvc_name=isvc_name,
        canary_percents=canary_percents,
        smoke_video=smoke_video(Path(dataset.path), Path(validation.path)),
    )
    return json.dumps(result)


def predict_videos(
    model_uri: str, videos: str, mode: str, top_k: int, workers: int, results: Output[Dataset]
) -> str:
    """Batch scoring (pipelines/batch_scoring.py's pipeline): every video under `videos` (s3://
    prefix) with the published model at `model_uri` -> one JSON line per video; returns the
    summary."""
    import json
    from pathlib import Path

    from pipelines.glue import predict_batch_step

    summary = predict_batch_step(
        model_uri, videos, Path(results.path), mode=mode, top_k=top_k, workers=workers
    )
    results.metadata.update({k: v for k, v in summary.items() if k != "out"})
    return json.dumps(summary)


def record_outcome(status: dsl.PipelineTaskFinalStatus, isvc_name: str, outcome: Output[Artifact]):
    """Exit handler: writes the run's final state (succeeded or failed, and why)."""
    import json
    from pathlib import Path

    from pipelines.glue import outcome as make_outcome

    record = make_outcome(status, isvc_name=isvc_name)
    Path(outcome.path).write_text(json.dumps(record, indent=2) + "\n")
    outcome.metadata.update(record)
    print(json.dumps(record))


STEPS = (
    configure,
    resolve_data,
    fetch_data,
    validate_data,
    convert_data,
    choose_training,
    train_model,
    evaluate_model,
    publish_model,
    deploy_model,
    record_outcome,
    predict_videos,
)


def build(image: str = DEFAULT_IMAGE) -> SimpleNamespace:
    """The components for one container image (which must hold this package and kfp)."""
    return SimpleNamespace(
        **{f.__name__: dsl.component(f, base_image=image, install_kfp_package=False) for f in STEPS}
    )
