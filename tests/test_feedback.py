"""Feedback, the app's store: on a real S3 server (and a local folder) it writes the video then
its record under names of its own; through an outage (a relay in front of the server that refuses,
then comes back on the same port), a closed port or refused keys it queues in a bounded spool that
survives a restart and is sent on flush; concurrent submits and flushes lose nothing; its names
are the ones ingest reads. Turning stored feedback into a new data version is in
test_feedback_ingest.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time

import cv2
import pytest

import app.feedback_store as store_mod
from app.feedback_store import ID_PATTERN, FeedbackStore, SpoolFull
from components.data import feedback_ingest as ingest_mod
from components.data.dataset import VIDEO_ID_PATTERN
from tests.conftest import moving_square, write_video
from tests.s3 import Relay, _free_ports, s3_env_fixture, s3_server_fixture  # noqa: F401

PREFIX = "feedback/v1"


def _record(verdict: str = "wrong", gloss: str | None = "up", **kw) -> dict:
    rec = {"predicted": ["down", "up"], "scores": [0.7, 0.2], "mode": "word"}
    rec |= {"model": {"name": "sign2text", "version": "3"}, "verdict": verdict, "gloss": gloss}
    return rec | {"time": "2026-11-30T08:15:00.000Z"} | kw


@pytest.fixture(scope="module", name="clips")
def clips_fixture(tmp_path_factory) -> dict[str, bytes]:
    """An mp4 and a webm (VP8) of 20 frames at 160x120: enough for validation's limits."""
    d = tmp_path_factory.mktemp("clips")
    mp4 = write_video(d / "a.mp4", moving_square(20, seed=1))
    webm = d / "b.webm"
    writer = cv2.VideoWriter(str(webm), cv2.VideoWriter_fourcc(*"VP80"), 25, (160, 120))
    assert writer.isOpened()
    for f in moving_square(20, seed=2):
        writer.write(f)
    writer.release()
    return {"mp4": mp4.read_bytes(), "webm": webm.read_bytes()}


