"""Multi-node training as a Kubeflow Trainer TrainJob (`trainer.kubeflow.org/v1alpha1`).

`trainjob_manifest` builds the TrainJob for the cluster's `torch-distributed` runtime, whose
torch mlPolicy gives every node torchrun's rendezvous (PET_NNODES, PET_NPROC_PER_NODE,
PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT), so the command carries no rendezvous flags.
`run_trainjob` creates it (or adopts the one an earlier attempt of the same step created),
follows it to Complete or Failed and reports progress with the rank-0 pod's log.

Pod settings the trainer section has no field for (tolerations, node selector, volumes) go in
`spec.runtimePatches`, the CRD's only pod override at the schema's commit (SOURCE in
tests/fixtures/kubeflow-trainer/), patching the runtime's `node` job and container.

The `kubeflow` SDK (TrainerClient) fits our pins (kubernetes<36, pydantic>=2.10) but is not
used: it names jobs at random (a retried KFP attempt must re-find its job by name), builds the
spec itself from typed options (we compare the whole spec on adoption), and brings three
packages into the components image for five REST calls that `kubernetes` already makes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from components.infra.kube import CustomObjects, KubeError, Pods, Resource
from components.training.launch import train_argv

TRAINJOB = Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
GROUP, VERSION, PLURAL, KIND = TRAINJOB.group, TRAINJOB.version, TRAINJOB.plural, TRAINJOB.kind
API_VERSION = TRAINJOB.api_version
RUNTIME = "torch-distributed"
NODE = "node"  # the runtime's replicated job and container that run the trainer
MANAGER = "sign2text.io/pipeline"  # our runtimePatches entry (patches are keyed by manager)
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "sign2text-pipeline"  # only jobs with this label are ever adopted or deleted
SHM = "/dev/shm"  # noqa: S108 - DataLoader workers pass batches through shared memory
# JobSet labels every pod with these; node rank = the indexed Job's completion index.
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
DELETE_POLLS = 60  # polls to wait for a failed job to be deleted before its replacement
LOG_TAIL = 20  # lines of a pod's log shown when it is first seen
NAME_PREFIX = "sign2text-train-"
# Where the pipeline's train step trains (training_mode): in its own pod, or as a TrainJob.
IN_POD, AS_TRAINJOB = "pod", "trainjob"


class TrainJobFailed(RuntimeError):
    """The TrainJob ended Failed (or vanished); the message names the reason."""


class TrainJobTimeout(TimeoutError):
    """The TrainJob did not finish in time; it was deleted if this step owned it."""


class TrainJobApi(Protocol):
    def get(self, namespace: str, name: str) -> dict | None:
        """The TrainJob, or None when it does not exist."""

    def create(self, namespace: str, obj: dict) -> dict: ...

    def delete(self, namespace: str, name: str) -> None: ...

    def pods(self, namespace: str, label_selector: str) -> list[dict]:
        """Pods (as API dicts) matching the selector."""

    def pod_log(self, namespace: str, pod: str, since_seconds: int | None = None) -> str:
        """The pod's log, each line prefixed with its RFC 3339 timestamp and a space."""


class KubernetesTrainJobApi:
    """TrainJobApi on a real cluster (the pipeline's train step, in-cluster): the TrainJobs, and
    the pods of their `node` container with its log."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        self._jobs = CustomObjects(TRAINJOB, kubeconfig, context)
        self._pods = Pods(NODE, kubeconfig, context)

    def get(self, namespace: str, name: str) -> dict | None:
        return self._jobs.get(namespace, name)

    def create(self, namespace: str, obj: dict) -> dict:
        return self._jobs.create(namespace, obj)

    def delete(self, namespace: str, name: str) -> None:
        self._jobs.delete(namespace, name)

    def pods(self, namespace: str, label_selector: str) -> list[dict]:
        return self._pods.list(namespace, label_selector)

    def pod_log(self, namespace: str, pod: str, since_seconds: int | None = None) -> str:
        return self._pods.log(namespace, pod, since_seconds)


def uses_trainjob(nodes: int, gpus_per_node: int) -> bool:
    """The one rule for where the pipeline trains: one node with at most one GPU trains in the
    train step's own pod, anything more as a TrainJob. The pipeline's branch (training_mode, in
    its choose-training step) and glue.train_step both ask this, so they cannot disagree."""
    if nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"need >= 1 node and >= 0 GPUs, got {nodes} x {gpus_per_node}")
    return nodes > 1 or gpus_per_node > 1


def training_mode(nodes: int, gpus_per_node: int) -> str:
    """uses_trainjob as the pipeline's branch condition compares it: AS_TRAINJOB or IN_POD."""
    return AS_TRAINJOB if uses_trainjob(nodes, gpus_per_node) else IN_POD


