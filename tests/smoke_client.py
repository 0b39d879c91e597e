"""The canary smoke step of `deploy`, run for tests/test_smoke.py in its own process (kserve,
which the test process may have imported, and tritonclient.grpc cannot share one):

    python tests/smoke_client.py --canary-rest URL --canary-grpc URL --prev-rest URL
        --prev-grpc URL --video FILE [--video FILE ...] [--rounds N] [--timeout-s S]

The URLs stand where KServe puts the tag URLs (`status.components.predictor.traffic[].url`)
of InferenceServices built from the real templates in manifests/base, so deploy's own code
(`_smoke_step`) picks the protocol, builds the Endpoints, calls VideoSmoke and compares.
Prints one JSON object: the step record deploy keeps, the failure reason (or null) and the
wall time of the whole step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.release import deploy as D  # noqa: E402
from components.release.smoke import Margins, VideoSmoke  # noqa: E402


def with_tag_urls(template: dict, latest: str, prev: str) -> dict:
    """The InferenceService as the cluster reports it mid-canary (10% on `latest`)."""
    traffic = [
        {"tag": "latest", "latestRevision": True, "percent": 10, "url": latest},
        {"tag": "prev", "latestRevision": False, "percent": 90, "url": prev},
    ]
    return template | {"status": {"components": {"predictor": {"traffic": traffic}}}}


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("canary-rest", "canary-grpc", "prev-rest", "prev-grpc"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--video", action="append", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = p.parse_args()
    tpl = D.load_templates(D.DEFAULT_TEMPLATES)
    objs = {
        "sign2text": with_tag_urls(tpl["sign2text"], args.canary_rest, args.prev_rest),
        "sign2text-grpc": with_tag_urls(tpl["sign2text-grpc"], args.canary_grpc, args.prev_grpc),
    }
    smoke = VideoSmoke(args.video, rounds=args.rounds, timeout_s=args.timeout_s)
    result: dict = {"steps": []}
    t0 = time.perf_counter()
    try:
        D._smoke_step(result, smoke, Margins(), objs, 10, prev=True)
        reason = None
    except D._Abort as e:
        reason = str(e)
    wall_s = time.perf_counter() - t0
    json.dump({"step": result["steps"][0], "failed": reason, "wall_s": wall_s}, sys.stdout)


if __name__ == "__main__":
    main()
