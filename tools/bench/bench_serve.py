"""`make bench-serve`: the served model against the same model in-process, side by side.

1. p50 / p95 latency of one 64-frame 224 px clip: REST (binary BYTES) and gRPC vs in-process
   preprocess + forward on the same video and model (ratio).
2. Requests/s at 1, 4 and 8 concurrent clients, and server RSS before / after 300 requests,
   with the demo-sized model (16 frames, 112 px) so 300 requests take seconds, not minutes.
The server is a separate process on 127.0.0.1; clients are tritonclient (no kserve imported
here, so tritonclient.grpc can be).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from model.i3d import I3DConfig, InceptionI3d
from model.package import write_model_dir
from model.predict import Classifier
from model.video import PreprocessConfig
from sign2text.data.synth import moving_square, write_video

LABELS = [f"g{i}" for i in range(10)]
ROOT = Path(__file__).resolve().parents[2]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Served:
    def __init__(self, model_dir: Path):
        self.http, self.grpc = _port(), _port()
        cmd = [sys.executable, "-m", "model.server", "--model-dir", str(model_dir),
               "--http-port", str(self.http), "--grpc-port", str(self.grpc)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{self.http}/v2/models/sign2text/ready"
        deadline = time.monotonic() + 120
        while True:
            try:
                if OPENER.open(url, timeout=2).status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.25)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _infer(module, client, video: bytes) -> None:
    inp = module.InferInput("video", [1], "BYTES")
    arr = np.array([video], dtype=np.object_)
    if module is httpclient:
        inp.set_data_from_numpy(arr, binary_data=True)
    else:
        inp.set_data_from_numpy(arr)
    out = client.infer("sign2text", [inp], parameters={"top_k": 3})
    assert len(out.as_numpy("glosses")) == 3


def _rest_binary(port: int, video: bytes) -> None:
    """One REST request with the binary-data extension, over plain urllib (thread-safe)."""
    header = json.dumps({
        "inputs": [{"name": "video", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(video) + 4}}],
        "parameters": {"top_k": 3},
    }).encode()  # fmt: skip
    body = header + struct.pack("<I", len(video)) + video  # BYTES element: 4-byte length + data
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/sign2text/infer", data=body, method="POST",
        headers={"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    with OPENER.open(req, timeout=300) as r:
        assert r.status == 200 and "glosses" in r.read().decode()


def _model_dir(root: Path, name: str, frames: int, size: int) -> Path:
    model = InceptionI3d(I3DConfig(num_classes=len(LABELS), width=0.25))
    pre = PreprocessConfig(num_frames=frames, resize=size * 8 // 7, crop=size)
    return write_model_dir(root / name, model, pre, LABELS)


def latency(root: Path, video: Path, repeats: int = 9) -> None:
    model_dir = _model_dir(root, "m64", 64, 224)
    clf = Classifier(model_dir)
    data = video.read_bytes()
    srv = Served(model_dir)
    try:
        rest = httpclient.InferenceServerClient(f"127.0.0.1:{srv.http}", network_timeout=300)
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc}")
        runs = {
            "in-process": lambda: clf.word(video, 3),
            "REST binary": lambda: _infer(httpclient, rest, data),
            "gRPC": lambda: _infer(grpcclient, grpc, data),
        }
        for fn in runs.values():  # warm-up
            fn()
        times = {k: [] for k in runs}
        for _ in range(repeats):  # interleaved, so machine noise hits all three alike
            for k, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    finally:
        srv.close()
    base = statistics.median(times["in-process"])
    print(f"1. one 64x224x224 clip (I3D width 0.25), {repeats} interleaved runs each")
    for k, v in times.items():
        p50, p95 = statistics.median(v), float(np.percentile(v, 95))
        print(f"   {k:<12} p50 {p50 * 1000:8.1f} ms  p95 {p95 * 1000:8.1f} ms  "
              f"p50 / in-process {p50 / base:5.2f}x")  # fmt: skip


def throughput(root: Path, video: Path, total: int = 300) -> None:
    model_dir = _model_dir(root, "m16", 16, 112)
    data = video.read_bytes()
    srv = Served(model_dir)
    try:
        _rest_binary(srv.http, data)
        rss0 = _rss_mb(srv.proc.pid)
        print("2. demo-sized model (16x112x112), REST binary")
        done = errors = 0
        for conc in (1, 4, 8):
            n = total // 3

            def one(_: int) -> bool:
                try:
                    _rest_binary(srv.http, data)
                    return True
                except Exception:  # counted, not raised: the figure is the error count
                    return False

            t = time.perf_counter()
            with ThreadPoolExecutor(conc) as ex:
                ok = list(ex.map(one, range(n)))
            dt = time.perf_counter() - t
            done += n
            errors += ok.count(False)
            print(f"   {conc} concurrent: {n / dt:6.1f} req/s ({n} requests)")
        rss1 = _rss_mb(srv.proc.pid)
        print(f"   server RSS {rss0:.0f} MB -> {rss1:.0f} MB after {done} requests "
              f"({(rss1 / rss0 - 1) * 100:+.1f}%), errors: {errors}")  # fmt: skip
    finally:
        srv.close()


def main() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        video = write_video(root / "clip.mp4", moving_square(75, 240, 320))  # 3 s at 25 fps
        latency(root, video)
        throughput(root, video)


if __name__ == "__main__":
    main()
