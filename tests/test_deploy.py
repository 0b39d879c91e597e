"""`deploy`: the canary rollout state machine against the FAKE Kubernetes API + KServe
controller (tests/fake_kube.py; no cluster exists here), publishing to the real S3 server.

Every create and patch the rollout sends is validated against the KServe CRD schema by the fake.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.infra.kube import KubeError
from components.infra.objstore import fetch_dir, is_published
from components.release.deploy import RolloutFailed, deploy
from components.release.isvc import ANN_COMMIT, ANN_DATA, ANN_MODEL, ANN_ROLLED_BACK
from components.release.smoke import SmokeStats
from tests.crd_schema import validate, validate_patch
from tests.fake_kube import Crash, FakeKServe
from tests.s3 import s3_env_fixture, s3_server_fixture  # noqa: F401

pytestmark = pytest.mark.slow
NS = "sign2text"
NAMES = ("sign2text", "sign2text-grpc")


class Clock:
    """Injectable time: sleep() advances now(), so polls, soaks and timeouts take no time."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class Checker:
    """A smoke check that asks the fake which revision the tag URL reaches: revisions serving
    a URI in `bad` fail every request, those in `slow` answer 3x slower."""

    def __init__(self, kube: FakeKServe, bad=(), slow=()) -> None:
        self.kube, self.bad, self.slow, self.calls = kube, set(bad), set(slow), []

    def __call__(self, ep) -> SmokeStats:
        uri = self.kube.revision_at(ep.url).storage_uri
        self.calls.append((ep.service, ep.protocol, ep.tag, uri))
        return SmokeStats(4, 4 if uri in self.bad else 0, 0.3 if uri in self.slow else 0.1)