def trainjob_name(work_dir: Path, spec: dict) -> str:
    """The job's name from the checkpoint work dir's hash and its spec's: a retried attempt
    (same dir, same spec) finds its job; a later run with other train_* parameters gets a new
    one, which resumes from the same checkpoint. An RFC 1035 label (the CRD's rule)."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{NAME_PREFIX}{Path(work_dir).name.lower()}-{digest}"
    if len(name) > 63 or not name.replace("-", "").isalnum():
        raise ValueError(f"cannot name a TrainJob after {work_dir}: {name!r}")
    return name


def train_command(shards: Path, work: Path, params_file: Path) -> list[str]:
    """The contract with `sign2text train` under torchrun: rank 0 writes work/{state.pt,
    metrics.json, history.json, model/} as a single process would; --resume continues after
    the whole job was killed; params' train.batch_size is the global batch."""
    return [
        "torchrun",
        "--no-python",
        "sign2text",
        *train_argv(shards, work, params_file, "--resume"),
    ]


def trainjob_manifest(
    name: str,
    namespace: str,
    *,
    image: str,
    command: list[str],
    num_nodes: int,
    gpus_per_node: int,
    cpu: str,
    memory: str,
    tolerations: list[dict],
    node_selector: dict[str, str],
    pvc: str,
    mount: str,
    env: dict[str, str] | None = None,
    runtime: str = RUNTIME,
) -> dict:
    """A TrainJob running `command` on `num_nodes` nodes, one process per GPU (one per node
    without GPUs), with the claim `pvc` at `mount` on every node."""
    if num_nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"need >= 1 node and >= 0 GPUs, got {num_nodes} x {gpus_per_node}")
    limits = {"cpu": cpu, "memory": memory}
    if gpus_per_node > 0:
        limits["nvidia.com/gpu"] = str(gpus_per_node)
    trainer = {
        "image": image,
        "command": list(command),
        "numNodes": num_nodes,
        # Explicit: the runtime's "auto" would start one process per CPU on GPU-less nodes.
        "numProcPerNode": max(gpus_per_node, 1),
        "resourcesPerNode": {"requests": dict(limits), "limits": limits},
    }
    if env:
        trainer["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    pod: dict = {
        "volumes": [
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
        "containers": [
            {
                "name": NODE,
                "volumeMounts": [
                    {"name": "checkpoints", "mountPath": mount},
                    {"name": "dshm", "mountPath": SHM},
                ],
            }
        ],
    }
    if tolerations:
        pod["tolerations"] = copy.deepcopy(tolerations)
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    job = {"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_LABEL: MANAGED_BY}},
        "spec": {
            "runtimeRef": {"name": runtime, "kind": "ClusterTrainingRuntime"},
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": MANAGER,
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}},
                }
            ],
        },
    }


