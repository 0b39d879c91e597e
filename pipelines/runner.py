"""Compile, submit and run the pipeline locally (the `sign2text pipeline ...` commands)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from components.params import DEFAULT
from pipelines.kfp_components import DEFAULT_IMAGE
from pipelines.sign2text import COMPILED, NAME, build_pipeline

HOST_TIMEOUT_S = 10
# A compiled spec's parameter types (KFP's IR) -> what a KEY=VALUE string converts to.
SPEC_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float}


class PipelineError(ValueError):
    """A pipeline command could not do what was asked; the message says why."""


def parse_overrides(pairs: list[str], kinds: dict[str, type]) -> dict:
    """KEY=VALUE pipeline arguments, names and types checked against `kinds` (the parameters
    of the pipeline they are for: pipeline_parameters, or spec_parameters of a compiled one)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PipelineError(f"pipeline argument must be KEY=VALUE, got {pair!r}")
        out[key] = value
    return typed_arguments(out, kinds)


def typed_arguments(raw: dict[str, str], kinds: dict[str, type]) -> dict:
    """Convert KEY=VALUE strings to the types the pipeline's parameters declare."""
    out = {}
    for key, value in raw.items():
        if key not in kinds:
            raise PipelineError(f"unknown pipeline parameter {key!r}; parameters: {sorted(kinds)}")
        kind = kinds[key]
        try:
            out[key] = kind(value)
        except ValueError as e:
            raise PipelineError(f"pipeline parameter {key} wants {kind.__name__}: {e}") from e
    return out


def pipeline_parameters(params_file: Path = DEFAULT) -> dict[str, type]:
    """The parameters a run may set (base_params aside) and their types, as the pipeline
    built from `params_file` declares them."""
    import inspect

    sig = inspect.signature(build_pipeline(params_file=params_file).pipeline_func)
    return {k: type(p.default) for k, p in sig.parameters.items() if k != "base_params"}


def spec_parameters(package: Path) -> dict[str, type]:
    """The parameters a run of a compiled spec may set (base_params aside) and their types."""
    try:
        params = _spec(package)["root"]["inputDefinitions"]["parameters"]
        return {
            k: SPEC_TYPES.get(v["parameterType"], str)
            for k, v in params.items()
            if k != "base_params"
        }
    except (TypeError, KeyError) as e:
        raise PipelineError(f"{package}: not a compiled pipeline spec ({e!r})") from e


def is_placeholder(image: str) -> bool:
    """An image no cluster can pull: DEFAULT_IMAGE's documentation-only registry (example.com)."""
    host = image.split("/", 1)[0] if "/" in image else ""
    return host == "example.com" or host.endswith(".example.com")


def _spec(package: Path) -> dict:
    """A compiled spec's pipeline document (the first; the second is the platform config)."""
    import yaml

    package = Path(package)
    if not package.is_file():
        raise FileNotFoundError(f"{package} not found: run `sign2text pipeline compile` first")
    try:
        return next(yaml.safe_load_all(package.read_text()))
    except (yaml.YAMLError, StopIteration) as e:
        raise PipelineError(f"{package}: not a compiled pipeline spec ({e!r})") from e


def spec_images(package: Path) -> set[str]:
    """The container images a compiled spec's steps run in."""
    try:
        executors = _spec(package)["deploymentSpec"]["executors"]
        return {e["container"]["image"] for e in executors.values() if "container" in e}
    except (TypeError, KeyError) as e:
        raise PipelineError(f"{package}: not a compiled pipeline spec ({e!r})") from e


def spec_image(package: Path) -> str:
    """The one image an existing spec was compiled for, else DEFAULT_IMAGE (no or odd spec)."""
    try:
        images = spec_images(package)
    except (OSError, PipelineError):
        return DEFAULT_IMAGE
    return images.pop() if len(images) == 1 else DEFAULT_IMAGE


def compile_pipeline(
    out: Path = COMPILED, image: str = DEFAULT_IMAGE, params_file: Path = DEFAULT
) -> Path:
    """Write the pipeline spec the Kubeflow UI takes (deterministic: same inputs, same bytes),
    its defaults from `params_file`."""
    from kfp import compiler

    if not image or any(c.isspace() for c in image):
        raise PipelineError(f"--image must be REGISTRY/NAME:TAG, got {image!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, params_file), str(out))
    return out


def submit(
    host: str,
    *,
    package: Path = COMPILED,
    arguments: dict | None = None,
    experiment: str = NAME,
    version: str | None = None,
) -> dict:
    """Upload `package` as a new version of pipeline NAME (created if absent) and start a run."""
    import datetime as dt

    import kfp

    if not host.startswith(("http://", "https://")):
        raise PipelineError(f"--host must be an http(s):// URL, got {host!r}")
    package = Path(package)
    # A run of such a spec would only fail later, pod by pod, with ImagePullBackOff.
    if placeholders := sorted(i for i in spec_images(package) if is_placeholder(i)):
        raise PipelineError(
            f"{package} names the placeholder image {placeholders[0]}, which no cluster can "
            "pull: compile it for your pushed image first (make pipeline "
            "IMAGE=REGISTRY/sign2text-components:TAG, or make images)"
        )
    version = version or dt.datetime.now(dt.UTC).strftime("v%Y%m%d-%H%M%S")
    try:
        client = kfp.Client(host=host)
        pipeline_id = client.get_pipeline_id(NAME)
        if pipeline_id is None:
            pv = client.upload_pipeline(str(package), pipeline_name=NAME)
            pipeline_id = pv.pipeline_id
            version_id = client.list_pipeline_versions(pipeline_id).pipeline_versions[0]
            version_id = version_id.pipeline_version_id
        else:
            pv = client.upload_pipeline_version(
                str(package), pipeline_version_name=version, pipeline_id=pipeline_id
            )
            version_id = pv.pipeline_version_id
        exp = client.create_experiment(experiment)
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=f"{NAME}-{version}",
            params=arguments or {},
            pipeline_id=pipeline_id,
            version_id=version_id,
        )
    except Exception as e:  # the kfp client raises urllib3, ApiException and OSError types
        if isinstance(e, PipelineError):
            raise
        raise PipelineError(f"Kubeflow Pipelines at {host}: {type(e).__name__}: {e}") from e
    return {"pipeline_id": pipeline_id, "version_id": version_id, "run_id": run.run_id}


