"""Two app replicas behind a round-robin proxy, as the prod overlay runs them (2 replicas behind a
Service without session affinity): a prediction on one and its feedback on the other; live
sessions on either, and one carrying on when its replica goes away. Real processes: the model
server with the fixture model, two `python -m app.main` sharing one feedback store on the S3
test server, and a TCP proxy that sends each new client connection to the next replica in turn.
The pieces (tokens, the shared key, the WebSocket's limits): tests/test_app_state.py."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.live import MAX_MESSAGE, TOO_BIG
from components.release.local_deploy import free_port, stop_process
from tests.browser import LOCAL_ARGS, offline_chromium
from tests.conftest import moving_square, write_video
from tests.model_server import ENV, OPENER, ROOT, serve
from tests.s3 import pump, s3_server_fixture  # noqa: F401
from tests.test_app import FIXTURE, _file_server, _y4m, control

BUCKET, PREFIX = "app-replicas", "feedback"
W, H, CHUNK = 160, 120, 12


class RoundRobin:
    """A TCP proxy on 127.0.0.1: each new client connection goes to the next backend in turn,
    as a Kubernetes Service without session affinity spreads them. A backend that refuses the
    connection (its pod gone, so no longer an endpoint) is skipped. `routed` records, for each
    connection, the backend it went to and its first line (e.g. 'POST /api/predict HTTP/1.1')."""

    def __init__(self, backends: list[int]):
        self.backends = backends
        self.routed: list[tuple[int, str]] = []
        self._turn = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> tuple[int, socket.socket]:
        with self._lock:
            first, self._turn = self._turn, self._turn + 1
        for i in range(len(self.backends)):
            index = (first + i) % len(self.backends)
            with contextlib.suppress(OSError):
                server = socket.create_connection(("127.0.0.1", self.backends[index]), 5)
                server.settimeout(None)  # the 5 s were for connecting: a session may sit idle
                return index, server
        raise OSError("no backend answers")

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = client.recv(1 << 16)
            try:
                index, server = self._connect()
            except OSError:
                return
            with server:
                self.routed.append((index, head.split(b"\r\n", 1)[0].decode(errors="replace")))
                server.sendall(head)
                back = threading.Thread(target=pump, args=(server, client), daemon=True)
                back.start()
                pump(client, server)
                back.join()

    def to(self, request: str) -> list[int]:
        """The backends that took the connections whose first line starts with `request`."""
        return [i for i, line in self.routed if line.startswith(request)]

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("replica-videos")
    write_video(d / "sign.mp4", moving_square(40))
    write_video(d / "other.mp4", moving_square(40, seed=9))
    _y4m(moving_square(50, H, W, seed=5), d / "camera.y4m")
    return d


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with serve(FIXTURE, tmp_path_factory.mktemp("replica-model") / "model.log") as srv:
        yield f"http://127.0.0.1:{srv.http}"


@contextlib.contextmanager
def _replica(model_url: str, logs: Path, i: int, env: dict):
    """`python -m app.main` with feedback to the shared store; yields (its port, its process)."""
    port = free_port()
    feedback = ["--feedback", f"s3://{BUCKET}/{PREFIX}", "--spool", str(logs / f"spool-{i}")]
    cmd = [sys.executable, "-m", "app.main", "--model-url", model_url, "--port", str(port)]
    with open(logs / f"app-{i}.log", "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--allow-private-urls", *feedback],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if OPENER.open(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"replica {i} did not start:\n{(logs / f'app-{i}.log').read_text()}")
            time.sleep(0.2)
        yield port, proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def replicas(model_url: str, s3_server, logs: Path, n: int = 2):
    """n app processes sharing the feedback store, and the proxy in front of them; yields
    (proxy, processes)."""
    env = ENV | s3_server.env() | {"AWS_MAX_ATTEMPTS": "1"}
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(_replica(model_url, logs, i, env)) for i in range(n)]
        proxy = RoundRobin([port for port, _ in started])
        stack.callback(proxy.close)
        yield proxy, [proc for _, proc in started]


@pytest.fixture(scope="module")
def pair(model, s3_server, tmp_path_factory):
    s3_server.make_bucket(BUCKET)
    with replicas(model, s3_server, tmp_path_factory.mktemp("replica-logs")) as (proxy, _):
        yield proxy


def _post(url: str, **kw) -> httpx.Response:
    """One request on a connection of its own (so the proxy picks the next replica)."""
    with httpx.Client(timeout=60, trust_env=False) as client:
        return client.post(url, **kw)


def _records(s3_server) -> dict[str, dict]:
    keys = s3_server.keys(BUCKET, f"{PREFIX}/records/")
    return {k: json.loads(s3_server.get_bytes(BUCKET, k)) for k in keys}


def test_feedback_lands_whichever_replica_predicted(pair, videos, s3_server):
    """Uploaded and linked: predict on one replica, Wrong + gloss on the other (the video sent
    again, or the link fetched again), and the record is in the store."""
    video = (videos / "sign.mp4").read_bytes()
    upload = {"files": {"file": ("sign.mp4", video)}, "data": {}}
    with _file_server(videos) as files:
        link = {"files": None, "data": {"url": f"{files}/sign.mp4"}}
        for source in (upload, link):
            answer = _post(
                f"{pair.url}/api/predict",
                files=source["files"],
                data={"mode": "word"} | source["data"],
            )
            assert answer.status_code == 200, answer.text
            before = set(_records(s3_server))
            form = {"token": answer.json()["token"], "verdict": "wrong", "gloss": "go"}
            r = _post(f"{pair.url}/api/feedback", files=source["files"], data=form | source["data"])
            assert r.status_code == 200 and r.json()["status"] == "stored", r.text
            (key,) = set(_records(s3_server)) - before
            record = _records(s3_server)[key]
            assert (record["gloss"], record["predicted"], record["verdict"]) == (
                "go",
                answer.json()["result"]["glosses"][:1],
                "wrong",
            )
            assert s3_server.get_bytes(BUCKET, f"{PREFIX}/{record['video']}") == video
    predicted_on, told_on = pair.to("POST /api/predict"), pair.to("POST /api/feedback")
    assert len(predicted_on) == len(told_on) == 2
    assert all(a != b for a, b in zip(predicted_on, told_on, strict=True)), pair.routed

    other = (videos / "other.mp4").read_bytes()  # the last token, with another video
    r = _post(f"{pair.url}/api/feedback", files={"file": ("other.mp4", other)}, data=form)
    assert r.status_code == 422 and "not the one that was predicted" in r.json()["error"]


@contextlib.contextmanager
def _ws(proxy: RoundRobin):
    """A live session through the proxy, its frame size sent."""
    url = proxy.url.replace("http", "ws", 1) + "/api/live/ws"
    with connect(url, proxy=None, max_size=None) as ws:
        ws.send(json.dumps({"width": W, "height": H}))
        yield ws


def _frames(n: int = 3 * CHUNK) -> np.ndarray:
    return np.ascontiguousarray(moving_square(n, H, W, seed=5)[..., ::-1])  # RGB, as the page


def _chunks(ws, frames: np.ndarray) -> list[dict]:
    answers = []
    for i in range(0, len(frames), CHUNK):
        ws.send(frames[i : i + CHUNK].tobytes())
        answers.append(json.loads(ws.recv(timeout=60)))
        assert "error" not in answers[-1], answers[-1]
    return answers


def _words(answers: list[dict]) -> list[str]:
    return [w["word"] for a in answers for w in a["final"]] + [
        w["word"] for w in answers[-1]["pending"]
    ]


def test_live_sessions_work_on_either_replica(pair):
    frames = _frames()
    with _ws(pair) as one, _ws(pair) as two:
        first, second = _chunks(one, frames), _chunks(two, frames)
    assert len(set(pair.to("GET /api/live/ws")[-2:])) == 2  # one session on each replica
    assert _words(first) and _words(first) == _words(second)


def test_a_live_message_over_the_servers_limit_closes_the_socket(pair):
    with _ws(pair) as ws:
        # Only the frame's header (binary, final, masked, its length): the server refuses on
        # reading it, and nothing more is sent that could meet a closed socket.
        ws.socket.sendall(b"\x82\xff" + struct.pack("!Q", MAX_MESSAGE + 1) + bytes(4))
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=60)
    assert e.value.rcvd.code == TOO_BIG and "exceeds limit" in e.value.rcvd.reason


def test_a_live_session_carries_on_when_its_replica_goes_away(model, s3_server, tmp_path):
    """The replica holding a session is killed mid-session: the client's next chunk finds the
    connection closed; it reconnects through the proxy, lands on the other replica, and goes
    on, keeping the words said before."""
    frames = _frames(6 * CHUNK)
    with replicas(model, s3_server, tmp_path) as (proxy, procs):
        with _ws(proxy) as ws:
            said = _chunks(ws, frames[: 3 * CHUNK])
            (holder,) = proxy.to("GET /api/live/ws")
            procs[holder].send_signal(signal.SIGKILL)  # no goodbye: the connection just drops
            procs[holder].wait(10)
            with pytest.raises(ConnectionClosed):
                _chunks(ws, frames[3 * CHUNK : 4 * CHUNK])
        with _ws(proxy) as ws:
            after = _chunks(ws, frames[3 * CHUNK :])
        assert proxy.to("GET /api/live/ws") == [holder, 1 - holder]
    assert _words(said) and _words(after)


def test_the_page_carries_on_when_its_replica_goes_away(model, s3_server, videos, tmp_path):
    """Live in the page, through the proxy: the replica holding its session stops (as a pod
    does on a rollout); the page opens a new session on the other and words keep coming, those
    shown before kept."""
    from selenium.webdriver.common.by import By

    camera = (
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={videos / 'camera.y4m'}",
    )
    with (
        replicas(model, s3_server, tmp_path) as (proxy, procs),
        offline_chromium(LOCAL_ARGS + camera) as driver,
    ):
        driver.get(proxy.url)
        control(driver, "Live").click()

        def words(after: str = "") -> str:
            deadline = time.monotonic() + 60
            while True:
                text = driver.find_element(By.CSS_SELECTOR, "[data-testid=prediction]").text
                if text and text != after:
                    return text
                assert time.monotonic() < deadline, driver.find_element(By.ID, "status").text
                time.sleep(0.3)

        before = words()
        (holder,) = proxy.to("GET /api/live/ws")
        stop_process(procs[holder])  # SIGTERM: uvicorn closes the socket, code 1012
        deadline = time.monotonic() + 30
        while len(proxy.to("GET /api/live/ws")) < 2:
            assert time.monotonic() < deadline, "the page did not reconnect"
            time.sleep(0.1)
        after = words(words())  # the words of the new session, after those already shown
        driver.save_screenshot(str(tmp_path / "live-after-a-replica-went.png"))
        assert after.startswith(before), (before, after)
        assert proxy.to("GET /api/live/ws") == [holder, 1 - holder]
        assert control(driver, "Live").get_attribute("aria-pressed") == "true"
        assert "stopped" not in driver.find_element(By.ID, "status").text
