"""release/objstore.py against a real S3 server (SeaweedFS on 127.0.0.1): atomic, verified."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from components.infra import objstore
from components.infra.objstore import (
    MANIFEST,
    TMP_ROOT,
    AlreadyPublishedError,
    NotPublishedError,
    fetch_dir,
    is_published,
    publish_dir,
)
from components.infra.s3_access import ObjStoreError
from tests.s3 import _free_ports, s3_env_fixture, s3_server_fixture  # noqa: F401

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FAIL_FAST_S = 20.0


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _package(root: Path, seed: int = 0) -> Path:
    """A folder shaped like a model package, with a nested file and a multi-MiB binary."""
    files = {
        "config.json": json.dumps({"seed": seed}).encode(),
        "labels.txt": "0\thello\n1\tgröße\n".encode(),
        "model.pt": hashlib.sha256(str(seed).encode()).digest() * (3 << 15),  # 3 MiB
        "extra/lineage.json": b'{"git_commit": "abc"}',
        "empty.txt": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _keys(server, bucket: str, prefix: str = "") -> list[str]:
    return server.keys(bucket, prefix)


def test_round_trip_is_byte_identical(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    src = _package(tmp_path / "pkg")
    uri = f"s3://{bucket}/models/v1/"
    assert not is_published(uri)

    manifest = publish_dir(src, uri)

    assert is_published(uri)
    assert {f["path"] for f in manifest["files"]} == set(_tree(src))
    assert manifest["uri"] == uri
    # Final prefix holds the files plus the manifest; the temporary prefix is gone.
    assert _keys(s3_env, bucket) == sorted(
        [f"models/v1/{p}" for p in _tree(src)] + [f"models/v1/{MANIFEST}"]
    )
    out = fetch_dir(f"s3://{bucket}/models/v1", tmp_path / "back")
    assert _tree(out) == _tree(src)
    # Identical content again: a no-op. Different content: refused unless asked.
    assert publish_dir(src, uri)["created"] == manifest["created"]
    (src / "labels.txt").write_text("0\tother\n")
    with pytest.raises(AlreadyPublishedError, match="already"):
        publish_dir(src, uri)
    assert _tree(fetch_dir(uri, tmp_path / "still")) == _tree(out)
    publish_dir(src, uri, overwrite=True)
    assert _tree(fetch_dir(uri, tmp_path / "new")) == _tree(src)


def test_failure_mid_upload_leaves_nothing_visible(s3_env, tmp_path, monkeypatch):
    bucket = s3_env.make_bucket()
    src = _package(tmp_path / "pkg")
    uri = f"s3://{bucket}/models/v2/"
    real_place, placed = objstore._place, []

    def flaky_place(client, b, tmp_key, final_key, entry):
        if len(placed) == 2:
            raise ConnectionResetError("injected: connection lost")
        real_place(client, b, tmp_key, final_key, entry)
        placed.append(final_key)

    monkeypatch.setattr(objstore, "_place", flaky_place)
    with pytest.raises(ObjStoreError, match="injected") as ei:
        publish_dir(src, uri)
    assert uri in str(ei.value)
    assert len(placed) == 2
    assert not is_published(uri)
    assert _keys(s3_env, bucket) == []  # no manifest, no temp objects, no half package
    with pytest.raises(NotPublishedError):
        fetch_dir(uri, tmp_path / "dl")
    assert not (tmp_path / "dl").exists()


def test_killed_process_leaves_no_manifest_and_next_publish_cleans_up(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    src = _package(tmp_path / "pkg")
    uri = f"s3://{bucket}/models/v3/"
    script = textwrap.dedent(
        f"""
        import os, signal
        from components.infra import objstore
        real, n = objstore._place, [0]
        def place(*a):
            if n[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # no finally, no cleanup
            real(*a)
            n[0] += 1
        objstore._place = place
        objstore.publish_dir({str(src)!r}, {uri!r})
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == -9, r.stderr
    left = _keys(s3_env, bucket)
    assert any(k.startswith(TMP_ROOT) for k in left)  # the kill really happened mid-way
    assert len([k for k in left if k.startswith("models/v3/")]) == 2
    assert f"models/v3/{MANIFEST}" not in left
    assert not is_published(uri)
    with pytest.raises(NotPublishedError, match="not a published package"):
        fetch_dir(uri, tmp_path / "dl")

    publish_dir(src, uri)
    assert not any(k.startswith(TMP_ROOT) for k in _keys(s3_env, bucket))
    assert _tree(fetch_dir(uri, tmp_path / "dl")) == _tree(src)


def test_fetch_refuses_a_corrupted_object(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    src = _package(tmp_path / "pkg")
    uri = f"s3://{bucket}/models/v4/"
    publish_dir(src, uri)
    s3_env.put_bytes(bucket, "models/v4/labels.txt", b"0\ttampered\n")
    (tmp_path / "dl").mkdir()
    with pytest.raises(ObjStoreError, match="labels.txt is corrupted"):
        fetch_dir(uri, tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []  # nothing half-written left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "pkg"]  # no temp dir left


def test_fetch_refuses_unsafe_manifest_paths(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    body = {"format": objstore.FORMAT, "files": [{"path": "../evil", "size": 1, "sha256": "0"}]}
    s3_env.put_bytes(bucket, f"m/{MANIFEST}", json.dumps(body).encode())
    with pytest.raises(ObjStoreError, match="unsafe path"):
        fetch_dir(f"s3://{bucket}/m/", tmp_path / "dl")
    assert not (tmp_path / "evil").exists()


def test_prefix_without_manifest_is_not_published(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    s3_env.put_bytes(bucket, "models/raw/model.pt", b"x")
    assert not is_published(f"s3://{bucket}/models/raw/")
    with pytest.raises(NotPublishedError, match=f"s3://{bucket}/models/raw/"):
        fetch_dir(f"s3://{bucket}/models/raw/", tmp_path / "dl")


def test_bad_targets_are_clear_errors(s3_env, tmp_path):
    src = _package(tmp_path / "pkg")
    with pytest.raises(ObjStoreError, match="not the bucket root|prefix"):
        publish_dir(src, "s3://bucket")
    with pytest.raises(ObjStoreError, match="does not exist"):
        publish_dir(src, "s3://no-such-bucket-xyz/models/v1/")
    with pytest.raises(FileNotFoundError):
        publish_dir(tmp_path / "missing", f"s3://{s3_env.make_bucket()}/m/")


def test_wrong_credentials_fail_fast_without_leaking(s3_env, tmp_path, monkeypatch):
    bucket = s3_env.make_bucket()
    src = _package(tmp_path / "pkg")
    wrong = "wrong-" + s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    t0 = time.monotonic()
    with pytest.raises(ObjStoreError, match="AWS_SECRET_ACCESS_KEY") as ei:
        publish_dir(src, f"s3://{bucket}/models/v1/")
    assert time.monotonic() - t0 < FAIL_FAST_S
    assert wrong not in str(ei.value) and s3_env.secret_key not in str(ei.value)
    with pytest.raises(ObjStoreError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccess"):
        is_published(f"s3://{bucket}/models/v1/")


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch):
    (port,) = _free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(ObjStoreError, match=f"cannot reach http://127.0.0.1:{port}"):
        is_published("s3://bucket/models/v1/")
    assert time.monotonic() - t0 < FAIL_FAST_S


def test_cli_steps_read_and_publish_s3(s3_env, tmp_path, capsys):
    """`data convert`, `train`, `evaluate`, `package` with s3:// in and out."""
    from components.data.synth import synthesize
    from model.network.bundle import load_model_dir
    from sign2text.cli import main
    from tests.test_train import tiny_params

    bucket = s3_env.make_bucket()
    synthesize(tmp_path / "data", classes=2, per_class=4, signers=4, seed=1, progress=False)
    params = str(tiny_params(tmp_path, epochs=1))
    shards, model = f"s3://{bucket}/shards/d1/", f"s3://{bucket}/models/m1/"
    common = ["--params", params, "--quiet"]
    data = str(tmp_path / "data")

    assert main(["data", "convert", "--data", data, "--out", shards, *common]) == 0
    assert is_published(shards)
    assert main(["train", "--shards", shards, "--out", str(tmp_path / "train"), *common]) == 0
    ev = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "eval"), *common]
    assert main(["evaluate", "--model-dir", str(tmp_path / "train" / "model"), *ev]) == 0
    pk = ["--model-dir", str(tmp_path / "train" / "model"), "--eval", str(tmp_path / "eval")]
    assert main(["package", *pk, "--out", model, *common]) == 0
    assert is_published(model)
    assert load_model_dir(fetch_dir(model, tmp_path / "pkg")).labels
    ev2 = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "eval2"), *common]
    assert main(["evaluate", "--model-dir", model, *ev2]) == 0
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "eval" / "metrics.json").read_text()
    )
    # A prefix that was never published is refused with one line and exit code 2.
    capsys.readouterr()
    assert main(["evaluate", "--model-dir", f"s3://{bucket}/models/none/", *ev2]) == 2
    assert "not a published package" in capsys.readouterr().err
