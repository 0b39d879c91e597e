"""FAKE Kubernetes API + Kubeflow Trainer (and JobSet) controller, in memory: no cluster can
run here.

Implements `components.training.trainjob.TrainJobApi`. Every TrainJob created is validated
against the TrainJob CRD's openAPIV3Schema (tests/crd_schema.py: strict, unknown fields
rejected, plus the CRD's name rule), and again with its status after each controller step. Its
runtimeRef must name the `torch-distributed` ClusterTrainingRuntime (the upstream copy in
tests/fixtures/kubeflow-trainer/), and its runtime patches may only target that runtime's
replicated jobs and containers, as the Trainer webhook requires. The API server's defaults are
added on create (managedBy, suspend, the webhook's `time` on each runtime patch).

The controller advances one step per `get` of a job, as upstream reports it (the JobSet
plugin's Status): first `jobsStatus` for job `node` with all nodes active and one pod per node
(labels `jobset.sigs.k8s.io/jobset-name`, `jobset.sigs.k8s.io/replicatedjob-name`,
`batch.kubernetes.io/job-completion-index`), then ready; each step the rank-0 pod logs one
line, timestamped `step_s` seconds apart. After `finish_after` steps the job ends as
`outcomes[name]` says: "complete" (first calls `on_complete(obj)`, which a test uses to
simulate the training by writing what rank 0 would write), "fail", or "never".
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import yaml

from components.infra.kube import KubeError
from tests.crd_schema import validate

RUNTIME = yaml.safe_load(
    (Path(__file__).parent / "fixtures" / "kubeflow-trainer" / "torch_distributed.yaml").read_text()
)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _condition(kind: str, reason: str, message: str, when: dt.datetime) -> dict:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _check_runtime(obj: dict) -> None:
    """What the Trainer webhook refuses: an unknown runtime, patches of parts it lacks."""
    ref = obj["spec"]["runtimeRef"]
    if (ref["name"], ref.get("kind", "ClusterTrainingRuntime")) != (
        RUNTIME["metadata"]["name"],
        RUNTIME["kind"],
    ):
        raise KubeError(f"create TrainJob: HTTP 422: runtime {ref} not found")
    jobs = {j["name"]: j for j in RUNTIME["spec"]["template"]["spec"]["replicatedJobs"]}
    for patch in obj["spec"].get("runtimePatches", []):
        spec = patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {})
        for job in spec.get("replicatedJobs", []):
            if job["name"] not in jobs:
                raise KubeError(f"create TrainJob: HTTP 422: no replicated job {job['name']}")
            pod = job["template"]["spec"]["template"]["spec"]
            runtime_pod = jobs[job["name"]]["template"]["spec"]["template"]["spec"]
            have = {c["name"] for c in runtime_pod["containers"]}
            for c in pod.get("containers", []):
                if c["name"] not in have:
                    raise KubeError(f"create TrainJob: HTTP 422: no container {c['name']}")


class FakeTrainer:
    def __init__(self, finish_after: int = 3, step_s: float = 10.0) -> None:
        self.finish_after, self.step_s = finish_after, step_s
        self.outcomes: dict[str, str] = {}
        self.on_complete: Callable[[dict], None] | None = None
        self.objects: dict[tuple[str, str], dict] = {}
        self.steps: dict[tuple[str, str], int] = {}
        self.pod_objects: dict[tuple[str, str], dict] = {}
        self.logs: dict[tuple[str, str], list[tuple[dt.datetime, str]]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.now = T0

    # ---- the API --------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> dict | None:
        key = (namespace, name)
        if key not in self.objects:
            return None
        self._step(key)
        return copy.deepcopy(self.objects[key])

    def create(self, namespace: str, obj: dict) -> dict:
        validate(obj)
        _check_runtime(obj)
        name = obj["metadata"]["name"]
        assert obj["metadata"].get("namespace", namespace) == namespace
        if (namespace, name) in self.objects:
            raise KubeError(f"create TrainJob {namespace}/{name}: HTTP 409: already exists")
        stored = copy.deepcopy(obj)
        stored["metadata"].update(namespace=namespace, generation=1, uid=f"uid-{name}")
        spec = stored["spec"]
        spec.setdefault("managedBy", "trainer.kubeflow.org/trainjob-controller")
        spec.setdefault("suspend", False)
        for patch in spec.get("runtimePatches", []):
            patch["time"] = _stamp(self.now).split(".")[0] + "Z"
        validate(stored)  # no status yet: the CRD wants none rather than an empty one
        self.objects[(namespace, name)] = stored
        self.steps[(namespace, name)] = 0
        self.created.append(name)
        return copy.deepcopy(stored)

    def delete(self, namespace: str, name: str) -> None:
        if self.objects.pop((namespace, name), None) is None:
            raise KubeError(f"delete TrainJob {namespace}/{name}: HTTP 404: not found")
        for key in [k for k, p in self.pod_objects.items() if self._owner(p) == name]:
            del self.pod_objects[key]
        self.deleted.append(name)

    def pods(self, namespace: str, label_selector: str) -> list[dict]:
        want = dict(term.split("=", 1) for term in label_selector.split(","))
        return [
            copy.deepcopy(p)
            for (ns, _), p in self.pod_objects.items()
            if ns == namespace and want.items() <= p["metadata"]["labels"].items()
        ]

    def pod_log(self, namespace: str, pod: str, since_seconds: int | None = None) -> str:
        if (namespace, pod) not in self.pod_objects:
            raise KubeError(f"log of pod {namespace}/{pod}: HTTP 404: not found")
        lines = self.logs.get((namespace, pod), [])
        if since_seconds is not None:
            start = self.now - dt.timedelta(seconds=since_seconds)
            lines = [(t, s) for t, s in lines if t >= start]
        return "".join(f"{_stamp(t)} {s}\n" for t, s in lines)

    # ---- for tests ------------------------------------------------------------------------
    def preexisting(self, namespace: str, obj: dict, status: dict | None = None) -> None:
        """An object that was there before the test (created by someone else, or earlier)."""
        self.create(namespace, obj)
        self.created.pop()
        if status is not None:
            self.objects[(namespace, obj["metadata"]["name"])]["status"] = status

    # ---- the controller -------------------------------------------------------------------
    @staticmethod
    def _owner(pod: dict) -> str:
        return pod["metadata"]["labels"]["jobset.sigs.k8s.io/jobset-name"]

    def _step(self, key: tuple[str, str]) -> None:
        obj = self.objects[key]
        status = obj.setdefault("status", {})
        if any(c["status"] == "True" for c in status.get("conditions", [])):
            return  # finished: nothing moves any more
        self.now += dt.timedelta(seconds=self.step_s)
        self.steps[key] += 1
        step, (ns, name) = self.steps[key], key
        nodes = obj["spec"]["trainer"]["numNodes"]
        # Counts of child Jobs (one indexed Job of `nodes` pods), not of pods.
        counts = {"active": 1, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}
        if step == 1:
            for i in range(nodes):
                pod = f"{name}-node-0-{i}-abcde"
                labels = {
                    "jobset.sigs.k8s.io/jobset-name": name,
                    "jobset.sigs.k8s.io/replicatedjob-name": "node",
                    "batch.kubernetes.io/job-completion-index": str(i),
                }
                meta = {
                    "name": pod,
                    "namespace": ns,
                    "labels": labels,
                    "creationTimestamp": _stamp(self.now),
                }
                self.pod_objects[(ns, pod)] = {"metadata": meta, "status": {"phase": "Running"}}
        else:
            counts["ready"] = 1
            rank0 = (ns, f"{name}-node-0-0-abcde")
            self.logs.setdefault(rank0, []).append((self.now, f"step {step}: training"))
        outcome = self.outcomes.get(name, "complete")
        if step >= self.finish_after and outcome != "never":
            counts.update(active=0, ready=0)
            if outcome == "complete":
                if self.on_complete:
                    self.on_complete(copy.deepcopy(obj))
                counts["succeeded"] = 1
                cond = _condition(
                    "Complete", "AllJobsCompleted", "jobset completed successfully", self.now
                )
            else:
                counts["failed"] = 1
                message = "jobset failed due to one or more job failures"
                cond = _condition("Failed", "FailedJobs", message, self.now)
            status["conditions"] = [cond]
        status["jobsStatus"] = [{"name": "node", **counts}]
        validate(obj)
