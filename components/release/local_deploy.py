"""The deploy step's local stand-in (`sign2text pipeline run-local`): no cluster, no canary.

It serves the published model the way the cluster would (`sign2text serve`, the real KServe
ModelServer, downloading the model from its s3:// URI), waits for the model to be ready, sends a
real video over REST and gRPC with the v2 client in separate processes (kserve and
tritonclient.grpc cannot share one), checks both answers agree, and stops the server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 120.0
# Loopback only: a proxy configured in the environment must not see these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class LocalDeployError(RuntimeError):
    """The local server did not come up or answered the smoke test wrongly."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaped (no zombie, port freed)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ready(port: int) -> bool:
    try:
        with _OPENER.open(f"http://{HOST}:{port}/v2/models/sign2text/ready", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _predict(video: Path, where: list[str]) -> dict:
    cmd = [sys.executable, "-m", "sign2text.cli", "predict", str(video), *where, "--json"]
    cmd += ["--top-k", "1"]  # any model has at least one class
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, env=os.environ | _NO_PROXY
    )
    if r.returncode != 0:
        raise LocalDeployError(f"smoke test {' '.join(where)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def serve_and_smoke_test(model_uri: str, video: Path) -> dict:
    """Start a local server for `model_uri`, smoke-test it over REST and gRPC, stop it."""
    http, grpc = free_port(), free_port()
    cmd = [sys.executable, "-m", "sign2text.cli", "serve", "--model-dir", model_uri]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | _NO_PROXY
        )
        try:
            t0 = time.monotonic()
            while not _ready(http):
                if proc.poll() is not None or time.monotonic() - t0 > READY_TIMEOUT_S:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise LocalDeployError(f"local server for {model_uri} never got ready:\n{tail}")
                time.sleep(0.5)
            ready_s = time.monotonic() - t0
            rest = _predict(video, ["--url", f"http://{HOST}:{http}"])
            over_grpc = _predict(video, ["--grpc", f"{HOST}:{grpc}"])
        finally:
            stop_process(proc)
    if not rest["glosses"] or rest["glosses"] != over_grpc["glosses"]:
        raise LocalDeployError(f"REST and gRPC disagree: {rest} vs {over_grpc}")
    return {"ready_s": round(ready_s, 1), "video": video.name, "rest": rest, "grpc": over_grpc}