@pytest.fixture
def relay(s3_env, monkeypatch):
    r = Relay(s3_env.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", r.endpoint)
    yield r
    r.down()


def _stored(server, bucket: str, fid: str) -> dict:
    return json.loads(server.get_bytes(bucket, f"{PREFIX}/records/{fid}.json"))


# -- the store ---------------------------------------------------------------------------------


def test_submit_writes_the_video_then_its_record(s3_env, clips, tmp_path):
    bucket = s3_env.make_bucket()
    store = FeedbackStore(f"s3://{bucket}/{PREFIX}", tmp_path / "spool")
    rec = _record(id="../../chosen-by-client", video="elsewhere", stored_at="never")
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    out = store.submit(clips["webm"], "C:\\Users\\x\\My Clip.WEBM", rec)
    assert out["status"] == "stored" and re.match(ID_PATTERN, out["id"]), out
    fid = out["id"]
    assert s3_env.keys(bucket) == [f"{PREFIX}/records/{fid}.json", f"{PREFIX}/videos/{fid}.webm"]
    assert s3_env.get_bytes(bucket, f"{PREFIX}/videos/{fid}.webm") == clips["webm"]
    stored = _stored(s3_env, bucket, fid)
    stored_at = dt.datetime.fromisoformat(stored.pop("stored_at"))
    assert stored_at.utcoffset() == dt.timedelta(0) and stored_at >= before
    # The caller's fields as given; id, video and stored_at are the store's, never the client's.
    assert stored == _record() | {"id": fid, "video": f"videos/{fid}.webm"}
    assert store.pending() == 0 and not any((tmp_path / "spool").iterdir())

    for name, ext in (
        ("x.MP4", ".mp4"),
        ("clip.mov", ".mov"),
        ("noext", ".bin"),
        ("a.exe", ".bin"),
        ("", ".bin"),
    ):
        fid = store.submit(b"\0video", name, _record())["id"]
        assert _stored(s3_env, bucket, fid)["video"] == f"videos/{fid}{ext}"


def test_ids_are_unique_time_sortable_and_safe_file_names():
    ids = [store_mod.new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.match(ID_PATTERN, i) and re.match(VIDEO_ID_PATTERN, i) for i in ids)
    assert ids == sorted(ids, key=lambda i: i[:16])  # by their UTC second


def test_local_directory_store_has_the_same_layout(clips, tmp_path):
    root = tmp_path / "feedback"
    store = FeedbackStore(str(root), tmp_path / "spool")
    fid = store.submit(clips["mp4"], "a.mp4", _record())["id"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        f"records/{fid}.json",
        f"videos/{fid}.mp4",
    ]
    stored = json.loads((root / "records" / f"{fid}.json").read_text())
    assert stored.pop("stored_at") and stored == _record() | {
        "id": fid,
        "video": f"videos/{fid}.mp4",
    }
    assert (root / "videos" / f"{fid}.mp4").read_bytes() == clips["mp4"]


@pytest.mark.parametrize(
    "video, record",
    [
        (b"", _record()),
        ("not bytes", _record()),
        (b"v", {"scores": [float("nan")]}),  # NaN is not JSON
        (b"v", {"when": dt.datetime.now()}),
        (b"v", ["not", "a", "dict"]),
    ],
)
def test_bad_arguments_raise_and_keep_nothing(video, record, tmp_path):
    store = FeedbackStore(str(tmp_path / "fb"), tmp_path / "spool")
    with pytest.raises(ValueError):
        store.submit(video, "a.mp4", record)
    assert not (tmp_path / "fb").exists() and store.pending() == 0


def test_bad_uris_are_refused(tmp_path):
    for uri in ("s3://bucket", "s3://bucket/", "s3://b/a/../c", "gs://b/p", ""):
        with pytest.raises(ValueError):
            FeedbackStore(uri, tmp_path / "spool")


def test_store_down_queues_and_flush_sends_when_it_is_back(s3_env, relay, clips, tmp_path):
    bucket = s3_env.make_bucket()
    spool = tmp_path / "spool"
    store = FeedbackStore(f"s3://{bucket}/{PREFIX}", spool)
    relay.down()
    first = store.submit(clips["mp4"], "a.mp4", _record(gloss="up"))
    assert first["status"] == "queued" and "store unavailable" in first["reason"], first
    assert "127.0.0.1" not in first["reason"]  # the page may show it: no internal address
    t0 = time.monotonic()
    second = store.submit(clips["webm"], "b.webm", _record(gloss="down"))
    assert second["status"] == "queued" and time.monotonic() - t0 < 1  # not tried again yet
    assert store.pending() == 2 and s3_env.keys(bucket) == []
    assert store.flush() == 0 and store.pending() == 2  # still down: nothing sent, nothing lost

    entry = spool / first["id"]
    assert sorted(p.name for p in entry.iterdir()) == ["record.json", "video.mp4"]
    assert (entry / "video.mp4").read_bytes() == clips["mp4"]

    # A restart: a new store on the same spool sees both, and sends them once S3 is back.
    relay.up()
    again = FeedbackStore(f"s3://{bucket}/{PREFIX}", spool)
    assert again.pending() == 2
    assert again.flush() == 2 and again.pending() == 0 and store.pending() == 0
    for r, gloss, ext in ((first, "up", ".mp4"), (second, "down", ".webm")):
        stored = _stored(s3_env, bucket, r["id"])
        assert stored["gloss"] == gloss and stored["video"] == f"videos/{r['id']}{ext}"
    assert s3_env.get_bytes(bucket, f"{PREFIX}/videos/{second['id']}.webm") == clips["webm"]
    assert not any(spool.iterdir())

    # The first store still waits out its retry window; a flush that gets through ends it.
    assert store.submit(b"v", "c.mp4", _record())["status"] == "queued"
    assert store.flush() == 1
    assert store.submit(b"v", "d.mp4", _record())["status"] == "stored"


def test_a_closed_port_queues_and_the_spool_is_bounded(s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_ports(1)[0]}")
    store = FeedbackStore("s3://nowhere/fb", tmp_path / "spool", max_spool_bytes=3000)
    assert store.submit(b"x" * 1000, "a.mp4", _record())["status"] == "queued"
    with pytest.raises(SpoolFull, match="spool is full"):
        store.submit(b"x" * 2000, "a.mp4", _record())
    assert store.pending() == 1  # the refused one was never acknowledged, so nothing is lost


def test_a_store_that_refuses_queues_too(s3_env, monkeypatch, tmp_path):
    bucket = s3_env.make_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = FeedbackStore(f"s3://{bucket}/fb", tmp_path / "spool")
    out = store.submit(b"v", "a.mp4", _record())
    assert out["status"] == "queued" and "SignatureDoesNotMatch" in out["reason"], out
    assert s3_env.keys(bucket) == []
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)  # the keys put right
    assert store.flush() == 1 and len(s3_env.keys(bucket)) == 2


