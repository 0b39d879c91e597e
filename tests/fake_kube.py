"""FAKE Kubernetes API + KServe/Knative controller, in memory (no cluster can run here).

Implements `components.infra.kube.KubeApi`. Every create and merge patch is validated against the
KServe CRD schema (tests/crd_schema.py) before it is applied, and the object after it too.
Patches are applied as RFC 7386 JSON merge patches. The controller moves status through the
fields KServe does (knative ksvc_reconciler + PropagateStatus):

- a change of the revision template (predictor spec other than canaryTrafficPercent, or the
  annotations, which KServe copies onto the revision) creates a revision `<name>-predictor-000N`,
  seen one poll after the write (observedGeneration lags), ready `ready_after` polls later, or
  never when its storageUri is in `never_ready`;
- traffic: with canaryTrafficPercent P and a rolled-out revision, `latest` (latestRevision:
  true) gets P and `prev` (the rolled-out revision) 100-P; otherwise latest gets 100%;
- a latest ready revision at 100% becomes latestRolledoutRevision;
- tagged traffic entries carry `url`s `http://<tag>-<name>-predictor.<ns>.example.com`.

`stuck` holds the names of objects whose status the controller no longer updates (a controller that
is down, or a rollout that never settles). `crash_after_writes=N` makes the (N+1)-th write raise
Crash without applying it, as a killed process would never have sent it. `fail_write(verb, name,
body)` may return an error that the write raises instead of being applied (nor kept in `writes`), as
when the API server refuses it (the real API, components/release/isvc.py cluster_api, raises
KubeError then).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from tests.crd_schema import validate, validate_patch


class Crash(BaseException):  # noqa: N818
    """Simulated death of the deploying process. A BaseException, as KeyboardInterrupt is:
    deploy's `except Exception` (rolling back on errors) must not run, as in a killed process."""


class NotFound(Exception):  # noqa: N818
    pass


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Revision:
    name: str
    template: dict
    polls_left: int
    never_ready: bool

    @property
    def ready(self) -> bool:
        return not self.never_ready and self.polls_left <= 0

    @property
    def storage_uri(self) -> str:
        return self.template["predictor"]["model"]["storageUri"]


