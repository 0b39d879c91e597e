"""The project's images, run for tests the way the cluster runs them: read-only root filesystem,
uid 10001, every capability dropped, no privilege escalation, a memory limit (swap included),
/tmp a small tmpfs, and the host's network so the container listens on 127.0.0.1 like every
other test server (no container gets an address of its own).

Images come from tools/images_local.py (`make images-local`; `make test` builds the app and ONNX
serving images first). Without a Docker daemon the tests that need one skip, saying why, except
under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.release.local_deploy import free_port
from tests.model_server import Server
from tools import images_local

ROOT = Path(__file__).resolve().parents[1]
PREDICTOR = ROOT / "manifests" / "base" / "inferenceservice-rest.yaml"
HARDENED = [
    "--network=host",
    "--read-only",
    "--user=10001:10001",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--tmpfs=/tmp:rw,nosuid,nodev,size=512m",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


_BUILT: dict[str, str] = {}


def image(name: str) -> str:
    """The local image `name` (tools/images_local.IMAGES) of these sources: built once per test
    process (docker's layer cache makes a build of unchanged sources take seconds), so a test
    never runs an image older than the code beside it."""
    if name in _BUILT:
        return _BUILT[name]
    why = None
    if not images_local.daemon_ready():
        why = "no Docker daemon (`make images-local` starts one as root)"
    else:
        try:
            _BUILT[name] = images_local.build(name)[0]
            return _BUILT[name]
        except images_local.ImageError as e:
            why = str(e)
    if _in_ci():
        pytest.fail(f"CI runs the images' tests: {why}")
    pytest.skip(why)


def predictor_memory() -> str:
    """The predictor's memory limit in the manifests, as docker's --memory takes it."""
    import yaml

    spec = yaml.safe_load(PREDICTOR.read_text())["spec"]["predictor"]["model"]
    limit = spec["resources"]["limits"]["memory"]  # e.g. 4Gi
    return limit.removesuffix("i").lower()


def readable_copy(src: Path, dest: Path) -> Path:
    """A copy of `src` that uid 10001 can read through a read-only bind mount (pytest's temp
    folders are the tests' user's alone)."""
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


class Container:
    """A running container, as a process: pid (its init, a host pid: /proc reads its memory),
    poll() (None while it runs), kill()."""

    def __init__(self, name: str, client: subprocess.Popen) -> None:
        self.name, self.client, self._pid = name, client, 0

    def _inspect(self, fmt: str) -> str:
        r = subprocess.run(
            ["docker", "inspect", "-f", fmt, self.name], capture_output=True, text=True
        )
        return r.stdout.strip() if r.returncode == 0 else ""

    @property
    def pid(self) -> int:
        if not self._pid:
            self._pid = int(self._inspect("{{.State.Pid}}") or 0)
        return self._pid

    def poll(self) -> int | None:
        return self.client.poll()  # `docker run` in the foreground ends with its container

    def kill(self) -> None:
        subprocess.run(["docker", "kill", self.name], capture_output=True)

    def oom_killed(self) -> bool:
        return self._inspect("{{.State.OOMKilled}}") == "true"


@contextlib.contextmanager
def run(
    tag: str, args: list[str], log: Path, *, memory: str, options: list[str] = ()
) -> Iterator[Container]:
    """`docker run` of `tag` hardened as above, in the foreground (its output to `log`);
    removed, whatever happened, on exit."""
    name = f"sign2text-test-{uuid.uuid4().hex[:12]}"
    cmd = ["docker", "run", "--rm", f"--name={name}", *HARDENED, f"--memory={memory}"]
    cmd += [f"--memory-swap={memory}", *options, tag, *args]
    with open(log, "wb") as out:
        client = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Container(name, client)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        client.wait(timeout=60)


@contextlib.contextmanager
def serve_image(
    tag: str, model_dir: Path, log: Path, *extra: str, memory: str = "4g"
) -> Iterator[Server]:
    """The serving image's own command (python -m model.serving.server) on a model directory
    mounted read-only at /mnt/models, as the cluster's storage initializer leaves it, on free
    ports of 127.0.0.1; ready to answer."""
    http, grpc = free_port(), free_port()
    mount = f"--volume={readable_copy(model_dir, log.parent / 'mnt-models')}:/mnt/models:ro"
    args = ["python", "-m", "model.serving.server", "--model-dir", "/mnt/models"]
    args += ["--http-port", str(http), "--grpc-port", str(grpc), "--host", "127.0.0.1", *extra]
    with run(tag, args, log, memory=memory, options=[mount]) as container:
        srv = Server(container, http, grpc, log)
        deadline = time.monotonic() + 120
        while not srv.alive():
            if container.client.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the serving container did not become ready:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield srv