def test_spool_leftovers_and_unreadable_entries(tmp_path):
    spool = tmp_path / "spool"
    store = FeedbackStore(str(tmp_path / "down"), spool)
    (tmp_path / "down").write_text("a file where the store's folder should be")
    ok = store.submit(b"v", "a.mp4", _record())["id"]
    bad = store.submit(b"v", "a.mp4", _record())["id"]
    assert store.pending() == 2
    (spool / bad / "record.json").write_text("{half a rec")
    # A crash while spooling leaves a temp folder: never acknowledged, never sent; one older
    # than an hour is removed by the next start (a younger one may be a write in progress).
    old, young = spool / ".tmp-20260101T000000Z-000000000000", spool / ".tmp-young"
    old.mkdir()
    young.mkdir()
    os.utime(old, (time.time() - 7200,) * 2)
    (tmp_path / "down").unlink()
    store = FeedbackStore(str(tmp_path / "down"), spool)
    assert store.flush() == 1 and store.pending() == 0
    assert (tmp_path / "down" / "records" / f"{ok}.json").is_file()
    assert [p.name[: len(bad)] for p in (spool / ".broken").iterdir()] == [bad]  # kept, aside
    assert not old.exists() and young.is_dir()


def test_concurrent_submits_and_flushes(s3_env, relay, clips, tmp_path):
    bucket = s3_env.make_bucket()
    store = FeedbackStore(f"s3://{bucket}/{PREFIX}", tmp_path / "spool", retry_after_s=0)
    relay.down()
    queued = [store.submit(clips["mp4"], "q.mp4", _record(n=i))["id"] for i in range(4)]
    relay.up()
    results: list[dict] = []
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(4):
                results.append(store.submit(clips["webm"], "c.webm", _record(n=100 * t + i)))
                store.flush()
        except BaseException as e:  # the assertion below names it
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 32
    store.flush()
    ids = queued + [r["id"] for r in results]
    assert len(set(ids)) == 36 and store.pending() == 0
    keys = s3_env.keys(bucket, f"{PREFIX}/records/")
    assert sorted(keys) == sorted(f"{PREFIX}/records/{i}.json" for i in ids)
    client = s3_env.client()  # one client: building one per read costs more than the read
    got = [client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
    expected = [*range(4), *(100 * t + i for t in range(8) for i in range(4))]
    assert sorted(json.loads(g)["n"] for g in got) == sorted(expected)


def test_ingest_and_store_agree_on_names():
    assert ingest_mod.ID_PATTERN == store_mod.ID_PATTERN
    assert ingest_mod.VIDEO_EXTS == (*store_mod.VIDEO_TYPES, store_mod.OTHER_EXT)
    assert ingest_mod.RECORDS_DIR + "/" == store_mod.RECORDS
