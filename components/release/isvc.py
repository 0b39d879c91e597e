"""InferenceServices as the rollout reads and patches them: where they are, what to send.

The REST and gRPC services (`DEFAULT_NAMES`) are created from their templates (manifests/base's,
shipped with this module in templates/) and moved with JSON merge patches (RFC 7386) of
`spec.predictor`: storageUri and `canaryTrafficPercent` to start a canary, the percent for each
step, null to promote, 0 (with the previous storageUri and version annotations) to roll back.
`state` and `waiting_for` read where a live object is; components/release/deploy.py decides
what to do next.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import yaml

from components.infra.kube import CustomObjects, Resource

INFERENCE_SERVICE = Resource(
    "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
)
KIND = INFERENCE_SERVICE.kind
# Package data (pyproject.toml), so an installed deploy finds them: copies of manifests/base's,
# the kustomize base and their one source (tests/test_installed.py keeps them the same bytes).
TEMPLATES_DIR = Path(__file__).with_name("templates")
DEFAULT_TEMPLATES = (
    TEMPLATES_DIR / "inferenceservice-rest.yaml",
    TEMPLATES_DIR / "inferenceservice-grpc.yaml",
)
DEFAULT_NAMES = ("sign2text", "sign2text-grpc")
ANN_MODEL = "sign2text.io/model-version"
ANN_DATA = "sign2text.io/data-version"
ANN_COMMIT = "sign2text.io/git-commit"
VERSION_ANNOTATIONS = (ANN_MODEL, ANN_DATA, ANN_COMMIT)
ANN_ROLLBACK = "sign2text.io/rollback-to"
ANN_ROLLED_BACK = "sign2text.io/rolled-back-from"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"


class KubeApi(Protocol):
    """The three InferenceService calls a rollout makes (tests/fake_kube.py stands in for it)."""

    def get(self, namespace: str, name: str) -> dict | None:
        """The InferenceService, or None when it does not exist."""

    def create(self, namespace: str, obj: dict) -> dict: ...

    def patch(self, namespace: str, name: str, patch: dict) -> dict:
        """Apply a JSON merge patch (RFC 7386)."""


def cluster_api(kubeconfig: str | None = None, context: str | None = None) -> KubeApi:
    """KubeApi on a real cluster: kubeconfig if given, else in-cluster, else ~/.kube/config."""
    return CustomObjects(INFERENCE_SERVICE, kubeconfig, context)


def _predictor(obj: dict) -> dict:
    return obj.get("spec", {}).get("predictor", {})


def storage_uri(obj: dict) -> str | None:
    return _predictor(obj).get("model", {}).get("storageUri")


def canary_percent(obj: dict) -> int | None:
    return _predictor(obj).get("canaryTrafficPercent")


def annotations(obj: dict) -> dict:
    return obj.get("metadata", {}).get("annotations") or {}


def _pstatus(obj: dict) -> dict:
    return obj.get("status", {}).get("components", {}).get("predictor", {})


def traffic(obj: dict, tag: str) -> dict | None:
    for t in _pstatus(obj).get("traffic") or []:
        untagged_latest = tag == "latest" and t.get("latestRevision") and not t.get("tag")
        if t.get("tag") == tag or untagged_latest:
            return t
    return None


def protocol(obj: dict) -> str:
    ports = _predictor(obj).get("model", {}).get("ports") or []
    return "grpc" if any(p.get("name") == "h2c" for p in ports) else "rest"


def state(obj: dict | None, target: str) -> str:
    """absent | done (serving target at 100%) | canary (rolling to target) | halted (target
    at 0%: rolled back by hand) | other (serving another storageUri)."""
    if obj is None:
        return "absent"
    if storage_uri(obj) != target:
        return "other"
    pct = canary_percent(obj)
    return "done" if pct is None else "halted" if pct == 0 else "canary"


def waiting_for(obj: dict, percent: int, *, new_revision: bool = True) -> str | None:
    """Why `obj` has not yet settled with the latest revision at `percent` (None: it has)."""
    gen, status = obj.get("metadata", {}).get("generation"), obj.get("status", {})
    if gen is not None and status.get("observedGeneration", gen) < gen:
        return f"controller has not seen generation {gen} yet"
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("status") != "True":
        why = ": ".join(x for x in (ready.get("reason"), ready.get("message")) if x)
        return f"not Ready ({why or 'no Ready condition yet'})"
    ps = _pstatus(obj)
    created, latest_ready = ps.get("latestCreatedRevision"), ps.get("latestReadyRevision")
    if not latest_ready or created != latest_ready:
        return f"revision {created} not ready yet (latest ready: {latest_ready})"
    latest = traffic(obj, "latest")
    if latest is None or latest.get("percent") != percent:
        now = None if latest is None else latest.get("percent")
        return f"latest traffic at {now}%, want {percent}%"
    if latest.get("revisionName") not in (None, latest_ready):
        return f"latest traffic on {latest.get('revisionName')}, not {latest_ready}"
    rolled_out = ps.get("latestRolledoutRevision")
    if percent == 100 and rolled_out != latest_ready:
        return f"{latest_ready} not rolled out yet (latestRolledoutRevision {rolled_out})"
    if percent < 100 and new_revision and latest_ready == rolled_out:
        return f"no new revision yet ({latest_ready} is the rolled-out one)"
    return None


def rolled_back(obj: dict) -> str | None:
    """Why a rolled-back `obj` is not yet serving the previous revision at 100% (None: it is)."""
    prev = traffic(obj, "prev")
    if prev is not None and prev.get("percent") == 100:
        return None
    return "previous revision not at 100% yet"


# ---- building requests ---------------------------------------------------------------------


def versions(model_dir: Path, model_uri: str) -> dict[str, str]:
    """The version annotations: the URI's last segment, and data/commit from lineage.json."""
    path = Path(model_dir) / "lineage.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model package: no lineage.json")
    lineage = json.loads(path.read_text())
    return {
        ANN_MODEL: model_uri.rstrip("/").rsplit("/", 1)[-1],
        ANN_DATA: str(lineage.get("data_md5") or "unknown"),
        ANN_COMMIT: str(lineage.get("git_commit") or "unknown"),
    }


