"""Fixtures for a real S3 server on 127.0.0.1 (tools/s3_server.py). Import them into a test module:

    from tests.s3 import s3_env_fixture, s3_server_fixture  # noqa: F401

    def test_x(s3_env): ...

The fixtures are *named* `s3_server` and `s3_env` but defined under other Python names, because
ruff flags a test parameter that shadows an imported name (F811; ruff cannot know it is a
fixture). `s3_server` (session scope) is one server for the run; `s3_env` (function scope)
points boto3 / kserve_storage at it through the environment.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tools.s3_server import S3Server, _free_ports, run_s3_server

__all__ = [
    "CountingProxy",
    "Relay",
    "S3Server",
    "_free_ports",
    "s3_env_fixture",
    "s3_server_fixture",
]


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    with run_s3_server() as server:
        yield server


@pytest.fixture(name="s3_env")
def s3_env_fixture(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Environment for boto3 / kserve_storage to reach `s3_server` (restored after the test)."""
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    # Fail fast in tests: no retries, short timeouts (kserve_storage reads S3_*; boto3 AWS_*).
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "5")
    monkeypatch.setenv("S3_READ_TIMEOUT", "10")
    # Keep ambient config (a developer's ~/.aws) out of the picture.
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "STORAGE_CONFIG", "STORAGE_OVERRIDE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_server


# The names the fixtures are requested by, for `from tests.s3 import s3_server, s3_env`.
s3_server = s3_server_fixture
s3_env = s3_env_fixture


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy what `a` sends to `b` until `a` closes, then close `b`'s writing side."""
    with contextlib.suppress(OSError):
        while data := a.recv(1 << 16):
            b.sendall(data)
    with contextlib.suppress(OSError):
        b.shutdown(socket.SHUT_WR)


class Relay:
    """A TCP relay on a fixed loopback port in front of the S3 server. `down()` closes it and
    every connection through it, so the endpoint refuses as a stopped server does; `up()` opens
    it again on the same port (the server's data never went anywhere)."""

    def __init__(self, target: str):
        self.target = int(target.rsplit(":", 1)[1])
        self.port = _free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self._socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    def down(self) -> None:
        for s in [self._listener, *self._socks]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept() / recv() blocked on it
            s.close()
        self._socks.clear()


class CountingProxy:
    """An HTTP relay in front of the S3 server that records every request's method and path, and
    the most requests it had in flight at once; each GET waits `delay` seconds first, so that
    requests sent in parallel overlap. The Host header is passed on unchanged (SigV4 signs it).
    Point a client at `endpoint`; use it as a context manager.

    `cut` drops connections: {key suffix: n} sends the first GET of a matching path (without a
    Range header) its full headers but only n bytes of the body, then closes the connection, as a
    network failure mid-download does. `ranges` records (path, Range header) of ranged GETs."""

    def __init__(self, target: str, delay: float = 0.0, cut: dict[str, int] | None = None):
        host, port = urlsplit(target).hostname, urlsplit(target).port
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, str]] = []
        self.agents: list[tuple[str, str]] = []  # (method path, User-Agent) of every request
        cuts = dict(cut or {})
        self.max_in_flight, self._in_flight, lock = 0, 0, threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def relay(self) -> None:
                path = urlsplit(self.path).path
                with lock:
                    proxy.requests.append((self.command, path))
                    proxy.agents.append(
                        (f"{self.command} {path}", self.headers.get("User-Agent", ""))
                    )
                    if self.headers.get("Range"):
                        proxy.ranges.append((path, self.headers["Range"]))
                    suffix = next((k for k in cuts if path.endswith(k)), None)
                    keep = None
                    if self.command == "GET" and suffix and not self.headers.get("Range"):
                        keep = cuts.pop(suffix)
                    proxy._in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy._in_flight)
                try:
                    if self.command == "GET":
                        time.sleep(delay)
                    n = int(self.headers.get("Content-Length") or 0)
                    upstream = http.client.HTTPConnection(host, port, timeout=30)
                    try:
                        upstream.request(
                            self.command, self.path, self.rfile.read(n), dict(self.headers)
                        )
                        resp = upstream.getresponse()
                        body = resp.read()
                    finally:
                        upstream.close()
                finally:
                    with lock:
                        proxy._in_flight -= 1
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                if keep is not None:  # the connection drops part-way through the body
                    self.wfile.write(body[:keep])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                elif self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def gets(self) -> list[str]:
        """The paths of the GET requests so far (/bucket/key)."""
        return [path for method, path in self.requests if method == "GET"]

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
