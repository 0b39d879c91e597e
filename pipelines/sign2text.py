"""The sign2text Kubeflow pipeline: version -> validate -> convert -> train -> evaluate -> (gate)
-> publish -> deploy, inside an exit handler that records how the run ended.

The recipe parameters' defaults are params.yaml's active values at compile time, through
pipelines/parameters.py's table (so the committed sign2text.yaml changes when they do, and a run
with the defaults trains what `dvc repro` trains); params.yaml's other values travel as
`base_params`.
Object store credentials come from the Kubernetes Secret S3_SECRET, never from parameters.
"""

import json
from pathlib import Path

from kfp import dsl, kubernetes

from components.params import DEFAULT, load_params
from components.training.trainjob import IN_POD, SHM
from pipelines.kfp_components import DEFAULT_IMAGE, build
from pipelines.parameters import RECIPE, recipe_defaults

# The committed spec, in a checkout (relative paths: the working directory). The params file a
# compile reads is the working directory's params.yaml or one given, never one beside this file:
# an installed package has none there (issue 27).
COMPILED = Path("pipelines") / "sign2text.yaml"
NAME = "sign2text"

# Secret in the run's namespace with the object store's keys and, for MinIO, its endpoint
# (AWS_ENDPOINT_URL, optional: without it the steps talk to AWS S3). See docs/object-storage.md.
S3_SECRET = "sign2text-s3"  # noqa: S105 - the Secret's name, not a secret
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_ENDPOINT = "AWS_ENDPOINT_URL"
# Training writes its checkpoints to this claim, so a retried attempt (a new pod) resumes.
CHECKPOINT_PVC = "sign2text-checkpoints"
CHECKPOINT_MOUNT = "/checkpoints"
TRAIN_RETRIES = 2
TRAIN_CPU, TRAIN_MEMORY = "4", "16G"
TRAIN_SHM = "8Gi"  # DataLoader workers hand batches over in /dev/shm (memory, counted as such)
# GPU nodes are tainted so that only GPU work lands there (as the prod overlay's predictors
# assume); TRAIN_NODE_SELECTOR (label -> value) may pin training to some of them. Both apply to
# the train step's pod and to every TrainJob node.
TRAIN_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
TRAIN_NODE_SELECTOR: dict[str, str] = {}
# The TrainJob path's train task only stages files, creates the job and follows it (for hours),
# on any node and without a GPU. Memory: its Python process is about 610 MiB once imported
# (torch comes in through components.params; the step's imports, measured), and the rest (KFP's
# launcher in the same container, shards and model copied file by file, a poll's log lines)
# fits in the other ~400 MiB of 1Gi. CPU: copying, and a poll every 30 s
# (glue.TRAINJOB_POLL_S), wait on I/O: half a core is plenty. Limits equal to requests:
# Guaranteed QoS, the last class evicted under node pressure, as a pod that must outlive the
# job should be.
LAUNCHER_CPU, LAUNCHER_MEMORY = "500m", "1Gi"


def _with_s3(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_KEYS})
    return kubernetes.use_secret_as_env(task, S3_SECRET, {S3_ENDPOINT: S3_ENDPOINT}, optional=True)


def _cluster(image: str) -> str:
    """What a TrainJob needs from the cluster, as the train step's JSON parameter."""
    return json.dumps(
        {
            "image": image,
            "cpu": TRAIN_CPU,
            "memory": TRAIN_MEMORY,
            "tolerations": TRAIN_TOLERATIONS,
            "node_selector": TRAIN_NODE_SELECTOR,
            "pvc": CHECKPOINT_PVC,
            "mount": CHECKPOINT_MOUNT,
        },
        sort_keys=True,
    )


