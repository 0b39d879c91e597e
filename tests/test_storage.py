"""model.storage and read_state_dict against a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from model import storage
from model.files import display_uri, hash_file, redact_secrets, replace_dir, write_atomic
from model.network.checkpoint import CheckpointError, load_weights, read_state_dict
from model.network.i3d import I3DConfig, InceptionI3d
from model.storage import StorageError, fetch, is_uri
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
    from components.training.train import build_model
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
    from model.network.bundle import write_model_dir
    from model.serving.predictor import Sign2TextModel
    from model.video.clip import PreprocessConfig

    bucket = s3_env.make_bucket()
    model = InceptionI3d(I3DConfig(num_classes=3, width=0.25))
    local = write_model_dir(tmp_path / "m", model, PreprocessConfig(8, 64, 56), ["a", "b", "c"])
    for f in local.iterdir():
        s3_env.put_file(bucket, f"models/v1/{f.name}", f)
    served = Sign2TextModel(f"s3://{bucket}/models/v1/")
    assert not served.ready
    served.load()
    assert served.ready


# --- s3:// never writes outside the target folder -------------------------------------------


class _FakeS3Client:
    """A fake S3 client (no server) for keys a real local server will not hold: SeaweedFS refuses
    any key with a ".." or "." segment (InvalidRequest) and folds "a//b" into "a/b", as MinIO
    does, while AWS S3 stores them as given. It lists `objects` in the order given (a good key
    may come before a bad one, unlike S3's sorted listing) and serves their bytes; a value that
    is an exception is raised by the download instead."""

    def __init__(self, objects: dict[str, bytes | Exception]):
        self.objects = objects
        self.downloaded: list[str] = []

    def get_paginator(self, name: str) -> _FakeS3Client:
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket: str, Prefix: str):  # noqa: N803 (boto3's parameter names)
        contents = [
            {"Key": k, "Size": 1 if isinstance(v, Exception) else len(v)}
            for k, v in self.objects.items()
            if k.startswith(Prefix)
        ]
        yield {"Contents": contents}

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        self.downloaded.append(key)
        data = self.objects[key]
        if isinstance(data, Exception):
            raise data
        Path(filename).write_bytes(data)


@pytest.fixture
def fake_s3(monkeypatch):
    """Makes fetch's s3:// download use a _FakeS3Client over the objects given."""
    for var in ("CONFIG", "OVERRIDE_CONFIG", "ALLOW_PATTERNS", "IGNORE_PATTERNS"):
        monkeypatch.delenv(f"STORAGE_{var}", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-never-shown")

    def install(objects: dict[str, bytes | Exception]) -> _FakeS3Client:
        client = _FakeS3Client(objects)
        monkeypatch.setattr(storage, "s3_client", lambda: client)
        return client

    return install


@pytest.fixture
def own_tempdir(tmp_path, monkeypatch) -> Path:
    """Where fetch makes its own temp dir (when it is given no dest_dir)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


ESCAPING_KEYS = ["../escape", "a/../../escape", "/abs"]


@pytest.mark.parametrize("bad", ESCAPING_KEYS)
@pytest.mark.parametrize("key", ["", "p/", "p"])
def test_fetch_refuses_a_key_that_escapes(fake_s3, own_tempdir, tmp_path, key, bad):
    """A fake listing (_FakeS3Client): a good key, then one whose path relative to the URI's key
    is absolute or climbs out. Nothing is downloaded: not the good key, not into the parent
    folder, not into fetch's own temp dir, which is removed."""
    base = f"{key.rstrip('/')}/" if key else ""
    bad_key = base + bad
    fake = fake_s3({f"{base}good/w.pt": b"w", bad_key: b"evil"})

    dest = tmp_path / "dl"
    with pytest.raises(StorageError, match=re.escape(repr(bad_key))) as ei:
        fetch(f"s3://bucket/{key}", dest)
    assert "fake-secret-never-shown" not in str(ei.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "tmp"]
    assert list(dest.iterdir()) == []

    with pytest.raises(StorageError, match=re.escape(repr(bad_key))):
        fetch(f"s3://bucket/{key}")
    assert list(own_tempdir.iterdir()) == []
    assert fake.downloaded == []
    assert not Path("/abs").exists()


@pytest.mark.parametrize("bad", ["m/a//b.pt", "m/a/./b.pt", "m/./b.pt", "m//b.pt", "m/a/.."])
def test_fetch_refuses_keys_the_file_system_would_fold(fake_s3, tmp_path, bad):
    """A fake listing: "a//b" and "a/./b" would land on "a/b", one object replacing another."""
    fake_s3({"m/a/b.pt": b"1", bad: b"2"})
    with pytest.raises(StorageError, match=re.escape(repr(bad))):
        fetch("s3://bucket/m/", tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def test_fetch_skips_directory_markers_and_empty_objects(fake_s3, tmp_path):
    """A fake listing with the zero-byte "folder/" keys consoles create; kserve skips those, and
    empty objects, too."""
    fake = fake_s3(
        {"m/": b"", "m/sub/": b"", "m/w.pt": b"w", "m/sub/x.txt": b"x", "m/empty.txt": b""}
    )
    out = fetch("s3://bucket/m/", tmp_path / "dl")
    assert out == tmp_path / "dl"
    assert _files(out) == {"w.pt": b"w", "sub/x.txt": b"x"}
    assert sorted(fake.downloaded) == ["m/sub/x.txt", "m/w.pt"]


def test_fetch_honours_storage_patterns(fake_s3, tmp_path, monkeypatch):
    """A fake listing; the patterns match the path relative to the key, as in kserve."""
    fake_s3({"m/w.pt": b"w", "m/notes.md": b"n", "m/sub/x.pt": b"x"})
    monkeypatch.setenv("STORAGE_ALLOW_PATTERNS", '["*.pt"]')
    monkeypatch.setenv("STORAGE_IGNORE_PATTERNS", "sub/*")
    assert _files(fetch("s3://bucket/m/", tmp_path / "dl")) == {"w.pt": b"w"}


def test_failed_s3_download_leaves_the_dest_dir_empty(fake_s3, own_tempdir, tmp_path):
    """A fake whose second object fails: the first one, already written, is removed too."""
    fake_s3({"m/a.pt": b"a", "m/b.pt": ConnectionError("reset by peer")})
    dest = tmp_path / "dl"
    with pytest.raises(StorageError, match="'m/b.pt'.*reset by peer"):
        fetch("s3://bucket/m/", dest)
    assert list(dest.iterdir()) == []
    with pytest.raises(StorageError, match="reset by peer"):
        fetch("s3://bucket/m/")
    assert list(own_tempdir.iterdir()) == []


def test_fetch_prefix_without_slash_is_relative_to_the_key(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    s3_env.put_bytes(bucket, "models/m1/config.json", b"{}")
    s3_env.put_bytes(bucket, "models/m10/other.bin", b"o")
    out = fetch(f"s3://{bucket}/models/m1", tmp_path / "dl")
    # Plain string matching, as in kserve: m10 comes along as "0/...".
    assert _files(out) == {"config.json": b"{}", "0/other.bin": b"o"}


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["model.tar.gz", "model.tgz", "model.tar", "model.zip"])
def test_fetch_unpacks_a_single_archive(s3_env, tmp_path, name):
    bucket = s3_env.make_bucket()
    members = {"./config.json": b"{}", "sub/w.pt": b"w" * 100, name: b"same name as the archive"}
    make = _zip if name.endswith("zip") else _tar
    s3_env.put_file(bucket, f"m/{name}", make(tmp_path / name, members))
    out = fetch(f"s3://{bucket}/m/{name}", tmp_path / "dl")
    assert out == tmp_path / "dl"
    assert _files(out) == {"config.json": b"{}", "sub/w.pt": b"w" * 100, name: members[name]}


@pytest.mark.parametrize(
    ("name", "members", "links", "error"),
    [
        ("evil.tar", {"ok.txt": b"o", "../escape": b"e"}, None, "'../escape'"),
        ("evil.tar.gz", {"ok.txt": b"o", "a/../../escape": b"e"}, None, "'a/../../escape'"),
        ("evil.tar", {"ok.txt": b"o", "/abs-escape": b"e"}, None, "'/abs-escape'"),
        ("evil.tar", {"ok.txt": b"o"}, {"link": "../../escape"}, "cannot unpack 'evil.tar'"),
        ("evil.tar", {"ok.txt": b"o"}, {"link": "/etc"}, "cannot unpack 'evil.tar'"),
        ("evil.zip", {"ok.txt": b"o", "../escape": b"e"}, None, "'../escape'"),
        ("evil.zip", {"ok.txt": b"o", "/abs-escape": b"e"}, None, "'/abs-escape'"),
    ],
)
def test_fetch_refuses_an_archive_member_that_escapes(
    s3_env, own_tempdir, tmp_path, name, members, links, error
):
    bucket = s3_env.make_bucket()
    made = tmp_path / "made"
    made.mkdir()
    archive = (
        _zip(made / name, members) if name.endswith("zip") else _tar(made / name, members, links)
    )
    s3_env.put_file(bucket, f"m/{name}", archive)
    uri = f"s3://{bucket}/m/{name}"

    dest = tmp_path / "dl"
    with pytest.raises(StorageError, match=re.escape(error)):
        fetch(uri, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "made", "tmp"]
    assert list(dest.iterdir()) == []
    with pytest.raises(StorageError, match=re.escape(error)):
        fetch(uri)
    assert list(own_tempdir.iterdir()) == []
    assert not Path("/abs-escape").exists()
