"""Hostile input against the real server (`python -m model.serving.server` in its own process, and
the ONNX serving image run as the cluster runs it, under the predictor's memory limit), watched
by a memory watchdog: small crafted files and requests that would cost a naive server
gigabytes or minutes are answered 400 / 408 / 413 / 503 as docs/serving.md documents, the server's
memory (with its decoder process) stays under the bound, and a good request is answered right
after each attack. The files are generated here (tests/bombs.py); nothing is downloaded."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests import containers
from tests.bombs import jpeg, mjpeg_avi, small_jpeg
from tests.conftest import moving_square, write_video
from tests.model_server import ROOT, serve

MIB = 1 << 20
FIXTURE = ROOT / "tests" / "fixtures" / "sentence_model"  # word and sentence mode
# server + decoder, whatever the input (docs/serving.md, "Limits: what one request may cost")
PEAK_BOUND = 1536 * MIB
KILL_AT = 4096 * MIB  # the watchdog stops a runaway server before it hurts the machine
GOOD_WITHIN_S = 10.0  # a good request right after an attack is answered within this
OPTIONS = [
    "--max-video-mb",
    "4",
    "--max-frames",
    "300",
    "--decoder-memory-mb",
    "192",
    "--client-timeout-s",
    "2",
    "--time-budget-s",
    "30",
    "--max-in-flight",
    "4",
]
INFER = "/v2/models/sign2text/infer"


def _rss(pid: int) -> int:
    """Resident bytes of pid and every process below it (the decoder children). A child whose
    command line is still its parent's has not exec'd yet: subprocess vforks, so until exec it
    runs in the parent's memory and shows the parent's whole RSS as its own. Counting it would
    double the server's memory for that instant (seen once on a loaded machine: 1786 MiB)."""
    total, todo = 0, [(pid, None)]
    while todo:
        p, parent_cmdline = todo.pop()
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            if cmdline == parent_cmdline:
                continue
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [(int(c), cmdline) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


class Watchdog(threading.Thread):
    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc, self.peak, self.killed, self.done = proc, 0, False, threading.Event()

    def run(self):
        while not self.done.wait(0.01) and self.proc.poll() is None:
            self.peak = max(self.peak, _rss(self.proc.pid))
            if self.peak > KILL_AT:
                self.killed = True
                self.proc.kill()


@pytest.fixture(
    scope="module",
    params=["process", "onnx-image", pytest.param("torch-image", marks=pytest.mark.heavy)],
)
def server(request, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    if request.param == "process":
        running = serve(FIXTURE, log, *OPTIONS)
    elif request.param == "torch-image":
        tag, memory = containers.image("serving"), containers.predictor_memory()
        running = containers.serve_image(tag, FIXTURE, log, *OPTIONS, memory=memory)
    else:  # the image has no torch: the fixture model with its checked model.onnx
        tag, model = (
            containers.image("serving-onnx"),
            request.getfixturevalue("onnx_sentence_model"),
        )
        memory = containers.predictor_memory()
        running = containers.serve_image(tag, model, log, *OPTIONS, memory=memory)
    with running as srv:
        dog = Watchdog(srv.proc)
        dog.start()
        srv.dog = dog
        yield srv
        dog.done.set()
        oom = request.param != "process" and srv.proc.oom_killed()
    print(
        f"\nhostile suite ({request.param}): peak RSS of server + decoder {dog.peak / MIB:.0f} MiB"
    )
    assert not dog.killed, f"the server passed {KILL_AT >> 20} MiB"
    assert not oom, "the container was killed for memory"


def _binary_request(video: bytes, **params) -> tuple[bytes, dict]:
    spec = {"name": "video", "shape": [1], "datatype": "BYTES"}
    spec["parameters"] = {"binary_data_size": len(video) + 4}
    header = json.dumps({"inputs": [spec], "parameters": params}).encode()
    body = header + len(video).to_bytes(4, "little") + video
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return body, headers


def _post(conn: http.client.HTTPConnection, body: bytes, headers: dict) -> tuple[int, dict]:
    conn.request("POST", INFER, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if r.headers.get("Retry-After"):
        return r.status, {"retry_after": r.headers["Retry-After"], **_json(data)}
    return r.status, _json(data)


def _json(data: bytes) -> dict:
    try:
        return json.loads(data[: data.index(b"}") + 1] if b"}" in data else data) or {}
    except ValueError:
        return {"raw": data[:200]}


def _infer(server, video: bytes, **params) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
    try:
        return _post(conn, *_binary_request(video, **params))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def good_video(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "good.mp4"
    return write_video(path, moving_square(60)).read_bytes()


def _good_answered(server, good_video):
    start = time.monotonic()
    status, body = _infer(server, good_video, top_k=3)
    took = time.monotonic() - start
    assert status == 200, body
    assert took < GOOD_WITHIN_S, f"a good request took {took:.1f} s after the attack"
    assert server.dog.peak < PEAK_BOUND, f"peak {server.dog.peak >> 20} MiB"


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _webm(n: int = 60) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.webm"
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), 25, (64, 64))
        for i in range(n):
            w.write(np.full((64, 64, 3), (i * 4) % 256, np.uint8))
        w.release()
        return path.read_bytes()


def _lying_avi() -> bytes:
    """The header says 64 x 64; two frames are real 12000 x 12000 JPEGs (1.7 MB each)."""
    big = cv2.imencode(".jpg", np.zeros((12000, 12000), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 5])
    small = small_jpeg(64, 64)
    return mjpeg_avi([small] * 4 + [big[1].tobytes()] * 2 + [small] * 4, 64, 64)


BOMBS = {
    # name: (file, phrase of the 400)
    "8000x8000 frames in 3 KB": (lambda: mjpeg_avi([jpeg(8000, 8000)] * 5, 8000, 8000), "pixels"),
    "1x4000 frames": (lambda: mjpeg_avi([small_jpeg(1, 4000)] * 5, 1, 4000), "aspect ratio"),
    "65000x65000 claimed by a JPEG": (
        lambda: mjpeg_avi([jpeg(65000, 65000)] * 3, 65000, 65000),
        "no decodable frames",  # FFmpeg's probe gives up on it: no size to check
    ),
    "a header that lies about the frame size": (_lying_avi, "decod"),
    "truncated AVI": (
        lambda: _truncated(mjpeg_avi([small_jpeg(64, 64, v) for v in range(60)], 64, 64)),
        "cut off",
    ),
    "truncated WebM": (lambda: _truncated(_webm()), "cut off"),
}


@pytest.mark.parametrize("mode", ["word", "sentence"])
@pytest.mark.parametrize("name", list(BOMBS))
def test_video_bombs_are_refused_and_memory_stays_bounded(server, good_video, name, mode):
    make, phrase = BOMBS[name]
    status, body = _infer(server, make(), mode=mode)
    assert status == 400, (name, status, body)
    assert phrase in body.get("error", ""), (name, body)
    _good_answered(server, good_video)


def test_sentence_cost_is_capped_by_the_servers_limits(server, good_video, tmp_path):
    video = write_video(tmp_path / "long.mp4", moving_square(200, 60, 80)).read_bytes()
    # the longest video the server takes (300 frames) at the default stride (2): 151 windows
    status, body = _infer(server, video, mode="sentence", window=200, stride=1)
    assert status == 400 and "200 windows" in body["error"] and "limit is 151" in body["error"], (
        body
    )
    status, body = _infer(server, video, mode="sentence", window=200, stride=2)
    assert status == 200, body
    _good_answered(server, good_video)


def test_full_resolution_sentence_video_is_held_at_the_models_size(server, good_video, tmp_path):
    """Frames are resized as they decode: 240 frames of 1280 x 720 are held at 128 x 228."""
    pictures = []
    for k in range(10):  # a block moving across a flat 720p frame; JPEG keeps it small
        f = np.full((720, 1280, 3), 40, np.uint8)
        f[200:500, 100 * k : 100 * k + 300] = 220
        pictures.append(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 30])[1].tobytes())
    path = tmp_path / "hd.avi"
    path.write_bytes(mjpeg_avi([pictures[i % 10] for i in range(240)], 1280, 720))
    assert path.stat().st_size < 4 * MIB
    status, body = _infer(server, path.read_bytes(), mode="sentence")
    assert status == 200, body
    _good_answered(server, good_video)


