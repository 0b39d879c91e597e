"""Smoke checks of one revision of an InferenceService, and the canary-vs-previous comparison.

KServe tag routing (annotation `serving.kserve.io/enable-tag-routing: "true"`) gives each
revision of a canary split its own address: `status.components.predictor.traffic[]` entries
tagged `latest` (the canary) and `prev` (the last rolled-out revision) carry a `url`. A check
sends requests to one such URL and reports what it saw; `compare` decides whether the canary
is acceptable next to the previous revision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Endpoint:
    service: str  # InferenceService name
    protocol: str  # "rest" | "grpc"
    tag: str  # "latest" (canary) | "prev"
    url: str  # the tag's URL from the InferenceService status


@dataclass(frozen=True)
class SmokeStats:
    requests: int
    errors: int
    p95_s: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate}


SmokeCheck = Callable[[Endpoint], SmokeStats]


@dataclass(frozen=True)
class Margins:
    """How much worse than the previous revision a canary may be."""

    max_error_rate_increase: float = 0.0  # absolute, e.g. 0.05 = 5 percentage points
    max_p95_increase: float = 0.5  # relative, e.g. 0.5 = p95 up to 1.5x the previous one


def p95(latencies: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (no interpolation: a value that was really observed)."""
    if not latencies:
        return math.inf
    ordered = sorted(latencies)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def compare(canary: SmokeStats, prev: SmokeStats | None, margins: Margins) -> list[str]:
    """Why the canary fails (empty when it passes). Without `prev` (first deploy), every
    request must succeed."""
    if canary.requests == 0:
        return ["no smoke requests were made"]
    if prev is None:
        return [f"{canary.errors}/{canary.requests} smoke requests failed"] if canary.errors else []
    reasons = []
    if canary.error_rate > prev.error_rate + margins.max_error_rate_increase + 1e-12:
        reasons.append(
            f"error rate {canary.error_rate:.1%} vs {prev.error_rate:.1%} on prev "
            f"(allowed +{margins.max_error_rate_increase:.1%})"
        )
    elif canary.errors == canary.requests:  # prev failed as often: the check verified nothing
        reasons.append(f"no smoke request succeeded ({canary.requests} tried, prev failed too)")
    if canary.p95_s > prev.p95_s * (1 + margins.max_p95_increase):
        reasons.append(
            f"p95 latency {canary.p95_s * 1000:.0f} ms vs {prev.p95_s * 1000:.0f} ms on prev "
            f"(allowed +{margins.max_p95_increase:.0%})"
        )
    return reasons


class VideoSmoke:
    """The real check: sample videos through the v2 client (`components.infra.v2client`), REST or
    gRPC.

    A request counts as an error when the server refuses it, cannot be reached, or answers
    without any gloss. gRPC goes to the tag URL's host on its port (80 for http, 443 for https).
    """

    def __init__(self, videos: Sequence[str | Path], *, rounds: int = 2, timeout_s: float = 60.0):
        self.videos = [Path(v) for v in videos]
        missing = [str(v) for v in self.videos if not v.is_file()]
        if not self.videos or missing:
            raise FileNotFoundError(f"smoke videos not found: {missing or 'none given'}")
        self.rounds, self.timeout_s = rounds, timeout_s

    def __call__(self, ep: Endpoint) -> SmokeStats:
        from components.infra.v2client import ClientError, predict

        where: dict[str, str] = {"url": ep.url}
        if ep.protocol == "grpc":
            u = urlsplit(ep.url)
            where = {"grpc": f"{u.hostname}:{u.port or (443 if u.scheme == 'https' else 80)}"}

        def answered(video: Path) -> bool:
            try:
                return bool(predict(video, top_k=1, timeout=self.timeout_s, **where)["glosses"])
            except ClientError:
                return False

        # One untimed request first: the first check in a process (the canary's) would
        # otherwise alone carry the client library's import and the endpoint's first-request
        # costs, and fail the p95 comparison against an equally fast prev.
        answered(self.videos[0])
        latencies, errors = [], 0
        for _ in range(self.rounds):
            for video in self.videos:
                t0 = time.perf_counter()
                ok = answered(video)
                latencies.append(time.perf_counter() - t0)
                errors += not ok
        return SmokeStats(len(latencies), errors, p95(latencies))