def _covers(existing, wanted) -> bool:
    """`existing` holds everything `wanted` sets. The API server adds defaults (managedBy,
    suspend, apiGroup) and the webhook a `time` to each runtime patch; those do not count."""
    if isinstance(wanted, dict):
        return isinstance(existing, dict) and all(
            _covers(existing.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(existing, list)
            and len(existing) == len(wanted)
            and all(_covers(e, w) for e, w in zip(existing, wanted, strict=True))
        )
    return existing == wanted


def _condition(obj: dict, kind: str) -> dict | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def _describe(obj: dict) -> str:
    """What changed-or-not is reported: the conditions and each child job's counts."""
    status = obj.get("status") or {}
    parts = [
        f"{c['type']}={c['status']}" + (f" ({c['reason']})" if c.get("reason") else "")
        for c in status.get("conditions") or []
    ]
    for j in status.get("jobsStatus") or []:
        counts = ", ".join(f"{k} {j.get(k, 0)}" for k in ("active", "ready", "succeeded", "failed"))
        parts.append(f"job {j['name']}: {counts}")
    return "; ".join(parts) or "created, no status yet"


def _ts(line: str) -> tuple[str, str]:
    """A log line's timestamp as a sortable key (RFC 3339 with 0-9 fraction digits)."""
    stamp = line.split(" ", 1)[0].rstrip("Z")
    whole, _, frac = stamp.partition(".")
    return whole, frac.ljust(9, "0")


class _LogTail:
    """New lines of the rank-0 node pod's log at each poll (a restarted pod starts over)."""

    def __init__(self, api: TrainJobApi, namespace: str, name: str, poll_s: float) -> None:
        self.api, self.namespace, self.poll_s = api, namespace, poll_s
        self.selector = f"{JOBSET_LABEL}={name},{REPLICATED_JOB_LABEL}={NODE},{INDEX_LABEL}=0"
        self.pod: str | None = None
        self.last: tuple[str, str] | None = None

    def lines(self) -> list[str]:
        try:
            pods = self.api.pods(self.namespace, self.selector)
            if not pods:
                return []
            newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
            pod = newest["metadata"]["name"]
            if pod != self.pod:
                self.pod, self.last = pod, None
            # Twice the poll interval: no line is missed between polls; older ones are dropped.
            since = None if self.last is None else math.ceil(2 * self.poll_s) + 1
            text = self.api.pod_log(self.namespace, pod, since_seconds=since)
        except KubeError:
            return []  # a pod still pulling its image has no log yet: not an error
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if self.last is None:
            lines = lines[-LOG_TAIL:]
        else:
            lines = [ln for ln in lines if _ts(ln) > self.last]
        if lines:
            self.last = _ts(lines[-1])
        return [f"{pod}: {ln.split(' ', 1)[1] if ' ' in ln else ''}" for ln in lines]


def _start(
    api: TrainJobApi,
    manifest: dict,
    log: Callable[[str], None],
    sleep: Callable[[float], None],
    poll_s: float,
) -> dict:
    """Create the TrainJob, or adopt the identical one an earlier attempt created. A failed one
    of ours is replaced: a retried attempt resumes from the checkpoint on the claim (its logs
    went to the failed attempt's step log while it ran)."""
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    existing = api.get(ns, name)
    if existing is not None:
        labels = existing.get("metadata", {}).get("labels") or {}
        if labels.get(MANAGED_LABEL) != MANAGED_BY or not _covers(
            existing["spec"], manifest["spec"]
        ):
            raise TrainJobFailed(
                f"TrainJob {ns}/{name} exists with another spec (not this step's: an earlier "
                f"run with other train_* parameters?); delete it (kubectl delete trainjob -n "
                f"{ns} {name}) or change the recipe"
            )
        if not (failed := _condition(existing, "Failed")):
            log(f"TrainJob {ns}/{name}: adopting the one an earlier attempt created")
            return existing
        log(
            f"TrainJob {ns}/{name}: an earlier attempt's job failed ({failed.get('reason')}); "
            "replacing it, to resume from its checkpoint"
        )
        api.delete(ns, name)
        for _ in range(DELETE_POLLS):  # foreground deletion: its pods go first
            if api.get(ns, name) is None:
                break
            sleep(poll_s)
        else:
            raise TrainJobFailed(f"TrainJob {ns}/{name}: the failed job would not go away")
    log(f"TrainJob {ns}/{name}: creating ({manifest['spec']['trainer']['numNodes']} nodes)")
    return api.create(ns, manifest)


def run_trainjob(
    api: TrainJobApi,
    manifest: dict,
    *,
    timeout_s: float,
    poll_s: float = 10,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Run the TrainJob to its end; returns it Complete. Raises TrainJobFailed (Failed, with
    the condition's reason and message) or TrainJobTimeout after `timeout_s`, having deleted
    the job: this step's own (created or adopted), never any other."""
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    _start(api, manifest, log, sleep, poll_s)
    deadline = clock() + timeout_s
    tail = _LogTail(api, ns, name, poll_s)
    seen = ""
    while True:
        obj = api.get(ns, name)
        if obj is None:
            raise TrainJobFailed(f"TrainJob {ns}/{name} was deleted while it ran")
        for line in tail.lines():
            log(line)
        if (state := _describe(obj)) != seen:
            log(f"TrainJob {ns}/{name}: {state}")
            seen = state
        if _condition(obj, "Complete"):
            return obj
        if failed := _condition(obj, "Failed"):
            raise TrainJobFailed(
                f"TrainJob {ns}/{name} failed: {failed.get('reason') or 'no reason'}: "
                f"{failed.get('message') or 'no message'} "
                f"(kubectl logs -n {ns} -l {JOBSET_LABEL}={name})"
            )
        if clock() >= deadline:
            api.delete(ns, name)
            raise TrainJobTimeout(
                f"TrainJob {ns}/{name} did not finish within {timeout_s / 3600:.3g} h; deleted "
                "it (its checkpoint stays: the next attempt resumes)"
            )
        sleep(poll_s)
