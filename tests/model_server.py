"""The real KServe ModelServer (`python -m model.serving.server`) for tests: a small input-sensitive
model directory and the server in a subprocess on free 127.0.0.1 ports.

Imports neither kserve nor tritonclient, so any test module (and client subprocess) may use it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from components.release.local_deploy import free_port, stop_process
from model.network.bundle import write_model_dir
from model.network.i3d import I3DConfig, InceptionI3d
from model.video.clip import PreprocessConfig

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["hello", "thanks", "book", "drink", "computer", "before", "go"]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
ENV = os.environ | {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def input_sensitive(model: InceptionI3d, seed: int = 0) -> InceptionI3d:
    """Random weights scaled like a trained net's (as conftest.published_state_dict does):
    a freshly initialised I3D gives the same probabilities for every input, which would make
    comparisons between inputs vacuous."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, v in model.state_dict().items():
        if not v.is_floating_point():
            state[key] = v
        elif key.endswith(".weight") and v.dim() == 5:
            state[key] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.rand(v.shape, generator=g)
        else:
            state[key] = 0.01 * torch.randn(v.shape, generator=g)
    model.load_state_dict(state)
    return model


def small_model_dir(path: Path) -> Path:
    """A quarter-width I3D over LABELS, 8 frames at 56 px: fast enough for CPU tests."""
    model = input_sensitive(InceptionI3d(I3DConfig(num_classes=len(LABELS), width=0.25)))
    pre = PreprocessConfig(num_frames=8, resize=64, crop=56)
    return write_model_dir(path, model, pre, LABELS)


@dataclass
class Server:
    proc: subprocess.Popen
    http: int
    grpc: int
    log: Path

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with OPENER.open(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def alive(self) -> bool:
        return self.proc.poll() is None and self.get("/v2/models/sign2text/ready")[0] == 200


@contextlib.contextmanager
def serve(model_dir: Path, log: Path, *extra: str, env: dict | None = None) -> Iterator[Server]:
    """The server on free ports, ready to answer; stopped (and waited for) on exit. `env`:
    variables to add to the server's environment."""
    http, grpc = free_port(), free_port()
    cmd = [sys.executable, "-m", "model.serving.server", "--model-dir", str(model_dir)]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=ENV | (env or {}), stdout=out, stderr=subprocess.STDOUT
        )
    srv = Server(proc, http, grpc, log)
    try:
        deadline = time.monotonic() + 60
        while not srv.alive():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield srv
    finally:
        stop_process(proc)