@pytest.fixture
def env(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    kube, clock = FakeKServe(ready_after=2), Clock()

    def package(version: str) -> tuple[Path, str]:
        d = tmp_path / version
        d.mkdir()
        (d / "model.pt").write_bytes(version.encode() * 1000)
        (d / "config.json").write_text("{}")
        lineage = {"data_md5": f"md5-{version}", "git_commit": f"commit-{version}"}
        (d / "lineage.json").write_text(json.dumps(lineage))
        return d, f"s3://{bucket}/models/{version}/"

    def run(version: str, checker=None, **kw):
        d, uri = (
            package(version)
            if not (tmp_path / version).exists()
            else (tmp_path / version, f"s3://{bucket}/models/{version}/")
        )
        kw = {"percents": (10, 50), "soak_s": 30, "timeout_s": 60, "poll_s": 5, **kw}
        return deploy(
            d,
            model_uri=uri,
            namespace=NS,
            smoke=checker or Checker(kube),
            api=kube,
            clock=clock.now,
            sleep=clock.sleep,
            log=lambda _: None,
            **kw,
        )

    return kube, clock, run, bucket, tmp_path


def _uri(kube, name):
    return kube.objects[(NS, name)]["spec"]["predictor"]["model"]["storageUri"]


def _pred_status(kube, name):
    return kube.objects[(NS, name)]["status"]["components"]["predictor"]


def _patches(kube):
    return [
        (n, b["spec"]["predictor"].get("canaryTrafficPercent", "-"))
        for v, n, b in kube.writes
        if v == "patch"
    ]


def test_first_deploy_creates_both_services_at_100(env):
    kube, _, run, bucket, tmp = env
    result = run("v1")
    assert result["outcome"] == "created"
    assert is_published(f"s3://{bucket}/models/v1/")
    assert (fetch_dir(f"s3://{bucket}/models/v1/", tmp / "dl") / "model.pt").read_bytes() == (
        b"v1" * 1000
    )
    assert [(v, n) for v, n, _ in kube.writes] == [
        ("create", "sign2text"),
        ("create", "sign2text-grpc"),
    ]
    for name in NAMES:
        obj = kube.objects[(NS, name)]
        assert obj["metadata"]["namespace"] == NS
        assert _uri(kube, name) == f"s3://{bucket}/models/v1/"
        ann = obj["metadata"]["annotations"]
        assert (ann[ANN_MODEL], ann[ANN_DATA], ann[ANN_COMMIT]) == ("v1", "md5-v1", "commit-v1")
        assert ann["serving.kserve.io/enable-tag-routing"] == "true"
        ps = _pred_status(kube, name)
        first = f"{name}-predictor-00001"
        assert ps["latestRolledoutRevision"] == ps["latestReadyRevision"] == first
    ports = kube.objects[(NS, "sign2text-grpc")]["spec"]["predictor"]["model"]["ports"]
    assert ports[0]["name"] == "h2c"
    assert _calls(result) == [("sign2text", "latest"), ("sign2text-grpc", "latest")]
    # Running it again changes nothing.
    n = len(kube.writes)
    assert run("v1")["outcome"] == "unchanged"
    assert len(kube.writes) == n


def _calls(result):
    return [(n, t) for s in result["steps"] for n, tags in s["smoke"].items() for t in tags]


def test_canary_ramps_soaks_and_promotes(env):
    kube, clock, run, bucket, _ = env
    run("v1")
    checker = Checker(kube)
    t0 = clock.t
    result = run("v2", checker)
    assert result["outcome"] == "promoted"
    assert _patches(kube) == [
        ("sign2text", 10),
        ("sign2text-grpc", 10),
        ("sign2text", 50),
        ("sign2text-grpc", 50),
        ("sign2text", None),
        ("sign2text-grpc", None),
    ]
    # Promote is a merge patch removing the field.
    promote = [b for v, _, b in kube.writes if v == "patch"][-1]
    assert promote == {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    assert clock.t - t0 >= 2 * 30  # soaked at each step
    v1, v2 = f"s3://{bucket}/models/v1/", f"s3://{bucket}/models/v2/"
    # At each step, each service's canary (v2) and prev (v1) were checked, on its protocol.
    assert checker.calls == [
        (n, p, tag, v2 if tag == "latest" else v1)
        for _ in (10, 50)
        for n, p in (("sign2text", "rest"), ("sign2text-grpc", "grpc"))
        for tag in ("latest", "prev")
    ]
    for name in NAMES:
        obj = kube.objects[(NS, name)]
        assert _uri(kube, name) == v2
        assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
        assert obj["metadata"]["annotations"][ANN_MODEL] == "v2"
        ps = _pred_status(kube, name)
        first = f"{name}-predictor-00001"
        assert ps["latestRolledoutRevision"] == ps["latestReadyRevision"] != first
        assert ps["traffic"][0]["percent"] == 100


def _assert_rolled_back(kube, bucket, version="v2"):
    for name in NAMES:
        obj = kube.objects[(NS, name)]
        assert _uri(kube, name) == f"s3://{bucket}/models/v1/"
        assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 0
        ann = obj["metadata"]["annotations"]
        assert (ann[ANN_MODEL], ann[ANN_COMMIT]) == ("v1", "commit-v1")
        assert ann[ANN_ROLLED_BACK] == f"s3://{bucket}/models/{version}/"
        kube.get(NS, name)
        prev = [t for t in _pred_status(kube, name)["traffic"] if t.get("tag") == "prev"]
        assert prev and prev[0]["percent"] == 100
        assert prev[0]["revisionName"] == f"{name}-predictor-00001"


def test_canary_never_ready_rolls_back(env):
    kube, _, run, bucket, _ = env
    run("v1")
    kube.never_ready.add(f"s3://{bucket}/models/v2/")
    with pytest.raises(RolloutFailed, match="timed out.*RevisionFailed") as ei:
        run("v2")
    assert ei.value.result["outcome"] == "rolled-back"
    assert _patches(kube)[-2:] == [("sign2text", 0), ("sign2text-grpc", 0)]
    _assert_rolled_back(kube, bucket)


@pytest.mark.parametrize(
    ("bad", "slow", "reason"),
    [("v2", None, "error rate 100.0% vs 0.0%"), (None, "v2", "p95 latency 300 ms vs 100 ms")],
)
def test_failed_smoke_check_rolls_back(env, bad, slow, reason):
    kube, _, run, bucket, _ = env
    run("v1")
    uri = lambda v: {f"s3://{bucket}/models/{v}/"} if v else set()  # noqa: E731
    with pytest.raises(RolloutFailed, match=reason):
        run("v2", Checker(kube, bad=uri(bad), slow=uri(slow)))
    assert [p for _, p in _patches(kube)] == [10, 10, 0, 0]  # failed at the first step
    _assert_rolled_back(kube, bucket)
    # A later deploy (fixed model) starts a fresh canary from the rolled-back state.
    assert run("v3")["outcome"] == "promoted"
    assert ANN_ROLLED_BACK not in kube.objects[(NS, "sign2text")]["metadata"]["annotations"]


class Raising(Checker):
    """A smoke check that raises `error` on its `at`-th call (4 calls a step: 2 services x the
    latest and prev tags), as one that cannot run would (no client library, a bug)."""

    def __init__(self, kube: FakeKServe, error: Exception, at: int) -> None:
        super().__init__(kube)
        self.error, self.at = error, at

    def __call__(self, ep) -> SmokeStats:
        if len(self.calls) + 1 == self.at:
            raise self.error
        return super().__call__(ep)


def _refuse(verb: str, name: str, percent: int | None, error: Exception):
    """For FakeKServe.fail_write: refuse the patch of `name` that sets `percent`."""

    def fail(v, n, body):
        pct = body["spec"]["predictor"].get("canaryTrafficPercent", "-")
        return error if (v, n, pct) == (verb, name, percent) else None

    return fail


@pytest.mark.parametrize(
    "error",
    [ModuleNotFoundError("No module named 'tritonclient'"), RuntimeError("smoke check bug")],
    ids=lambda e: type(e).__name__,
)
def test_smoke_check_error_mid_canary_rolls_back(env, error):
    kube, _, run, bucket, _ = env
    run("v1")
    with pytest.raises(RolloutFailed) as ei:
        run("v2", Raising(kube, error, at=5))  # the first check at 50%
    assert str(ei.value) == f"{type(error).__name__}: {error}"
    assert ei.value.__cause__ is error  # the traceback shows where it came from
    assert ei.value.result["outcome"] == "rolled-back"
    assert [p for _, p in _patches(kube)] == [10, 10, 50, 50, 0, 0]
    _assert_rolled_back(kube, bucket)


def test_api_error_on_a_canary_patch_rolls_back(env):
    kube, _, run, bucket, _ = env
    run("v1")
    refused = KubeError("patch sign2text-grpc: HTTP 500: etcdserver: request timed out")
    kube.fail_write = _refuse("patch", "sign2text-grpc", 50, refused)
    with pytest.raises(RolloutFailed, match="^KubeError: patch sign2text-grpc: HTTP 500"):
        run("v2")
    assert _patches(kube)[-3:] == [("sign2text", 50), ("sign2text", 0), ("sign2text-grpc", 0)]
    _assert_rolled_back(kube, bucket)


def test_api_error_starting_the_canary_rolls_back_what_started(env):
    kube, _, run, bucket, _ = env
    run("v1")
    kube.fail_write = _refuse("patch", "sign2text-grpc", 10, KubeError("HTTP 403: forbidden"))
    with pytest.raises(RolloutFailed, match="KubeError: HTTP 403"):
        run("v2")
    assert _patches(kube)[-2:] == [("sign2text", 10), ("sign2text", 0)]
    ann = kube.objects[(NS, "sign2text")]["metadata"]["annotations"]
    assert ann[ANN_ROLLED_BACK] == f"s3://{bucket}/models/v2/"
    untouched = kube.objects[(NS, "sign2text-grpc")]
    assert _uri(kube, "sign2text-grpc") == f"s3://{bucket}/models/v1/"
    assert "canaryTrafficPercent" not in untouched["spec"]["predictor"]


def test_failed_rollback_names_both_errors_and_a_rerun_goes_on(env):
    kube, _, run, bucket, _ = env
    run("v1")
    down = KubeError("cannot reach the API server (MaxRetryError)")
    kube.fail_write = _refuse("patch", "sign2text", 0, down)
    with pytest.raises(RolloutFailed) as ei:
        run("v2", Raising(kube, RuntimeError("smoke check bug"), at=1))
    assert str(ei.value) == (
        "RuntimeError: smoke check bug; rolling back failed too: KubeError: cannot reach the API "
        "server (MaxRetryError)"
    )
    assert ei.value.result["outcome"] == "rollback-failed"
    # Left at the canary's 10%: a later run (API and check working) goes on from there.
    kube.fail_write = None
    assert run("v2")["outcome"] == "promoted"
    assert _uri(kube, "sign2text") == _uri(kube, "sign2text-grpc") == f"s3://{bucket}/models/v2/"


def test_api_error_while_promoting_is_raised_and_a_rerun_finishes(env):
    """Promoted services cannot go back through the canary: no rollback, the next run promotes."""
    kube, _, run, bucket, _ = env
    run("v1")
    refused = KubeError("patch sign2text-grpc: HTTP 500")
    kube.fail_write = _refuse("patch", "sign2text-grpc", None, refused)
    with pytest.raises(KubeError) as ei:
        run("v2")
    assert ei.value is refused
    assert 0 not in [p for _, p in _patches(kube)]
    kube.fail_write = None
    assert run("v2")["outcome"] == "promoted"
    for name in NAMES:
        assert _uri(kube, name) == f"s3://{bucket}/models/v2/"
        assert "canaryTrafficPercent" not in kube.objects[(NS, name)]["spec"]["predictor"]


def test_promotion_that_never_settles_is_not_rolled_back_and_a_rerun_confirms_it(env):
    """Promoted, then the controller stops reporting: a rollback patch then would put v1 on a
    new revision at 0% and leave v2 at 100%, so the deploy fails without one."""
    kube, _, run, bucket, _ = env
    run("v1")

    def stall_on_promotion(verb, name, body):
        if verb == "patch" and "canaryTrafficPercent" in body["spec"]["predictor"]:
            if body["spec"]["predictor"]["canaryTrafficPercent"] is None:
                kube.stuck.add(name)

    kube.fail_write = stall_on_promotion
    with pytest.raises(RolloutFailed, match="timed out.*promoted revision at 100%.*stay so") as ei:
        run("v2")
    assert ei.value.result["outcome"] == "promotion-unconfirmed"
    assert _patches(kube)[-2:] == [("sign2text", None), ("sign2text-grpc", None)]
    kube.fail_write, kube.stuck = None, set()
    assert run("v2")["outcome"] == "unchanged"
    for name in NAMES:
        assert _uri(kube, name) == f"s3://{bucket}/models/v2/"
        assert _pred_status(kube, name)["traffic"][0]["percent"] == 100
    assert 0 not in [p for _, p in _patches(kube)]


@pytest.mark.parametrize("crash_at", [1, 3, 5])
def test_crash_mid_rollout_then_resume_promotes(env, crash_at):
    """Killed after `crash_at` of the 6 canary writes (start x2, 50% x2, promote x2)."""
    kube, _, run, bucket, _ = env
    run("v1")
    kube.crash_after_writes = len(kube.writes) + crash_at
    with pytest.raises(Crash):
        run("v2")
    kube.crash_after_writes = None
    assert run("v2")["outcome"] == "promoted"
    for name in NAMES:
        assert _uri(kube, name) == f"s3://{bucket}/models/v2/"
        assert "canaryTrafficPercent" not in kube.objects[(NS, name)]["spec"]["predictor"]
    # Never went back to a lower percent than it had reached.
    pcts = [p for _, p in _patches(kube)]
    assert 0 not in pcts


def test_crash_mid_rollback_then_rerun_finishes_the_rollback(env):
    kube, _, run, bucket, _ = env
    run("v1")
    kube.never_ready.add(f"s3://{bucket}/models/v2/")
    kube.crash_after_writes = len(kube.writes) + 3  # start x2, then the first rollback patch
    with pytest.raises(Crash):
        run("v2")
    kube.crash_after_writes = None
    with pytest.raises(RolloutFailed, match="was being rolled back"):
        run("v2")
    _assert_rolled_back(kube, bucket)


def test_dry_run_sends_nothing_and_shows_valid_requests(env, capsys):
    kube, _, run, bucket, _ = env
    first = run("v1", dry_run=True)
    assert kube.writes == [] and not is_published(f"s3://{bucket}/models/v1/")
    assert [(a["verb"], a["name"]) for a in first["actions"]] == [("create", n) for n in NAMES]
    for a in first["actions"]:
        validate(a["body"])
    run("v1")
    n = len(kube.writes)
    plan = run("v2", dry_run=True)
    assert len(kube.writes) == n
    sent = [
        (a["name"], a["body"]["spec"]["predictor"]["canaryTrafficPercent"]) for a in plan["actions"]
    ]
    assert sent == [(nm, p) for p in (10, 50, None) for nm in NAMES]
    for a in plan["actions"] + plan["on_failure"]:
        validate_patch("InferenceService", "serving.kserve.io/v1beta1", a["body"])
    assert all(
        a["body"]["spec"]["predictor"]["model"]["storageUri"].endswith("/v1/")
        for a in plan["on_failure"]
    )


def test_bad_arguments_are_clear_errors(env):
    _, _, run, _, tmp = env
    with pytest.raises(ValueError, match="canary percents"):
        run("v1", percents=(50, 10))
    with pytest.raises(ValueError, match="canary percents"):
        run("v1", percents=(0, 100))
    (tmp / "nolineage").mkdir()
    with pytest.raises(FileNotFoundError, match="lineage.json"):
        deploy(tmp / "nolineage", model_uri="s3://b/m/v9/", smoke=Checker(None), api=FakeKServe())
