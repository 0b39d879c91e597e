"""Feedback, from the app's store to a new data version: the store on a real S3 server (and a
local folder), an outage (a relay in front of the server that refuses, then comes back on the
same port), the spool across a restart, concurrent submits; then `data ingest` of the prefix,
`data add` into a dataset, validation of the result and `dvc add` recording a new md5."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import pytest

import app.feedback_store as store_mod
from app.feedback_store import ID_PATTERN, FeedbackStore, SpoolFull
from components.data import feedback_ingest as ingest_mod
from components.data.dataset import VIDEO_ID_PATTERN, load_samples, read_metadata
from components.data.feedback_ingest import ingest_feedback
from components.data.merge import add_samples
from components.data.synth import synthesize
from components.data.version import local_hash
from components.validation.validate import validate
from sign2text.cli import main
from tests.conftest import moving_square, write_video
from tests.s3 import Relay, _free_ports, s3_env_fixture, s3_server_fixture  # noqa: F401
from tests.test_dvc_remote import DVC

PREFIX = "feedback/v1"


def _record(verdict: str = "wrong", gloss: str | None = "up", **kw) -> dict:
    rec = {"predicted": ["down", "up"], "scores": [0.7, 0.2], "mode": "word"}
    rec |= {"model": {"name": "sign2text", "version": "3"}, "verdict": verdict, "gloss": gloss}
    return rec | {"time": "2026-11-30T08:15:00.000Z"} | kw


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
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


# -- feedback becomes data ---------------------------------------------------------------------


@pytest.fixture
def feedback(s3_env, clips, tmp_path) -> dict:
    """A prefix as the app leaves it: corrections, a confirmation, and what ingest must skip."""
    bucket = s3_env.make_bucket()
    store = FeedbackStore(f"s3://{bucket}/{PREFIX}", tmp_path / "spool")
    submitted = {
        "up": store.submit(clips["mp4"], "up.mp4", _record(gloss="up")),
        "down": store.submit(clips["webm"], "down.webm", _record(gloss="down")),
        "confirmed": store.submit(clips["mp4"], "c.mp4", _record("correct", gloss="down")),
        "no_gloss": store.submit(clips["mp4"], "n.mp4", _record(gloss=None)),
        "sentence": store.submit(clips["mp4"], "s.mp4", _record(mode="sentence")),
        "gone": store.submit(clips["mp4"], "g.mp4", _record(gloss="up")),
        "escape": store.submit(clips["mp4"], "e.mp4", _record()),
        "garbage": store.submit(b"\x1a\x45\xdf\xa3 not a video", "x.mkv", _record(gloss="up")),
    }
    assert all(r["status"] == "stored" for r in submitted.values())
    ids = {k: r["id"] for k, r in submitted.items()}
    s3_env.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/videos/{ids['gone']}.mp4")
    esc = _stored(s3_env, bucket, ids["escape"]) | {"video": "../../../etc/passwd"}
    s3_env.put_bytes(bucket, f"{PREFIX}/records/{ids['escape']}.json", json.dumps(esc).encode())
    ids["broken"] = store_mod.new_id()
    s3_env.put_bytes(bucket, f"{PREFIX}/records/{ids['broken']}.json", b"{not json")
    # Names the store never writes (SeaweedFS refuses a key with '..' segments outright).
    s3_env.put_bytes(bucket, f"{PREFIX}/records/sub/{store_mod.new_id()}.json", b"{}")
    s3_env.put_bytes(bucket, f"{PREFIX}/records/notes.txt", b"{}")
    return {"uri": f"s3://{bucket}/{PREFIX}", "ids": ids, "bucket": bucket}


def _by_reason(summary: dict) -> dict[str, str]:
    return {s["where"]: s["reason"] for s in summary["skipped"]}


def test_ingest_corrections_only_then_confirmed(feedback, clips, tmp_path):
    ids = feedback["ids"]
    out = tmp_path / "fb"
    summary = ingest_feedback(feedback["uri"], out, progress=False)
    meta = read_metadata(out)
    assert [e["gloss"] for e in meta] == ["down", "up"]
    assert [[i["video_id"] for i in e["instances"]] for e in meta] == [
        [f"feedback-{ids['down']}"],
        [f"feedback-{ids['up']}"],
    ]
    inst = meta[1]["instances"][0]
    assert inst == {
        "video_id": f"feedback-{ids['up']}",
        "split": "train",
        "frame_start": 1,
        "frame_end": -1,
        "signer_id": -1,
        "source": "feedback",
        "url": f"{feedback['uri']}/videos/{ids['up']}.mp4",
        "fps": 25.0,
    }
    assert (out / "videos" / f"feedback-{ids['up']}.mp4").read_bytes() == clips["mp4"]
    webm = out / "videos" / f"feedback-{ids['down']}.mp4"  # re-encoded: a readable MPEG-4
    cap = cv2.VideoCapture(str(webm))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    n = 0
    while cap.read()[0]:
        n += 1
    # MPEG-4 part 2, which OpenCV's decoder names FMP4 whatever tag the writer gave it.
    assert (fourcc in ("FMP4", "mp4v"), n, cap.get(cv2.CAP_PROP_FPS)) == (True, 20, 25.0)
    assert webm.read_bytes()[4:8] == b"ftyp"

    skipped = _by_reason(summary)
    rec = "records/{}.json".format
    assert skipped[rec(ids["no_gloss"])] == "verdict 'wrong' without a gloss"
    assert skipped[rec(ids["sentence"])].startswith("sentence-mode feedback")
    assert skipped[rec(ids["gone"])] == f"video videos/{ids['gone']}.mp4 missing"
    assert skipped[rec(ids["escape"])].startswith("malformed record: video '../../../etc/passwd'")
    assert skipped[rec(ids["broken"])].startswith("malformed record: not valid JSON")
    assert skipped[rec(ids["garbage"])] == f"video videos/{ids['garbage']}.mkv does not decode"
    odd = [w for w, r in skipped.items() if r == "not a feedback record name"]
    assert sorted(odd)[0] == "records/notes.txt" and sorted(odd)[1].startswith("records/sub/")
    assert summary["missing_videos"] == [f"feedback-{ids['gone']}"]
    assert summary["records"] == {
        "records": 9,
        "wrong": 6,
        "correct": 1,
        "confirmations_left_out": 1,
    }
    assert summary["videos"] == {"copied": 1, "reencoded": 1, "missing": 1}
    assert sorted(p.name for p in out.iterdir()) == [
        "WLASL_v0.3.json",
        "ingest.json",
        "videos",
        "wlasl_class_list.txt",
    ]
    assert not (tmp_path / "etc").exists()

    rc = main(
        [
            "data",
            "ingest",
            feedback["uri"],
            "--out",
            str(tmp_path / "all"),
            "--confirmed",
            "--quiet",
        ]
    )
    assert rc == 0
    by_gloss = {
        e["gloss"]: [i["video_id"] for i in e["instances"]] for e in read_metadata(tmp_path / "all")
    }
    assert by_gloss == {
        "down": sorted([f"feedback-{ids['down']}", f"feedback-{ids['confirmed']}"]),
        "up": [f"feedback-{ids['up']}"],
    }


def test_ingest_a_local_feedback_folder_and_cli_errors(clips, tmp_path, capsys):
    root = tmp_path / "feedback"
    store = FeedbackStore(str(root), tmp_path / "spool")
    fid = store.submit(clips["webm"], "a.webm", _record(gloss="up"))["id"]
    assert main(["data", "ingest", str(root), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert [s.video_id for s in load_samples(tmp_path / "o")] == [f"feedback-{fid}"]
    assert main(["data", "ingest", str(root), "--out", str(tmp_path / "p"), "--top", "3"]) == 2
    assert "--top: not for a feedback source" in capsys.readouterr().err
    wlasl = tmp_path / "w"
    (wlasl / "videos").mkdir(parents=True)
    (wlasl / "WLASL_v0.3.json").write_text("[]")
    assert main(["data", "ingest", str(wlasl), "--out", str(tmp_path / "q"), "--confirmed"]) == 2
    assert "--confirmed and --split are for a feedback source" in capsys.readouterr().err


def _run(cmd: list[str], cwd: Path) -> str:
    env = os.environ | {"DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _pointer_md5(repo: Path) -> str:
    return re.search(r"md5: (\S+)", (repo / "data.dvc").read_text()).group(1)


def test_feedback_joins_the_dataset_as_a_new_dvc_version(feedback, tmp_path):
    repo = tmp_path / "repo"
    data = repo / "data"
    synthesize(data, classes=2, per_class=3, signers=3, progress=False)  # glosses up, down
    _run([DVC, "init", "--no-scm", "-q"], repo)
    _run([DVC, "add", "-q", "data"], repo)
    before = _pointer_md5(repo)
    n_before = len(load_samples(data))

    fb = tmp_path / "fb"
    ingest_feedback(feedback["uri"], fb, confirmed=True, progress=False)
    summary = add_samples(fb, data)
    assert summary["added"] == 3 and summary["new_glosses"] == []
    assert summary["by_gloss"] == {"down": 2, "up": 1}
    samples = {s.video_id: s for s in load_samples(data)}
    assert len(samples) == n_before + 3
    ids = feedback["ids"]
    assert samples[f"feedback-{ids['up']}"].gloss == "up"
    glosses = [e["gloss"] for e in read_metadata(data)]
    assert samples[f"feedback-{ids['down']}"].label == glosses.index("down")

    report = validate(data, tmp_path / "v", progress=False, cache_dir=tmp_path / "cache")
    valid = {s["video_id"] for s in json.loads((tmp_path / "v" / "valid.json").read_text())}
    assert {f"feedback-{ids[k]}" for k in ("up", "down", "confirmed")} <= valid
    assert report["quarantined"] == [] and report["valid"] == n_before + 3

    _run([DVC, "add", "-q", "data"], repo)
    after = _pointer_md5(repo)
    assert after != before and after == local_hash(data)

    # Next round: the whole prefix again. What the dataset has is left alone (the webm's
    # re-encode gives the same bytes), so nothing changes and dvc sees the same version.
    again = tmp_path / "fb2"
    ingest_feedback(feedback["uri"], again, confirmed=True, progress=False)
    assert add_samples(again, data) | {"from": None} == {
        "from": None,
        "to": str(data),
        "added": 0,
        "already_in_dataset": 3,
        "by_gloss": {},
        "new_glosses": [],
        "videos": {"copied": 0, "already_there": 0},
    }
    assert local_hash(data) == after
    # The same id under another gloss is a clash, refused.
    meta = read_metadata(again)
    meta[0]["gloss"], meta[1]["gloss"] = meta[1]["gloss"], meta[0]["gloss"]
    (again / "WLASL_v0.3.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="already has"):
        add_samples(again, data)


def test_add_refuses_before_writing_anything(clips, tmp_path, capsys):
    data = tmp_path / "data"
    synthesize(data, classes=2, per_class=3, signers=3, progress=False)
    meta_before = (data / "WLASL_v0.3.json").read_bytes()
    videos_before = sorted(p.name for p in (data / "videos").iterdir())
    root = tmp_path / "store"
    store = FeedbackStore(str(root), tmp_path / "spool")
    store.submit(clips["mp4"], "a.mp4", _record(gloss="hello"))
    store.submit(clips["mp4"], "a.mp4", _record(gloss="up"))
    fb = tmp_path / "fb"
    ingest_feedback(str(root), fb, progress=False)

    with pytest.raises(ValueError, match="glosses .* does not: 'hello'.*--new-glosses"):
        add_samples(fb, data)
    clash = tmp_path / "clash"
    ingest_feedback(str(root), clash, progress=False)
    meta = read_metadata(clash)
    meta[0]["instances"][0]["video_id"] = "00000"  # one of synth's
    (clash / "WLASL_v0.3.json").write_text(json.dumps(meta))
    (clash / "videos" / "00000.mp4").write_bytes(clips["mp4"])
    with pytest.raises(ValueError, match="'00000'"):
        add_samples(clash, data, new_glosses=True)
    (fb / "videos" / next(p.name for p in (fb / "videos").iterdir())).unlink()
    with pytest.raises(ValueError, match="without their video"):
        add_samples(fb, data, new_glosses=True)
    assert (data / "WLASL_v0.3.json").read_bytes() == meta_before
    assert sorted(p.name for p in (data / "videos").iterdir()) == videos_before

    ingest_feedback(str(root), fresh := tmp_path / "fresh", progress=False)
    # An add killed after copying a video, before the metadata: the leftover is taken as is.
    leftover = next((fresh / "videos").iterdir())
    shutil.copy2(leftover, data / "videos" / leftover.name)
    capsys.readouterr()
    rc = main(["data", "add", str(fresh), "--to", str(data), "--new-glosses"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["added"] == 2 and out["videos"] == {"copied": 1, "already_there": 1}
    assert [e["gloss"] for e in read_metadata(data)] == ["up", "down", "hello"]  # appended