def _template(obj: dict) -> dict:
    predictor = {k: v for k, v in obj["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
    return {"predictor": predictor, "annotations": obj["metadata"].get("annotations") or {}}


class FakeKServe:
    def __init__(self, ready_after: int = 2) -> None:
        self.ready_after = ready_after
        self.never_ready: set[str] = set()
        self.stuck: set[str] = set()
        self.crash_after_writes: int | None = None
        self.fail_write: Callable[[str, str, dict], Exception | None] | None = None
        self.objects: dict[tuple[str, str], dict] = {}
        self.revisions: dict[tuple[str, str], list[Revision]] = {}
        self.writes: list[tuple[str, str, dict]] = []  # (verb, name, body) as received

    # ---- the API --------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> dict | None:
        key = (namespace, name)
        if key not in self.objects:
            return None
        self._tick(key)
        return copy.deepcopy(self.objects[key])

    def create(self, namespace: str, obj: dict) -> dict:
        self._write("create", obj["metadata"]["name"], obj)
        validate(obj)
        name = obj["metadata"]["name"]
        assert obj["metadata"].get("namespace", namespace) == namespace
        if (namespace, name) in self.objects:
            raise ValueError(f"409 AlreadyExists {name}")
        stored = copy.deepcopy(obj)
        stored["metadata"].update(namespace=namespace, generation=1)
        stored["status"] = {}
        self.objects[(namespace, name)] = stored
        self.revisions[(namespace, name)] = []
        return copy.deepcopy(stored)

    def patch(self, namespace: str, name: str, patch: dict) -> dict:
        self._write("patch", name, patch)
        validate_patch("InferenceService", "serving.kserve.io/v1beta1", patch)
        key = (namespace, name)
        if key not in self.objects:
            raise NotFound(name)
        old = self.objects[key]
        new = merge_patch(old, patch)
        validate({k: v for k, v in new.items() if k != "status"})
        if new["spec"] != old["spec"] or new["metadata"].get("annotations") != old["metadata"].get(
            "annotations"
        ):
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        self.objects[key] = new
        return copy.deepcopy(new)

    def _write(self, verb: str, name: str, body: dict) -> None:
        if self.crash_after_writes is not None and len(self.writes) >= self.crash_after_writes:
            raise Crash(f"crashed before {verb} {name}")
        if self.fail_write and (error := self.fail_write(verb, name, body)):
            raise error
        self.writes.append((verb, name, copy.deepcopy(body)))

    # ---- the controller -------------------------------------------------------------------
    def _tick(self, key: tuple[str, str]) -> None:
        obj, revs = self.objects[key], self.revisions[key]
        ns, name = key
        if name in self.stuck:
            return
        status = obj["status"]
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            tpl = _template(obj)
            if not revs or revs[-1].template != tpl:
                uri = tpl["predictor"]["model"]["storageUri"]
                revs.append(
                    Revision(
                        f"{name}-predictor-{len(revs) + 1:05d}",
                        copy.deepcopy(tpl),
                        self.ready_after,
                        uri in self.never_ready,
                    )
                )
            status["observedGeneration"] = obj["metadata"]["generation"]
        else:
            for r in revs:
                r.polls_left -= 1
        ps = status.setdefault("components", {}).setdefault("predictor", {})
        latest = revs[-1]
        ready = [r for r in revs if r.ready]
        ps["latestCreatedRevision"] = latest.name
        if ready:
            ps["latestReadyRevision"] = ready[-1].name
        tags = (
            obj["metadata"].get("annotations", {}).get("serving.kserve.io/enable-tag-routing")
            == "true"
        )
        pct, rolled = (
            obj["spec"]["predictor"].get("canaryTrafficPercent"),
            ps.get("latestRolledoutRevision"),
        )

        def entry(tag: str, revision: str | None, percent: int, is_latest: bool) -> dict:
            e = {"revisionName": revision, "percent": percent, "latestRevision": is_latest}
            if tags or tag == "prev":
                e.update(tag=tag, url=f"http://{tag}-{name}-predictor.{ns}.example.com")
            return e

        traffic = []
        if ready:
            if pct is not None and rolled:
                traffic.append(entry("latest", ready[-1].name, pct, True))
                if pct < 100:
                    traffic.append(entry("prev", rolled, 100 - pct, False))
            else:
                traffic.append(entry("latest", ready[-1].name, 100, True))
        ps["traffic"] = traffic
        for t in traffic:
            if t["latestRevision"] and t["percent"] == 100 and t["revisionName"] != rolled:
                ps["previousRolledoutRevision"] = rolled
                ps["latestRolledoutRevision"] = t["revisionName"]
        if latest.ready:
            cond = {"type": "Ready", "status": "True"}
        elif latest.never_ready:
            cond = {
                "type": "Ready",
                "status": "False",
                "reason": "RevisionFailed",
                "message": f"Revision {latest.name} failed: model download failed",
            }
        else:
            cond = {"type": "Ready", "status": "Unknown", "reason": "RevisionMissing"}
        status["conditions"] = [cond]
        status["url"] = f"http://{name}.{ns}.example.com"

    # ---- for tests ------------------------------------------------------------------------
    def revision_at(self, url: str) -> Revision:
        """The revision a tagged URL routes to now (what a request there would reach)."""
        for (_ns, _name), obj in self.objects.items():
            for t in obj["status"].get("components", {}).get("predictor", {}).get("traffic", []):
                if t.get("url") == url:
                    revs = self.revisions[(_ns, _name)]
                    return next(r for r in revs if r.name == t["revisionName"])
        raise KeyError(url)
