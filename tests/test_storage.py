"""model.storage and read_state_dict against a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_weights, read_state_dict
from model.i3d import I3DConfig, InceptionI3d
from model.storage import (
    StorageError,
    display_uri,
    fetch,
    hash_file,
    is_uri,
    redact_secrets,
    replace_dir,
    write_atomic,
)
from tests.conftest import published_state_dict
from tests.s3 import _free_ports, s3_env_fixture, s3_server_fixture  # noqa: F401

pytestmark = pytest.mark.slow

FAIL_FAST_S = 20.0


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("s3://bucket/i3d/rgb_imagenet.pt", True),
        ("gs://bucket/x", True),
        ("https://example.org/model.pt", True),
        ("file:///tmp/x.pt", True),
        ("hf://org/model", True),
        ("/tmp/x.pt", False),
        ("artifacts/i3d.pt", False),
        ("C:\\models\\x.pt", False),
        ("", False),
        (Path("s3://bucket/x"), False),
    ],
)
def test_is_uri(s, expected):
    assert is_uri(s) is expected


def test_display_uri_drops_userinfo_and_query():
    assert display_uri("https://user:pw@host/a/b.pt?X-Amz-Signature=abc") == "https://host/a/b.pt"
    assert display_uri("s3://bucket/key.pt") == "s3://bucket/key.pt"
    assert display_uri("/models/run?1#a") == "/models/run?1#a"


def test_redact_secrets_hides_secret_env_values_only(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    text = "denied for AKIDEXAMPLE/hunter2-secret in eu-west-1"
    assert redact_secrets(text) == "denied for ***/*** in eu-west-1"


def test_hash_file_matches_hashlib_across_chunks(tmp_path):
    f = tmp_path / "blob"
    data = bytes(range(256)) * 9000  # > 2 MiB: more than one read
    f.write_bytes(data)
    assert hash_file(f) == hashlib.sha256(data).hexdigest()
    assert hash_file(str(f), "md5") == hashlib.md5(data).hexdigest()  # noqa: S324


def test_replace_dir_swaps_whole_trees(tmp_path):
    dest = tmp_path / "out"
    for version in ("1", "2"):
        new = tmp_path / f".new{version}"
        (new / "sub").mkdir(parents=True)
        (new / "sub" / "f").write_text(version)
        replace_dir(new, dest)
        assert (dest / "sub" / "f").read_text() == version
    (tmp_path / "old-only").mkdir()
    (dest / "stale").write_text("x")  # not in the next tree, so it must go
    replace_dir(tmp_path / "old-only", dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert list(dest.iterdir()) == []


def test_write_atomic_takes_bytes_or_a_writer(tmp_path):
    f = tmp_path / "state.pt"
    write_atomic(f, b"old")
    write_atomic(f, lambda fh: torch.save({"w": torch.ones(2)}, fh), durable=True)
    assert torch.equal(torch.load(f, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_fetch_local_path(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    assert fetch(f) == f
    assert fetch(str(tmp_path)) == tmp_path
    assert fetch(f"file://{f}") == f
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fetch(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fetch(f"file://{tmp_path}/missing.pt")


def test_read_state_dict_from_s3(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    state = published_state_dict(num_classes=10, seed=3)
    local = tmp_path / "rgb_imagenet.pt"
    torch.save(state, local)
    # A sibling whose key extends the checkpoint's: the exact object must still win.
    s3_env.put_bytes(bucket, "i3d/rgb_imagenet.pt.sha256", b"0" * 64)
    s3_env.put_file(bucket, "i3d/rgb_imagenet.pt", local)

    got = read_state_dict(f"s3://{bucket}/i3d/rgb_imagenet.pt")

    assert got.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(got[k], v), k
    # What the train step's `init` does with it: a 10-class checkpoint into a 5-class model.
    model = InceptionI3d(I3DConfig(num_classes=5))
    assert load_weights(model, got, replace_head=True).head_replaced


def test_fetch_single_object_gives_the_file(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    s3_env.put_bytes(bucket, "a/labels.txt", b"hello\nworld\n")
    out = fetch(f"s3://{bucket}/a/labels.txt", tmp_path / "dl")
    assert out == tmp_path / "dl" / "labels.txt"
    assert out.read_bytes() == b"hello\nworld\n"


def test_fetch_prefix_gives_the_directory(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    files = {
        "config.json": b'{"num_classes": 10}',
        "weights.pt": bytes(range(256)) * 300,
        "extra/labels.txt": "größe\nhello\n".encode(),
    }
    for name, data in files.items():
        s3_env.put_bytes(bucket, f"models/m1/{name}", data)
    s3_env.put_bytes(bucket, "models/m10/other.bin", b"not part of m1")

    out = fetch(f"s3://{bucket}/models/m1/")
    try:
        assert out.is_dir()
        assert _files(out) == files
    finally:
        shutil.rmtree(out)


def test_read_state_dict_rejects_a_prefix(s3_env):
    bucket = s3_env.make_bucket()
    s3_env.put_bytes(bucket, "ckpts/a.pt", b"x")
    s3_env.put_bytes(bucket, "ckpts/b.pt", b"y")
    with pytest.raises(CheckpointError, match="prefix"):
        read_state_dict(f"s3://{bucket}/ckpts")


def test_missing_object_is_a_clear_error(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    uri = f"s3://{bucket}/i3d/nope.pt"
    with pytest.raises(StorageError, match=uri):
        fetch(uri, tmp_path / "dl")
    with pytest.raises(StorageError, match=uri):
        read_state_dict(uri)


def test_missing_bucket_is_a_clear_error(s3_env):
    with pytest.raises(StorageError, match="no-such-bucket-xyz") as ei:
        fetch("s3://no-such-bucket-xyz/a.pt")
    assert "not" in str(ei.value).lower()  # "... not found" / "does not exist"


def test_wrong_credentials_fail_fast_without_leaking(s3_env, monkeypatch):
    bucket = s3_env.make_bucket()
    s3_env.put_bytes(bucket, "k.pt", b"x")
    wrong = "wrong-" + s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    uri = f"s3://{bucket}/k.pt"
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=uri) as ei:
        read_state_dict(uri)
    assert time.monotonic() - t0 < FAIL_FAST_S
    msg = str(ei.value)
    assert wrong not in msg and s3_env.secret_key not in msg
    assert any(w in msg.lower() for w in ("403", "denied", "forbidden", "credential", "auth"))


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch):
    (port,) = _free_ports(1)  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="s3://bucket/k.pt"):
        fetch("s3://bucket/k.pt")
    assert time.monotonic() - t0 < FAIL_FAST_S


def test_fetch_refuses_a_non_empty_dest_dir(s3_env, tmp_path):
    (tmp_path / "old").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        fetch("s3://bucket/k.pt", tmp_path)


def test_train_init_from_s3_uri(s3_env, tmp_path):
    """The train step's `init: s3://...` goes through the same loader."""
    from sign2text.learning.train import build_model
    from tests.conftest import demo_recipe

    bucket = s3_env.make_bucket()
    state = published_state_dict(num_classes=400, seed=4)
    torch.save(state, tmp_path / "rgb_imagenet.pt")
    s3_env.put_file(bucket, "i3d/rgb_imagenet.pt", tmp_path / "rgb_imagenet.pt")
    cfg = demo_recipe(init=f"s3://{bucket}/i3d/rgb_imagenet.pt", freeze_backbone=True)
    model = build_model(cfg, I3DConfig(num_classes=7))
    assert torch.equal(model.Mixed_5c.b1b.conv3d.weight, state["Mixed_5c.b1b.conv3d.weight"])
    assert model.logits.conv3d.weight.shape[0] == 7
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert model.logits.conv3d.weight.requires_grad


def test_served_model_loads_from_s3(s3_env, tmp_path):
    from model.package import write_model_dir
    from model.serving import Sign2TextModel
    from model.video import PreprocessConfig

    bucket = s3_env.make_bucket()
    model = InceptionI3d(I3DConfig(num_classes=3, width=0.25))
    local = write_model_dir(tmp_path / "m", model, PreprocessConfig(8, 64, 56), ["a", "b", "c"])
    for f in local.iterdir():
        s3_env.put_file(bucket, f"models/v1/{f.name}", f)
    served = Sign2TextModel(f"s3://{bucket}/models/v1/")
    assert not served.ready
    served.load()
    assert served.ready
