"""`make images-local`: build the project's images here, from the same Dockerfiles `make images`
pushes, where no registry serves the base image.

    python -m tools.images_local [app serving-onnx serving components] [--no-start]

1. A Docker daemon: `docker info` answers, or (as root, with apt-get) Debian's docker.io is
   installed and `dockerd --bridge=none --iptables=false --ip6tables=false` started, so that
   every build and container uses the host's network (127.0.0.1) and none gets a private address.
2. The base image: the Dockerfiles' own (python:3.11.13-slim-bookworm) where it is present or can
   be pulled; else an equivalent made from Debian's packages, once per machine: debootstrap
   bookworm (minbase with python3, python3-venv, python3-pip, ca-certificates; Python 3.11.2),
   a `python` link, and the host's CA bundle as PIP_CERT, so pip inside a build reaches PyPI
   through the host's TLS interception, if any. That adapts the base, never the Dockerfiles.
3. Each image, with `--network host` and docker's layer cache (a second build of unchanged
   sources takes seconds; a fresh machine builds from scratch), tagged LOCAL_TAGS[name].

Prints each image's size and build time. The tests that run the images (tests/test_container_*)
build what they need through `build()` here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_BASE = "python:3.11.13-slim-bookworm"
LOCAL_BASE = "sign2text-base:bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP = ["--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates"]
DOCKERD = ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"]
# name -> (Dockerfile, build args, tag)
IMAGES = {
    "app": ("app/Dockerfile", {}, "sign2text-app:local"),
    "serving-onnx": ("model/Dockerfile", {"RUNTIME": "onnx"}, "sign2text-serving:local-onnx"),
    # torch's CPU wheels come from download.pytorch.org; where only PyPI is reachable the
    # build takes PyPI's (CUDA) torch, as `make images` does for the -cuda image.
    "serving": ("model/Dockerfile", {}, "sign2text-serving:local"),
    "components": ("pipelines/Dockerfile", {}, "sign2text-components:local"),
}
LOCAL_TAGS = {name: tag for name, (_, _, tag) in IMAGES.items()}


class ImageError(RuntimeError):
    """An image could not be built here; the message says what is missing."""


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def daemon_ready() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return _run(["docker", "info"], 30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_daemon(start: bool = True) -> None:
    """A Docker daemon that answers, installed and started here if needed (root, apt-get)."""
    if daemon_ready():
        return
    if not start or os.geteuid() != 0:
        raise ImageError("no Docker daemon answers `docker info` (start one, or run as root)")
    if not shutil.which("dockerd") or not shutil.which("debootstrap"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-qq"], 600, env=env)
        apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"]
        r = _run([*apt, "debootstrap"], 900, env=env)
        if r.returncode:
            raise ImageError(f"apt-get install docker.io debootstrap failed: {r.stderr[-500:]}")
    log = open(Path(tempfile.gettempdir()) / "sign2text-dockerd.log", "ab")  # noqa: SIM115
    subprocess.Popen(DOCKERD, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not daemon_ready():
        if time.monotonic() > deadline:
            raise ImageError(f"dockerd did not answer within 60 s (log: {log.name})")
        time.sleep(1)


def has_image(tag: str) -> bool:
    return _run(["docker", "image", "inspect", tag], 60).returncode == 0


def base_image() -> str:
    """The Dockerfiles' base where this machine has or can pull it, else the Debian-made one."""
    if has_image(UPSTREAM_BASE):
        return UPSTREAM_BASE
    try:
        if _run(["docker", "pull", "-q", UPSTREAM_BASE], 60).returncode == 0:
            return UPSTREAM_BASE
    except subprocess.TimeoutExpired:
        pass
    if not has_image(LOCAL_BASE):
        _make_local_base()
    return LOCAL_BASE


def _make_local_base() -> None:
    if not shutil.which("debootstrap"):
        raise ImageError("no base image and no debootstrap to make one (apt-get install it)")
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    with tempfile.TemporaryDirectory(prefix="sign2text-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        r = _run(["debootstrap", *DEBOOTSTRAP, "bookworm", str(rootfs), MIRROR], 1200)
        if r.returncode:
            raise ImageError(f"debootstrap failed: {r.stderr[-500:] or r.stdout[-500:]}")
        (rootfs / "usr/bin/python").symlink_to("python3")
        host_ca = rootfs / "usr/local/share/sign2text-host-ca.crt"
        shutil.copyfile(cert, host_ca)
        changes = ["ENV LANG=C.UTF-8", f"ENV PIP_CERT=/{host_ca.relative_to(rootfs)}"]
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        args = [x for c in changes for x in ("--change", c)]
        r = subprocess.run(
            ["docker", "import", *args, "-", LOCAL_BASE], stdin=tar.stdout, capture_output=True
        )
        tar.wait()
        if r.returncode:
            raise ImageError(f"docker import failed: {r.stderr.decode()[-500:]}")


def _git_commit() -> str:
    r = _run(["git", "rev-parse", "HEAD"], 30, cwd=ROOT)
    return r.stdout.strip() if r.returncode == 0 else ""


def build(name: str, base: str | None = None) -> tuple[str, float]:
    """Build image `name` (IMAGES) on `base` (default: base_image()); returns (tag, seconds)."""
    dockerfile, args, tag = IMAGES[name]
    args = {"PYTHON_IMAGE": base or base_image(), **args}
    if name == "serving":
        args["TORCH_INDEX_URL"] = "https://pypi.org/simple"
    if name == "components":
        args["GIT_COMMIT"] = _git_commit()
    cmd = ["docker", "build", "--network", "host", "-f", dockerfile, "-t", tag]
    cmd += [x for k, v in args.items() for x in ("--build-arg", f"{k}={v}")]
    start = time.monotonic()
    r = subprocess.run([*cmd, "."], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise ImageError(f"docker build {tag} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return tag, time.monotonic() - start


def size_mb(tag: str) -> float:
    r = _run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], 60)
    return int(r.stdout.strip()) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="*", choices=list(IMAGES), default=list(IMAGES))
    p.add_argument("--no-start", action="store_true", help="never install or start dockerd")
    a = p.parse_args(argv)
    try:
        ensure_daemon(start=not a.no_start)
        base = base_image()
        print(f"base image: {base}")
        for name in a.images or IMAGES:
            tag, seconds = build(name, base)
            print(f"{tag}: {size_mb(tag):.0f} MB, built in {seconds:.0f} s", flush=True)
    except ImageError as e:
        print(f"images-local: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
