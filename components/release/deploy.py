"""`deploy`: publish a model package and roll it out to the InferenceServices with a canary.

The services (`sign2text` REST and `sign2text-grpc` gRPC) move together, step by step:

- none exists: create each from its template (manifests/base) with the new storageUri, wait
  until Ready with 100% on the new revision, smoke-check it;
- otherwise: patch storageUri and `canaryTrafficPercent` (first step) on both; for each step wait
  until Ready, latestCreatedRevision == latestReadyRevision and the `latest` traffic entry is at
  the step's percent, soak (watching that it stays so), smoke-check the `latest` tag against the
  `prev` tag; then promote (merge patch `canaryTrafficPercent: null`) and wait for the new
  revision to be rolled out at 100%;
- on a failed check, an unhealthy soak or a timeout, or any other error once the canary has
  started and until promotion (a smoke check that cannot run, an API error): roll back
  (`canaryTrafficPercent: 0`, previous storageUri and version annotations restored) and raise
  RolloutFailed with the reason (for an error, its type and message). If the rollback fails too,
  RolloutFailed names both, and the services stay where it left them.

Nothing is kept locally: the rollout position is read from the live objects, so running the
same deploy again after a crash continues (or finishes a rollback) where the cluster is. When a
canary starts, the previous storageUri and version annotations go into the annotation
`sign2text.io/rollback-to` of the same patch (annotations are part of KServe's revision
template, so they change only together with storageUri); a rollback marks the services with
`sign2text.io/rolled-back-from`. A killed process cannot roll back, and errors before the
canary starts (nothing to undo) or during promotion (promoted services cannot go back through the
canary; the next run finishes the promotion) are raised as they are: the state stays on the
cluster for the next run. A promotion that times out raises RolloutFailed (outcome
`promotion-unconfirmed`) and patches nothing: rolling back then (canaryTrafficPercent 0) would
put the previous model on a new revision at 0% and leave the promoted one at 100%.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from components.release.isvc import (
    ANN_ROLLED_BACK,
    DEFAULT_NAMES,
    DEFAULT_TEMPLATES,
    KIND,
    TAG_ROUTING,
    KubeApi,
    annotations,
    canary_percent,
    cluster_api,
    load_templates,
    new_object,
    protocol,
    rollback_patch,
    rolled_back,
    start_patch,
    state,
    step_patch,
    storage_uri,
    traffic,
    versions,
    waiting_for,
)
from components.release.smoke import Endpoint, Margins, SmokeCheck, compare


class RolloutFailed(RuntimeError):  # noqa: N818 - reads as what happened
    """The rollout was rolled back (or could not go on); `result` has the details."""

    def __init__(self, reason: str, result: dict) -> None:
        super().__init__(reason)
        self.result = result


class _Abort(Exception):  # noqa: N818
    """A check failed: roll back with this reason."""


# ---- reading live objects ----------------------------------------------------------------


class _Rollout:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        names: Sequence[str],
        model_uri: str,
        timeout_s: float,
        soak_s: float,
        poll_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        log: Callable[[str], None],
    ) -> None:
        self.api, self.ns, self.names, self.uri = api, namespace, list(names), model_uri
        self.timeout_s, self.soak_s, self.poll_s = timeout_s, soak_s, poll_s
        self.clock, self.sleep, self.log = clock, sleep, log
        self.actions: list[dict] = []
        # Between the first canary patch and promotion: any error then rolls back.
        self.in_canary = False

    def live(self, names: Sequence[str] | None = None) -> dict[str, dict | None]:
        return {n: self.api.get(self.ns, n) for n in (self.names if names is None else names)}

    def create(self, obj: dict) -> None:
        self.actions.append({"verb": "create", "name": obj["metadata"]["name"], "body": obj})
        self.log(f"create {KIND} {self.ns}/{obj['metadata']['name']}")
        self.api.create(self.ns, obj)

    def start(self, name: str, body: dict) -> None:
        # Marked before sending: a patch whose answer is an error may still have been applied.
        self.in_canary = True
        self.patch(name, body)

    def patch(self, name: str, body: dict) -> None:
        self.actions.append({"verb": "patch", "name": name, "body": body})
        self.log(f"patch {KIND} {self.ns}/{name}: {json.dumps(body['spec']['predictor'])}")
        self.api.patch(self.ns, name, body)

    def wait(self, names: Sequence[str], pending: Callable[[dict], str | None], what: str):
        deadline = self.clock() + self.timeout_s
        while True:
            objs = self.live(names)
            waiting = {n: "gone" if o is None else pending(o) for n, o in objs.items()}
            waiting = {n: why for n, why in waiting.items() if why}
            if not waiting:
                return objs
            if self.clock() >= deadline:
                detail = "; ".join(f"{n}: {why}" for n, why in waiting.items())
                raise _Abort(f"timed out after {self.timeout_s:.0f} s waiting for {what}: {detail}")
            self.sleep(self.poll_s)

    def soak(self, names: Sequence[str], percent: int) -> None:
        end = self.clock() + self.soak_s
        while self.clock() < end:
            self.sleep(min(self.poll_s, max(end - self.clock(), 0)))
            for n, o in self.live(names).items():
                why = "gone" if o is None else waiting_for(o, percent)
                if why:
                    raise _Abort(f"{n} became unhealthy while soaking at {percent}%: {why}")

    def rollback(self, names: Sequence[str]) -> list[str]:
        notes = []
        back = []
        for n, o in self.live(names).items():
            if o is None or state(o, self.uri) == "other":
                continue
            body, note = rollback_patch(o, self.uri)
            if note:
                notes.append(f"{n}: {note}")
            self.patch(n, body)
            back.append(n)
        try:
            self.wait(back, rolled_back, "the previous revision to take 100% again")
        except _Abort as e:
            notes.append(str(e))
        return notes


def parse_percents(text: str, name: str = "--canary-percents") -> list[int]:
    """ "10,50" -> [10, 50], checked as deploy() checks them."""
    try:
        return _check_percents([int(s) for s in text.split(",")])
    except ValueError as e:
        raise ValueError(
            f"{name} wants increasing comma-separated percents in 1..99: {e}"
        ) from None


def _check_percents(percents: Sequence[int]) -> list[int]:
    percents = [int(s) for s in percents]
    if not percents or any(not 0 < s < 100 for s in percents) or percents != sorted(set(percents)):
        raise ValueError(f"canary percents must increase within 1..99, got {percents}")
    return percents


def deploy(
    model_dir: Path,
    *,
    model_uri: str,
    namespace: str = "sign2text",
    names: Sequence[str] = DEFAULT_NAMES,
    percents: Sequence[int] = (10, 50),
    soak_s: float = 60.0,
    timeout_s: float = 600.0,
    max_error_rate_increase: float = 0.0,
    max_p95_increase: float = 0.5,
    smoke: SmokeCheck | None = None,
    api: KubeApi | None = None,
    templates: Sequence[Path] = DEFAULT_TEMPLATES,
    dry_run: bool = False,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
) -> dict:
    """Publish `model_dir` at `model_uri` and roll it out; returns what happened.

    Raises RolloutFailed after a rollback (result attached), ValueError / FileNotFoundError
    for bad arguments. `dry_run` reads the live objects and returns the requests it would send
    (`actions`, plus `on_failure` for the rollback) without publishing or changing anything.
    """
    from components.infra.objstore import publish_dir
    from components.infra.s3_access import is_s3

    percents = _check_percents(percents)
    if not is_s3(model_uri):
        raise ValueError(f"--model-uri must be s3://bucket/prefix/, got {model_uri!r}")
    model_uri = model_uri.rstrip("/") + "/"
    vers = versions(Path(model_dir), model_uri)
    if smoke is None and not dry_run:
        raise ValueError("a smoke check is required (sample videos) unless dry_run")
    margins = Margins(max_error_rate_increase, max_p95_increase)
    if api is None:
        api = cluster_api()
    ro = _Rollout(api, namespace, names, model_uri, timeout_s, soak_s, poll_s, clock, sleep, log)
    result: dict = {
        "model_uri": model_uri,
        "namespace": namespace,
        "versions": vers,
        "steps": [],
        "actions": ro.actions,
    }

    live = ro.live()
    states = {n: state(o, model_uri) for n, o in live.items()}
    result["from"] = {n: storage_uri(o) for n, o in live.items() if o is not None}
    absent = [n for n in names if states[n] == "absent"]
    rolling = [n for n in names if states[n] in ("canary", "other")]
    tpl = load_templates(templates) if absent else {}
    if missing := [n for n in absent if n not in tpl]:
        raise ValueError(f"no template for {missing} among {[str(t) for t in templates]}")

    halted = [n for n, s in states.items() if s == "halted"]
    marked = [n for n, o in live.items() if o and annotations(o).get(ANN_ROLLED_BACK) == model_uri]
    if halted or (marked and any(s == "canary" for s in states.values())):
        if dry_run:
            ro.actions += [
                {"verb": "patch", "name": n, "body": rollback_patch(o, model_uri)[0]}
                for n, o in live.items()
                if o and states[n] != "other"
            ]
            result["outcome"] = "dry-run"
            return result
        notes = ro.rollback(names)
        reason = f"a rollout of {model_uri} was being rolled back; finished rolling back"
        result.update(outcome="rolled-back", reason=reason, notes=notes)
        raise RolloutFailed(reason, result)

    current = max((canary_percent(live[n]) for n in rolling if states[n] == "canary"), default=None)
    plan = [s for s in percents if current is None or s > current]
    plan = ([current] if current is not None else []) + plan

    if dry_run:
        for n in absent:
            ro.actions.append(
                {
                    "verb": "create",
                    "name": n,
                    "body": new_object(tpl[n], namespace, model_uri, vers),
                }
            )
        result["on_failure"] = []
        for i, p in enumerate(plan):
            for n in rolling:
                if i == 0 and states[n] == "other":
                    body = start_patch(live[n], model_uri, vers, p)
                    started = {"metadata": {"annotations": body["metadata"]["annotations"]}}
                    back = rollback_patch(started, model_uri)[0]
                    result["on_failure"].append({"verb": "patch", "name": n, "body": back})
                elif i == 0 and canary_percent(live[n]) == p:
                    continue
                else:
                    body = step_patch(p)
                ro.actions.append({"verb": "patch", "name": n, "body": body})
        ro.actions.extend({"verb": "patch", "name": n, "body": step_patch(None)} for n in rolling)
        result["on_failure"] += [
            {"verb": "patch", "name": n, "body": rollback_patch(live[n], model_uri)[0]}
            for n in rolling
            if states[n] == "canary"
        ]
        result.update(outcome="dry-run", publish={"from": str(model_dir), "to": model_uri})
        return result

    result["published"] = {
        k: v for k, v in publish_dir(Path(model_dir), model_uri).items() if k != "files"
    }
    log(f"published {model_dir} at {model_uri}")

    ro.in_canary = any(states[n] == "canary" for n in rolling)  # resuming one
    try:
        for n in absent:
            ro.create(new_object(tpl[n], namespace, model_uri, vers))
        done = [n for n in names if n not in rolling]
        objs = ro.wait(done, lambda o: waiting_for(o, 100), "the services at 100%")
        for n in absent:
            _smoke_step(result, smoke, margins, {n: objs[n]}, 100, prev=False)
        if not rolling:
            result["outcome"] = "created" if absent else "unchanged"
            return result
        for p in plan:
            for n, o in ro.live(rolling).items():
                if state(o, model_uri) == "other":
                    ro.start(n, start_patch(o, model_uri, vers, p))
                elif canary_percent(o) != p:
                    ro.patch(n, step_patch(p))
            ro.wait(rolling, lambda o, p=p: waiting_for(o, p), f"the canary at {p}%")
            ro.soak(rolling, p)
            _smoke_step(result, smoke, margins, ro.live(rolling), p, prev=True)
        ro.in_canary = False
        for n in rolling:
            ro.patch(n, step_patch(None))
        ro.wait(rolling, lambda o: waiting_for(o, 100), "the promoted revision at 100%")
    except _Abort as e:
        if not rolling:
            result.update(outcome="failed", reason=str(e))
            raise RolloutFailed(f"{e} (first deploy: nothing to roll back to)", result) from None
        if not ro.in_canary:  # promoted: a rollback patch would leave the new model at 100%
            reason = (
                f"{e}; the services are promoted to {model_uri} and stay so (a promoted "
                "revision cannot go back through the canary): rerun to wait for them, "
                "or deploy the previous model"
            )
            result.update(outcome="promotion-unconfirmed", reason=reason)
            raise RolloutFailed(reason, result) from None
        _roll_back(ro, rolling, result, str(e))
    except Exception as e:
        if not ro.in_canary:
            raise
        _roll_back(ro, rolling, result, f"{type(e).__name__}: {e}", cause=e)
    result["outcome"] = "promoted"
    return result


def _roll_back(
    ro: _Rollout, names: Sequence[str], result: dict, reason: str, cause: Exception | None = None
) -> NoReturn:
    """Roll `names` back and raise RolloutFailed with `reason` (and the rollback's own error,
    if it fails: best effort, the cluster then shows how far it got)."""
    ro.log(f"rolling back: {reason}")
    try:
        notes = ro.rollback(names)
    except Exception as e:
        both = f"{reason}; rolling back failed too: {type(e).__name__}: {e}"
        result.update(outcome="rollback-failed", reason=both)
        raise RolloutFailed(both, result) from e
    result.update(outcome="rolled-back", reason=reason, notes=notes)
    raise RolloutFailed(reason, result) from cause


def _smoke_step(
    result: dict,
    smoke: SmokeCheck,
    margins: Margins,
    objs: dict[str, dict],
    percent: int,
    *,
    prev: bool,
) -> None:
    record: dict = {"percent": percent, "smoke": {}}
    result["steps"].append(record)
    failures = []
    for n, o in objs.items():
        eps = {}
        for tag in ("latest", "prev") if prev else ("latest",):
            t = traffic(o, tag)
            if not t or not t.get("url"):
                raise _Abort(f"{n}: no traffic entry tagged {tag!r} with a url ({TAG_ROUTING}?)")
            eps[tag] = Endpoint(n, protocol(o), tag, t["url"])
        stats = {tag: smoke(ep) for tag, ep in eps.items()}
        record["smoke"][n] = {tag: s.to_dict() for tag, s in stats.items()}
        failures += [f"{n}: {r}" for r in compare(stats["latest"], stats.get("prev"), margins)]
    if failures:
        raise _Abort(f"smoke check failed at {percent}%: " + "; ".join(failures))