def _raw(server, data: bytes, wait_s: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", server.http), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
        return out


def test_body_limit_is_enforced_before_and_while_reading(server, good_video):
    # a declared 1 TB body: refused from its header, nothing read
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n\r\n".encode()
    assert _raw(server, head).startswith(b"HTTP/1.1 413")
    # a chunked body (no length given) is counted as it arrives: 12 MiB > 2 x 4 MiB + 1 MiB
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    chunk = b"%x\r\n" % MIB + b"\0" * MIB + b"\r\n"
    assert _raw(server, head + chunk * 12 + b"0\r\n\r\n").startswith(b"HTTP/1.1 413")
    _good_answered(server, good_video)


MALFORMED = [
    {"inputs": [{"name": "video", "shape": ["x"], "datatype": "BYTES"}]},
    {"inputs": [{"name": ["video"], "shape": [1], "datatype": "BYTES"}]},
    {"id": 5, "inputs": [{"name": "video", "shape": [1], "datatype": "BYTES"}]},
    {
        "inputs": [
            {
                "name": "video",
                "shape": [30_000_000],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 4},
            }
        ]
    },
    {
        "inputs": [
            {
                "name": "video",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": -1},
            }
        ]
    },
]


def test_malformed_requests_are_400s_and_the_connection_keeps_serving(server, good_video):
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=30)
    good = _binary_request(good_video)
    for header in MALFORMED:
        raw = json.dumps(header).encode()
        headers = {"Inference-Header-Content-Length": str(len(raw))}
        status, body = _post(conn, raw + b"\0\0\0\0", headers)
        assert status == 400, (header, body)
        assert "Traceback" not in json.dumps(body)
        status, body = _post(conn, *good)  # the same keep-alive connection
        assert status == 200, body
    for body in (b"{not json", b"[]", b'{"inputs": 5}'):
        status, _ = _post(conn, body, {"Content-Type": "application/json"})
        assert status == 400
    conn.close()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]  # every client mistake is one line
    assert '" 500' not in log  # no access-log line of an internal error


