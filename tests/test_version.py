"""The version step against a real git + DVC repository and a real S3 server on loopback: the data
md5 of a revision, the local hash agreeing with `dvc add`, a subset fetched by hash straight from
the DVC remote (byte-identical, each file's md5 checked), and clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
from tests.s3 import CountingProxy, _free_ports, s3_server_fixture  # noqa: F401
from tests.test_dvc_remote import DVC, _hashes, _remote_repo, _run

ROOT = Path(__file__).resolve().parents[1]


def _key(prefix: str, md5: str) -> str:
    """An object's key in a DVC 3 remote, as `dvc push` wrote it (the code asks DVC for it)."""
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"


def _listing(s3_server, remote: str, md5: str) -> list[dict]:
    bucket, _, prefix = remote.removeprefix("s3://").partition("/")
    return json.loads(s3_server.get_bytes(bucket, _key(prefix, md5)))


def _put_listing(s3_server, remote: str, entries: list[dict]) -> str:
    """Store `entries` as a folder listing under the md5 DVC computes for it; returns that md5."""
    raw = json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True).encode()
    md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest() + ".dir"
    bucket, _, prefix = remote.removeprefix("s3://").partition("/")
    s3_server.put_bytes(bucket, _key(prefix, md5), raw)
    return md5


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


