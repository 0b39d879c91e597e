"""The version step against a real git + DVC repository and a real S3 server on loopback: the data
md5 of a revision, the local hash agreeing with `dvc add`, a subset fetched by hash straight from
the DVC remote (byte-identical, each file's md5 checked), and clear errors."""

from __future__ import annotations

import json
import os

import pytest

from components.data.dataset import METADATA, load_glosses, load_samples
from components.data.synth import synthesize
from components.data.version import (
    DataVersionError,
    fetch_from_remote,
    local_hash,
    materialise,
    pointer_hash,
    resolve,
    resolve_revision,
)
from tests.s3 import _free_ports, s3_server_fixture  # noqa: F401
from tests.test_dvc_remote import DVC, _hashes, _remote_repo, _run


@pytest.fixture(scope="module")
def versioned(s3_server, tmp_path_factory) -> dict:
    """A repo with two data revisions (tags v1, v2), both pushed to the DVC remote."""
    tmp = tmp_path_factory.mktemp("version")
    env, repo, section = _remote_repo(s3_server, tmp)
    synthesize(repo / "data", classes=3, per_class=4, signers=4, progress=False)
    v1_files = _hashes(repo / "data")
    v1_local = local_hash(repo / "data")
    _run([DVC, "add", "-q", "data"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1"], repo, env)
    _run(["git", "tag", "v1"], repo, env)
    _run([DVC, "push", "-q"], repo, env)
    extra = repo / "data" / "videos" / "extra.mp4"
    extra.write_bytes(next((repo / "data" / "videos").iterdir()).read_bytes() + b"\0")
    _run([DVC, "add", "-q", "data"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "v2"], repo, env)
    _run([DVC, "push", "-q"], repo, env)
    return {
        "repo": repo,
        "env": env,
        "remote": section["url"],
        "v1_files": v1_files,
        "v1_local": v1_local,
    }


@pytest.fixture
def s3_boto_env(versioned, monkeypatch):
    for key, value in versioned["env"].items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


def test_resolve_reads_the_md5_dvc_recorded_at_a_revision(versioned):
    repo = versioned["repo"]
    v1 = resolve_revision(str(repo), "v1")
    head = resolve(repo=str(repo), rev="")
    assert v1 != head
    assert v1 == versioned["v1_local"]  # DVC's own hashing: local runs record the same md5
    assert head == pointer_hash((repo / "data.dvc").read_text(), "data.dvc")
    with pytest.raises(DataVersionError, match="cannot read data.dvc at no-such-tag"):
        resolve_revision(str(repo), "no-such-tag")
    with pytest.raises(ValueError, match="no dataset source"):
        resolve()


def test_fetch_by_hash_from_the_dvc_remote(versioned, s3_boto_env, tmp_path):
    md5 = resolve_revision(str(versioned["repo"]), "v1")
    full = materialise(md5, tmp_path / "full", remote=versioned["remote"])
    assert _hashes(tmp_path / "full") == versioned["v1_files"]
    assert full["videos"] == sum(1 for k in versioned["v1_files"] if k.startswith("videos/"))

    summary = materialise(md5, tmp_path / "sub", subset=2, remote=versioned["remote"])
    glosses = load_glosses(tmp_path / "full")
    assert load_glosses(tmp_path / "sub") == glosses[:2]
    kept = {f"videos/{s.video_id}.mp4" for s in load_samples(tmp_path / "sub")}
    got = {k for k in _hashes(tmp_path / "sub") if k.startswith("videos/")}
    assert got == kept and summary["videos"] == len(kept) > 0
    assert all(
        versioned["v1_files"][k] == h for k, h in _hashes(tmp_path / "sub").items() if k != METADATA
    )


def test_fetch_refuses_a_corrupted_object(versioned, s3_boto_env, s3_server, tmp_path):
    md5 = resolve_revision(str(versioned["repo"]), "v1")
    bucket, _, prefix = versioned["remote"].removeprefix("s3://").partition("/")
    listing = json.loads(s3_server.get_bytes(bucket, f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"))
    victim = next(e for e in listing if e["relpath"] == METADATA)
    key = f"{prefix}/files/md5/{victim['md5'][:2]}/{victim['md5'][2:]}"
    original = s3_server.get_bytes(bucket, key)
    s3_server.put_bytes(bucket, key, b"[]")
    try:
        with pytest.raises(DataVersionError, match="does not match its md5"):
            materialise(md5, tmp_path / "bad", remote=versioned["remote"])
    finally:
        s3_server.put_bytes(bucket, key, original)
    with pytest.raises(DataVersionError, match="cannot fetch data 0123"):
        materialise(
            "0123456789abcdef0123456789abcdef.dir", tmp_path / "x", remote=versioned["remote"]
        )


def test_remote_reader_takes_the_s3_settings(monkeypatch, tmp_path):
    """The DVC-remote reader builds its client with model/storage.py's s3_client, as every step
    does: S3_* timeouts/retries apply."""
    from model import storage

    (port,) = _free_ports(1)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",  # nothing listens there
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_MAX_ATTEMPTS": "2",
        "S3_CONNECT_TIMEOUT": "3",
        "S3_READ_TIMEOUT": "7",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    real, clients, sent = storage.s3_client, [], []

    def spy():
        c = real()
        c.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
        clients.append(c)
        return c

    monkeypatch.setattr(storage, "s3_client", spy)
    with pytest.raises(DataVersionError, match="cannot fetch data"):
        fetch_from_remote("s3://bucket/dvc", "0123456789abcdef0123456789abcdef.dir", tmp_path)
    (client,) = clients
    assert client.meta.endpoint_url == env["AWS_ENDPOINT_URL"]
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (3, 7)
    assert len(sent) == 2  # S3_MAX_ATTEMPTS counts the first try


def test_local_source_must_still_have_the_resolved_hash(tmp_path):
    data = tmp_path / "data"
    synthesize(data, classes=2, per_class=4, signers=4, progress=False)
    md5 = resolve(local_path=str(data))
    materialise(md5, tmp_path / "copy", subset=1, local_path=str(data))
    assert load_glosses(tmp_path / "copy") == load_glosses(data)[:1]
    (data / "videos" / "new.mp4").write_bytes(b"x")
    with pytest.raises(DataVersionError, match="changed: its md5 is"):
        materialise(md5, tmp_path / "again", local_path=str(data))
    with pytest.raises(ValueError, match="subset must be >= 0"):
        materialise(md5, tmp_path / "neg", subset=-1, local_path=str(data))
