"""Two app replicas behind a round-robin proxy, as the prod overlay runs them (2 replicas behind a
Service without session affinity): a prediction on one and its feedback on the other; live
sessions on either. Real processes: the model server with the fixture model, two
`python -m app.main` sharing one feedback store on the S3 test server, and a TCP proxy that
sends each new client connection to the next replica in turn."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import moving_square, write_video
from tests.model_server import ENV, serve
from tests.s3 import s3_server_fixture  # noqa: F401
from tests.test_app import FIXTURE, app_server

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
                return index, socket.create_connection(("127.0.0.1", self.backends[index]), 5)
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
                back = threading.Thread(target=_pump, args=(server, client), daemon=True)
                back.start()
                _pump(client, server)
                back.join()

    def to(self, request: str) -> list[int]:
        """The backends that took the connections whose first line starts with `request`."""
        return [i for i, line in self.routed if line.startswith(request)]

    def close(self) -> None:
        self._listener.close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := a.recv(1 << 16):
            b.sendall(data)
    with contextlib.suppress(OSError):
        b.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("replica-videos")
    write_video(d / "sign.mp4", moving_square(40))
    write_video(d / "other.mp4", moving_square(40, seed=9))
    return d


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with serve(FIXTURE, tmp_path_factory.mktemp("replica-model") / "model.log") as srv:
        yield f"http://127.0.0.1:{srv.http}"


@contextlib.contextmanager
def replicas(model_url: str, s3_server, logs: Path, n: int = 2):
    """n app processes sharing the feedback store, and the proxy in front of them."""
    env = ENV | s3_server.env() | {"AWS_MAX_ATTEMPTS": "1"}
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(
                app_server(
                    model_url,
                    logs / f"app-{i}.log",
                    "--feedback",
                    f"s3://{BUCKET}/{PREFIX}",
                    "--spool",
                    str(logs / f"spool-{i}"),
                    env=env,
                )
            )
            for i in range(n)
        ]
        proxy = RoundRobin([int(u.rsplit(":", 1)[1]) for u in urls])
        stack.callback(proxy.close)
        yield proxy


@pytest.fixture(scope="module")
def pair(model, s3_server, tmp_path_factory):
    s3_server.make_bucket(BUCKET)
    with replicas(model, s3_server, tmp_path_factory.mktemp("replica-logs")) as proxy:
        yield proxy


def _post(url: str, **kw) -> httpx.Response:
    """One request on a connection of its own (so the proxy picks the next replica)."""
    with httpx.Client(timeout=60, trust_env=False) as client:
        return client.post(url, **kw)


def _records(s3_server) -> dict[str, dict]:
    keys = s3_server.keys(BUCKET, f"{PREFIX}/records/")
    return {k: json.loads(s3_server.get_bytes(BUCKET, k)) for k in keys}


def test_feedback_lands_whichever_replica_predicted(pair, videos, s3_server):
    video = (videos / "sign.mp4").read_bytes()
    answer = _post(
        f"{pair.url}/api/predict", files={"file": ("sign.mp4", video)}, data={"mode": "word"}
    )
    assert answer.status_code == 200, answer.text
    before = set(_records(s3_server))
    r = _post(
        f"{pair.url}/api/feedback",
        json={"token": answer.json()["token"], "verdict": "wrong", "gloss": "go"},
    )
    (predicted_on,), (told_on,) = pair.to("POST /api/predict"), pair.to("POST /api/feedback")
    assert predicted_on != told_on
    assert r.status_code == 200, r.text
    (key,) = set(_records(s3_server)) - before
    assert _records(s3_server)[key]["gloss"] == "go"


def _frames(n: int = 120) -> np.ndarray:
    return np.ascontiguousarray(moving_square(n, H, W, seed=5)[..., ::-1])


def test_live_chunks_land_on_either_replica(pair):
    session = _post(f"{pair.url}/api/live").json()["session"]
    frames, words = _frames(), []
    for i in range(0, len(frames), CHUNK):
        r = _post(
            f"{pair.url}/api/live/{session}",
            params={"width": W, "height": H},
            content=frames[i : i + CHUNK].tobytes(),
        )
        assert r.status_code == 200, r.text
        words += [w["word"] for w in r.json()["final"]]
    assert set(pair.to("POST /api/live/")) == {0, 1}