def test_the_fetch_is_parallel_and_gets_each_object_once(
    versioned, s3_boto_env, s3_server, monkeypatch, tmp_path
):
    md5 = resolve_revision(str(versioned["repo"]), "v1")
    listing = _listing(s3_server, versioned["remote"], md5)
    with CountingProxy(s3_server.endpoint, delay=0.2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        materialise(md5, tmp_path / "full", remote=versioned["remote"])
    assert _hashes(tmp_path / "full") == versioned["v1_files"]  # and nothing else left there
    assert proxy.max_in_flight > 1  # each GET waits 0.2 s: only a parallel fetch overlaps them
    got = [p.rsplit("/", 2) for p in proxy.gets()]
    files = sorted(p[1] + p[2] for p in got if p[1] + p[2] in {e["md5"] for e in listing})
    assert files == sorted(e["md5"] for e in listing)  # every file once, none twice


def test_an_interrupted_fetch_downloads_only_what_is_missing(
    versioned, s3_boto_env, s3_server, monkeypatch, tmp_path
):
    md5 = resolve_revision(str(versioned["repo"]), "v1")
    out = tmp_path / "out"
    fetch_from_remote(versioned["remote"], md5, out)
    listing = _listing(s3_server, versioned["remote"], md5)
    videos = sorted(e["relpath"] for e in listing if e["relpath"].startswith("videos/"))
    gone, partial = videos[0], videos[1]  # one never fetched, one cut short at its own name
    (out / gone).unlink()
    (out / partial).write_bytes((out / partial).read_bytes()[:100])
    with CountingProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        assert fetch_from_remote(versioned["remote"], md5, out) == len(listing)
    assert _hashes(out) == versioned["v1_files"]
    by_md5 = {e["md5"]: e["relpath"] for e in listing}
    got = {by_md5.get("".join(p.rsplit("/", 2)[1:])) for p in proxy.gets()} - {None}
    assert got == {gone, partial}  # what was there and right is kept, not downloaded again


def test_fetch_refuses_a_corrupted_object(versioned, s3_boto_env, s3_server, tmp_path):
    md5 = resolve_revision(str(versioned["repo"]), "v1")
    bucket, _, prefix = versioned["remote"].removeprefix("s3://").partition("/")
    for victim in (METADATA, "videos/"):
        entry = next(
            e for e in _listing(s3_server, versioned["remote"], md5) if victim in e["relpath"]
        )
        key = _key(prefix, entry["md5"])
        original = s3_server.get_bytes(bucket, key)
        s3_server.put_bytes(bucket, key, b"[]")
        out = tmp_path / victim.strip("/")
        try:
            with pytest.raises(DataVersionError, match=f"{entry['relpath']}: content does not"):
                materialise(md5, out, remote=versioned["remote"])
        finally:
            s3_server.put_bytes(bucket, key, original)
        assert not (out / entry["relpath"]).exists()  # the bad bytes never land under its name
        assert not [p for p in out.rglob("*.part")]
    with pytest.raises(DataVersionError, match="cannot fetch data 0123"):
        materialise(
            "0123456789abcdef0123456789abcdef.dir", tmp_path / "x", remote=versioned["remote"]
        )


def test_a_missing_object_fails_naming_its_file(versioned, s3_boto_env, s3_server, tmp_path):
    md5 = resolve_revision(str(versioned["repo"]), "v1")
    bucket, _, prefix = versioned["remote"].removeprefix("s3://").partition("/")
    entry = next(
        e for e in _listing(s3_server, versioned["remote"], md5) if "videos/" in e["relpath"]
    )
    key = _key(prefix, entry["md5"])
    original = s3_server.get_bytes(bucket, key)
    s3_server.client().delete_object(Bucket=bucket, Key=key)
    try:
        with pytest.raises(DataVersionError, match=f"{entry['relpath']}: cannot fetch its object"):
            materialise(md5, tmp_path / "out", remote=versioned["remote"])
    finally:
        s3_server.put_bytes(bucket, key, original)


def test_the_listing_is_checked_and_confined(versioned, s3_boto_env, s3_server, tmp_path):
    """A listing that does not hash to its md5 (an entry dropped), or whose paths or md5s would
    reach outside the target or the remote's store, is refused before anything is fetched."""
    md5 = resolve_revision(str(versioned["repo"]), "v1")
    remote = versioned["remote"]
    bucket, _, prefix = remote.removeprefix("s3://").partition("/")
    listing = _listing(s3_server, remote, md5)
    original = s3_server.get_bytes(bucket, _key(prefix, md5))
    s3_server.put_bytes(bucket, _key(prefix, md5), json.dumps(listing[1:]).encode())
    try:
        with pytest.raises(DataVersionError, match=f"listing of {md5} does not match its md5"):
            fetch_from_remote(remote, md5, tmp_path / "short")
    finally:
        s3_server.put_bytes(bucket, _key(prefix, md5), original)
    good = listing[0]
    bad_md5 = _put_listing(s3_server, remote, [{**good, "md5": "../../../" + good["md5"][9:]}])
    with pytest.raises(DataVersionError, match="no md5 in the DVC listing"):
        fetch_from_remote(remote, bad_md5, tmp_path / "md5")
    bad_path = _put_listing(s3_server, remote, [{**good, "relpath": "../escape.json"}])
    with pytest.raises(DataVersionError, match="unsafe path in the DVC listing"):
        fetch_from_remote(remote, bad_path, tmp_path / "path")
    assert not (tmp_path / "escape.json").exists()
    with pytest.raises(DataVersionError, match="not a DVC folder md5"):
        fetch_from_remote(remote, "../" + md5, tmp_path / "x")


def test_no_code_hard_codes_the_remote_layout():
    """The remote's layout (DVC 3's files/md5/ab/cdef...) is DVC's to know: the code asks DVC."""
    found = [
        str(p.relative_to(ROOT))
        for top in ("components", "model", "pipelines", "sign2text", "tools", "app")
        for p in (ROOT / top).rglob("*.py")
        if "files/md5" in p.read_text(encoding="utf-8")
    ]
    assert found == []


def test_remote_reader_takes_the_s3_settings(monkeypatch, tmp_path):
    """DVC's S3 filesystem for the remote gets model/storage.py's client settings, as every step's
    client does: endpoint, S3_* timeouts, S3_MAX_ATTEMPTS counting the first try."""
    from components.data import version

    (port,) = _free_ports(1)
    empty = tmp_path / "aws.cfg"  # dvc-s3 wants a regular file, not /dev/null
    empty.touch()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",  # nothing listens there
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_MAX_ATTEMPTS": "2",
        "S3_CONNECT_TIMEOUT": "3",
        "S3_READ_TIMEOUT": "7",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    real, clients, sent = version.remote_odb, [], []

    def spy(remote):
        odb = real(remote)
        c = odb.fs.fs.s3  # the aiobotocore client under DVC's filesystem
        c.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
        clients.append(c)
        return odb

    monkeypatch.setattr(version, "remote_odb", spy)
    with pytest.raises(DataVersionError, match="cannot fetch data"):
        fetch_from_remote("s3://bucket/dvc", "0123456789abcdef0123456789abcdef.dir", tmp_path)
    (client,) = clients
    assert client.meta.endpoint_url == env["AWS_ENDPOINT_URL"]
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (3, 7)
    assert len(sent) == 2  # S3_MAX_ATTEMPTS counts the first try; s3fs adds none


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
