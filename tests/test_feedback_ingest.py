"""Feedback becomes data: `data ingest` of a feedback prefix (corrections only, or confirmations
too; what it must skip and why; a local folder; its command-line errors), `data add` into a
dataset that then validates and gets a new md5 from `dvc add`, the same prefix again changing
nothing, and an add that refuses before writing anything."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest

import app.feedback_store as store_mod
from app.feedback_store import FeedbackStore
from components.data.dataset import load_samples, read_metadata
from components.data.feedback_ingest import ingest_feedback
from components.data.merge import add_samples
from components.data.synth import synthesize
from components.data.version import local_hash
from components.validation.validate import validate
from sign2text.cli import main
from tests.s3 import s3_env_fixture, s3_server_fixture  # noqa: F401
from tests.test_dvc_remote import DVC
from tests.test_feedback import PREFIX, _record, _stored, clips_fixture  # noqa: F401


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