def _train_task(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """What both train tasks share: cached (training is deterministic given the shards and
    the recipe), retried (a new attempt resumes from, or re-adopts, what the last one left on
    the checkpoint claim), the claim itself, and the namespace a TrainJob goes in."""
    task.set_caching_options(True)
    task.set_retry(num_retries=TRAIN_RETRIES, backoff_duration="60s")
    kubernetes.mount_pvc(task, pvc_name=CHECKPOINT_PVC, mount_path=CHECKPOINT_MOUNT)
    # A TrainJob goes in the step's own namespace, where the checkpoint claim is.
    return kubernetes.use_field_path_as_env(task, "POD_NAMESPACE", "metadata.namespace")


def _in_pod_training(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The train step's pod: one GPU on a GPU node, limits as well as requests (a node is
    not overcommitted), shared memory for the DataLoader, the checkpoint claim."""
    _train_task(_with_s3(task))
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_cpu_request(TRAIN_CPU).set_memory_request(TRAIN_MEMORY)
    task.set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
    for t in TRAIN_TOLERATIONS:
        kubernetes.add_toleration(task, key=t["key"], operator=t["operator"], effect=t["effect"])
    for key, value in TRAIN_NODE_SELECTOR.items():
        kubernetes.add_node_selector(task, key, value)
    return kubernetes.empty_dir_mount(task, "dshm", SHM, medium="Memory", size_limit=TRAIN_SHM)


def _trainjob_launcher(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The train step when a TrainJob trains: it stages shards and params on the claim, creates
    the job and follows it, so it holds no GPU, tolerates no GPU taint and asks for little
    (LAUNCHER_CPU, LAUNCHER_MEMORY). No object store keys: neither it nor the job reads S3."""
    _train_task(task).set_display_name("train-model-trainjob")
    task.set_cpu_request(LAUNCHER_CPU).set_memory_request(LAUNCHER_MEMORY)
    return task.set_cpu_limit(LAUNCHER_CPU).set_memory_limit(LAUNCHER_MEMORY)


def build_pipeline(image: str = DEFAULT_IMAGE, params_file: Path = DEFAULT):
    """The pipeline function for components running in `image`, its defaults from
    `params_file` (./params.yaml unless given)."""
    c = build(image)
    base = load_params(params_file)
    base.pop("profiles", None)
    d = recipe_defaults(base)

    @dsl.pipeline(name=NAME, description=__doc__.splitlines()[0])
    def sign2text(
        data_repo: str = "",
        data_rev: str = "main",
        data_remote: str = "s3://sign2text/dvc",
        data_path: str = "",
        subset: int = 0,
        num_frames: int = int(d["num_frames"]),
        resize: int = int(d["resize"]),
        crop: int = int(d["crop"]),
        epochs: int = int(d["epochs"]),
        context_epochs: int = int(d["context_epochs"]),
        batch_size: int = int(d["batch_size"]),
        lr: float = float(d["lr"]),
        min_top1: float = float(d["min_top1"]),
        tolerance: float = float(d["tolerance"]),
        canary_percents: str = "10,40,70",
        namespace: str = "sign2text",
        isvc_name: str = "sign2text",
        model_bucket: str = "sign2text",
        deploy_target: str = "cluster",
        checkpoint_root: str = CHECKPOINT_MOUNT,
        train_nodes: int = 1,
        train_gpus_per_node: int = 1,
        train_image: str = "",
        train_timeout_h: float = 48.0,
        base_params: str = json.dumps(base, sort_keys=True),
    ):
        """data_repo/data_rev: git repository and revision whose data.dvc names the dataset
        (data_path instead: a local folder, for local runs only); data_remote: its DVC remote;
        subset: first N glosses (0 = all); num_frames, resize, crop, epochs, batch_size, lr: the
        training recipe, each the params.yaml key of its name; context_epochs: epochs with
        context windows after those (0 = no sentence mode); min_top1, tolerance: the gate;
        canary_percents: the rollout's traffic steps ("10,40,70"); deploy_target: cluster (KServe)
        or local (a local server, for local runs);
        train_nodes x train_gpus_per_node above 1 x 1: a Kubeflow Trainer TrainJob trains
        (train_image, "" = the components image) and must end within train_timeout_h."""
        arguments = dict(locals())  # the parameters, before any other name is bound
        outcome = c.record_outcome(isvc_name=isvc_name).set_caching_options(False)
        with dsl.ExitHandler(outcome, name="run"):
            recipe = {k: v for k, v in arguments.items() if k in RECIPE}
            cfg = c.configure(base=base_params, **recipe).set_caching_options(True)
            # Never cached: the same revision name can point at new data.
            resolved = c.resolve_data(
                data_repo=data_repo, data_rev=data_rev, data_path=data_path
            ).set_caching_options(False)
            # Cached from here on: keyed by the data md5 (and each step's params sections).
            fetched = _with_s3(
                c.fetch_data(
                    data_md5=resolved.output,
                    subset=subset,
                    data_remote=data_remote,
                    data_path=data_path,
                )
            )
            fetched.set_caching_options(True)
            dataset = fetched.outputs["dataset"]
            validated = c.validate_data(dataset=dataset, params=cfg.outputs["data"])
            validated.set_caching_options(True)
            validation = validated.outputs["validation"]
            converted = c.convert_data(
                dataset=dataset, validation=validation, params=cfg.outputs["data"]
            ).set_caching_options(True)

            # One train step, two tasks: a GPU pod trains, or a small pod runs a TrainJob;
            # the other branch is skipped. choose-training applies glue.train_step's rule
            # (uses_trainjob): dsl.If has no `or` to test the two parameters with.
            where = c.choose_training(
                train_nodes=train_nodes, train_gpus_per_node=train_gpus_per_node
            ).set_caching_options(True)
            train = {
                "shards": converted.outputs["shards"],
                "params": cfg.outputs["train"],
                "checkpoint_root": checkpoint_root,
                "train_nodes": train_nodes,
                "train_gpus_per_node": train_gpus_per_node,
                "train_image": train_image,
                "train_timeout_h": train_timeout_h,
                "cluster": _cluster(image),
            }
            with dsl.If(where.output == IN_POD, name="train-in-pod"):
                in_pod = _in_pod_training(c.train_model(**train))
            with dsl.Else(name="train-as-trainjob"):
                launcher = _trainjob_launcher(c.train_model(**train))

            # Where models are published, and production's: the gate's baseline.
            models = {"model_bucket": model_bucket, "isvc_name": isvc_name}
            model = dsl.OneOf(in_pod.outputs["model"], launcher.outputs["model"])
            evaluated = _with_s3(
                c.evaluate_model(
                    model=model,
                    dataset=dataset,
                    validation=validation,
                    params=cfg.outputs["evaluate"],
                    **models,
                )
            ).set_caching_options(False)

            with dsl.If(evaluated.outputs["Output"] == "pass", name="gate-passed"):
                published = _with_s3(
                    c.publish_model(
                        model=model,
                        evaluation=evaluated.outputs["evaluation"],
                        dataset=dataset,
                        params=cfg.outputs["full"],
                        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        **models,
                    )
                ).set_caching_options(False)
                _with_s3(
                    c.deploy_model(
                        package=published.outputs["package"],
                        dataset=dataset,
                        validation=validation,
                        model_uri=published.outputs["Output"],
                        deploy_target=deploy_target,
                        namespace=namespace,
                        canary_percents=canary_percents,
                        **models,
                    )
                ).set_caching_options(False)

    return sign2text