def load_templates(paths: Sequence[Path]) -> dict[str, dict]:
    """InferenceService templates by name (one object per file)."""
    out = {}
    for p in paths:
        try:
            obj = yaml.safe_load(Path(p).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"InferenceService template not found: {p}") from None
        if (
            not isinstance(obj, dict)
            or obj.get("kind") != KIND
            or "name" not in obj.get("metadata", {})
        ):
            raise ValueError(f"{p}: expected one {KIND} with metadata.name")
        out[obj["metadata"]["name"]] = obj
    return out


def new_object(template: dict, namespace: str, model_uri: str, vers: dict[str, str]) -> dict:
    obj = copy.deepcopy(template)
    obj.pop("status", None)
    meta = obj.setdefault("metadata", {})
    meta["namespace"] = namespace
    meta.setdefault("annotations", {}).update(vers)
    _predictor(obj).setdefault("model", {})["storageUri"] = model_uri
    obj["spec"]["predictor"].pop("canaryTrafficPercent", None)
    return obj


def start_patch(obj: dict, model_uri: str, vers: dict[str, str], percent: int) -> dict:
    ann = annotations(obj)
    previous = {
        "storageUri": storage_uri(obj),
        "annotations": {k: ann[k] for k in VERSION_ANNOTATIONS if k in ann},
    }
    return {
        "metadata": {
            "annotations": {
                **vers,
                ANN_ROLLBACK: json.dumps(previous, sort_keys=True),
                ANN_ROLLED_BACK: None,
            }
        },
        "spec": _predictor_patch(percent, model_uri),
    }


def _predictor_patch(percent: int, uri: str) -> dict:
    return {"predictor": {"canaryTrafficPercent": percent, "model": {"storageUri": uri}}}


def step_patch(percent: int | None) -> dict:
    """`percent` None promotes: the merge patch removes the field."""
    return {"spec": {"predictor": {"canaryTrafficPercent": percent}}}


def rollback_patch(obj: dict, model_uri: str) -> tuple[dict, str | None]:
    """The patch that sends all traffic back to the previous revision, and a note when the
    previous storageUri is unknown (then only the traffic moves)."""
    try:
        previous = json.loads(annotations(obj).get(ANN_ROLLBACK) or "null")
    except ValueError:
        previous = None
    if not previous or not previous.get("storageUri"):
        return step_patch(0), f"no {ANN_ROLLBACK} annotation: storageUri left at {model_uri}"
    restored = {k: previous.get("annotations", {}).get(k) for k in VERSION_ANNOTATIONS}
    return {
        "metadata": {"annotations": {**restored, ANN_ROLLED_BACK: model_uri}},
        "spec": _predictor_patch(0, previous["storageUri"]),
    }, None


# ---- the rollout ---------------------------------------------------------------------------