def test_slow_clients_are_timed_out_while_others_are_served(server, good_video):
    s = socket.create_connection(("127.0.0.1", server.http), timeout=10)
    s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\n".encode())  # headers never finish
    start = time.monotonic()
    _good_answered(server, good_video)
    assert s.recv(1024) == b""  # closed by the server
    assert time.monotonic() - start < 6  # --client-timeout-s 2, and some slack
    s.close()
    # a body that stops half-way: 408 after the timeout
    body, headers = _binary_request(good_video)
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    assert _raw(server, head.encode() + body[: len(body) // 2]).startswith(b"HTTP/1.1 408")


def test_concurrent_good_and_bad_clients(server, good_video):
    bad = [BOMBS[n][0]() for n in ("8000x8000 frames in 3 KB", "truncated AVI", "1x4000 frames")]
    jobs = [("good", good_video, {})] * 12 + [("bad", b, {"mode": "sentence"}) for b in bad] * 4

    def one(job):
        kind, video, params = job
        for _ in range(20):  # as a client should: on 503, wait Retry-After and try again
            try:
                status, body = _infer(server, video, **params)
            except OSError as e:  # a reset connection is a failure of the server
                return kind, 0, {"error": repr(e)}
            if status != 503:
                return kind, status, body
            assert int(body["retry_after"]) >= 1, body  # over --max-in-flight: told when
            time.sleep(0.2 * int(body["retry_after"]))
        return kind, 503, body

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs))
    for kind, status, body in results:
        assert status == (200 if kind == "good" else 400), (kind, status, body)
    _good_answered(server, good_video)


def test_a_killed_servers_spooled_input_is_removed_at_the_next_start(tmp_path):
    from model.serving.predictor import SPOOL_PREFIX, sweep_orphans

    dead = 2**22 + 12345  # beyond pid_max's default: no such process
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile_dir())
    left = shm / f"{SPOOL_PREFIX}{dead}-abc"
    live = shm / f"{SPOOL_PREFIX}{os.getpid()}-abc"
    for d in (left, live):
        d.mkdir()
        (d / "input.video").write_bytes(b"x")
    try:
        assert left in sweep_orphans()
        assert not left.exists() and live.exists()
    finally:
        for d in (left, live):
            if d.exists():
                (d / "input.video").unlink()
                d.rmdir()


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_work_stops_when_the_rest_client_goes_away(server, good_video, tmp_path):
    video = write_video(tmp_path / "long.mp4", moving_square(300, 60, 80)).read_bytes()
    body, headers = _binary_request(video, mode="sentence", stride=2)  # 151 windows
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", server.http)) as s:
        s.sendall(head.encode() + body)
        time.sleep(0.3)  # the request is being worked on; then the client leaves
    deadline = time.monotonic() + 20
    while "stopped a request's work: the client went away" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)
    _good_answered(server, good_video)