@contextlib.contextmanager
def _local_oneof_artifacts() -> Iterator[None]:
    """kfp.local (2.17) resolves a DAG's output artifact only from a single selector, so the
    `dsl.OneOf` over the train step's two branches fails locally ("Expected 1 artifact in
    ArtifactSelectorSpec. Got: 2") though KFP's backend runs it. While a local run lasts, a DAG
    output with several selectors takes the one output a branch that ran produced, as kfp.local
    already does for OneOf parameters (a branch that did not run has none: ValueError)."""
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    original = OrchestratorUtils.__dict__["get_dag_output_artifacts"]

    def get_dag_output_artifacts(cls, dag_outputs_spec, io_store) -> dict:
        outputs = {}
        for key, spec in dag_outputs_spec.artifacts.items():
            found = []
            for selector in spec.artifact_selectors:
                with contextlib.suppress(ValueError):
                    found.append(
                        io_store.get_task_output(
                            selector.producer_subtask, selector.output_artifact_key
                        )
                    )
            if len(found) != 1:
                raise ValueError(f"DAG output {key!r}: {len(found)} branches produced it, not 1")
            outputs[key] = found[0]
        return outputs

    OrchestratorUtils.get_dag_output_artifacts = classmethod(get_dag_output_artifacts)
    try:
        yield
    finally:
        OrchestratorUtils.get_dag_output_artifacts = original


def run_local(
    data: Path,
    out: Path,
    arguments: dict | None = None,
    params_file: Path = DEFAULT,
    image: str | None = None,
) -> Path:
    """Run this pipeline, built from `params_file`, with kfp.local; returns the run's output
    folder.

    The dataset comes from the local folder `data` (its DVC md5 is still recorded) and the
    deploy step serves the model on 127.0.0.1 instead of rolling it out on a cluster. Publishing
    and the gate's baseline use the S3 server the environment names (AWS_ENDPOINT_URL, keys).
    Each step runs in this environment, or with `image` in that components image through the
    local Docker daemon (kfp's DockerRunner), as a pipeline pod runs it: read-only root
    filesystem, /tmp a tmpfs, the host's network, the S3 environment passed in; the run folder,
    the dataset (read-only) and the checkpoints are the only folders it sees of this machine.
    """
    from kfp import local

    data, out = Path(data).resolve(), Path(out).resolve()
    if not data.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {data}")
    if not os.environ.get("AWS_ENDPOINT_URL"):
        raise PipelineError(
            "run-local publishes to S3: set AWS_ENDPOINT_URL and the keys "
            "(`make s3-up` starts a local server and prints them)"
        )
    runs, checkpoints = out / "runs", out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    before = set(runs.glob("*")) if runs.is_dir() else set()  # .kfp_cache/ is kept across runs
    local.init(
        runner=_docker_runner(data, checkpoints)
        if image
        else local.SubprocessRunner(use_venv=False),
        pipeline_root=str(runs),
        raise_on_error=True,
        enable_caching=True,
    )
    args = {
        "data_path": str(data),
        "deploy_target": "local",
        "checkpoint_root": str(checkpoints),
    } | (arguments or {})
    # Components run as `python3 -m ...` subprocesses; kfp swaps in this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with _local_oneof_artifacts():
        build_pipeline(image or DEFAULT_IMAGE, params_file)(**args)
    new = sorted(p for p in set(runs.glob("*")) - before if not p.name.startswith("."))
    if len(new) != 1:
        raise RuntimeError(f"expected one new run folder under {runs}, found {new}")
    return new[0]


# What a step container gets of this process's environment: the object store's settings.
PASSED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def _docker_runner(data: Path, checkpoints: Path):
    """kfp's DockerRunner for run_local(image=...): every step in its own container."""
    from docker.types import Mount
    from kfp import local

    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith("S3_")}
    return local.DockerRunner(
        network_mode="host",
        # This machine's user, so the run folder it owns stays its own (on a cluster the image's
        # uid 10001 writes to volumes the pod's securityContext gives it).
        user=f"{os.getuid()}:{os.getgid()}",
        read_only=True,
        tmpfs={"/tmp": "rw,size=4g"},  # noqa: S108 - the container's own tmpfs
        environment=env | {"HOME": "/tmp"},  # noqa: S108
        mounts=[
            Mount(str(data), str(data), type="bind", read_only=True),
            Mount(str(checkpoints), str(checkpoints), type="bind"),
        ],
    )
