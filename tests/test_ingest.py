"""ingest: WLASL json, the real nslt_100 split file + class list, and record lists -> our layout,
top-N subsets, videos copied or hard-linked, the source left as it was."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from components.data.dataset import load_glosses, load_samples, read_metadata
from components.data.ingest import IngestError, ingest, read_class_list
from components.validation.validate import validate
from sign2text.cli import main
from tests.conftest import FIXTURES, moving_square, write_video
from tests.test_validate import _tree

NSLT = FIXTURES / "wlasl" / "nslt_100.json"
CLASSES = FIXTURES / "wlasl" / "wlasl_class_list.txt"


def _instance(vid: str, split: str = "train", **kw) -> dict:
    inst = {"bbox": [10, 10, 100, 100], "fps": 25, "frame_start": 1, "frame_end": -1}
    inst |= {"instance_id": 0, "signer_id": 1, "source": "t", "split": split, "url": ""}
    return inst | {"variation_id": 0, "video_id": vid} | kw


@pytest.fixture(scope="module")
def wlasl(tmp_path_factory) -> Path:
    """A WLASL release folder: 3 glosses in frequency order, one instance without its video."""
    root = tmp_path_factory.mktemp("wlasl")
    (root / "videos").mkdir()
    meta = []
    for g, gloss in enumerate(("book", "drink", "computer")):
        ids = [f"{g}{i:04d}" for i in range(2)]
        for i, vid in enumerate(ids):
            write_video(root / "videos" / f"{vid}.mp4", moving_square(12, seed=g * 2 + i))
        meta.append({"gloss": gloss, "instances": [_instance(v) for v in ids]})
    meta[1]["instances"].append(_instance("gone", "val"))
    (root / "WLASL_v0.3.json").write_text(json.dumps(meta))
    return root


def test_wlasl_json_top_n_hard_linked(wlasl, tmp_path):
    before = _tree(wlasl)
    out = tmp_path / "out"
    summary = ingest(wlasl, out, top=2, link=True, progress=False)
    assert _tree(wlasl) == before
    src = read_metadata(wlasl)
    assert read_metadata(out) == src[:2]  # the first N glosses, instances exactly as found
    assert (out / "wlasl_class_list.txt").read_text() == "0\tbook\n1\tdrink\n"
    assert summary["format"] == "wlasl" and summary["glosses"] == 2 and summary["instances"] == 5
    assert summary["videos"] == {"copied": 0, "linked": 4, "missing": 1}
    assert summary["missing_videos"] == ["gone"]
    for s in load_samples(out):
        if s.video_id != "gone":
            assert s.video_path(out).samefile(s.video_path(wlasl))
    assert not (out / "videos" / "20000.mp4").exists()  # gloss #2 is outside the top 2
    assert json.loads((out / "ingest.json").read_text()) == summary


def test_copy_is_a_separate_file(wlasl, tmp_path):
    ingest(wlasl / "WLASL_v0.3.json", tmp_path / "out", progress=False)
    a, b = tmp_path / "out" / "videos" / "00000.mp4", wlasl / "videos" / "00000.mp4"
    assert a.read_bytes() == b.read_bytes() and not a.samefile(b)
    assert load_glosses(tmp_path / "out") == ["book", "drink", "computer"]


def test_nslt_split_file_with_the_class_list(tmp_path):
    nslt = json.loads(NSLT.read_text())
    classes = read_class_list(CLASSES)
    assert len(classes) == 2000 and len(nslt) > 1000
    videos = tmp_path / "videos"
    videos.mkdir()
    some = sorted(nslt)[:2]
    for vid in some:
        write_video(videos / f"{vid}.mp4", moving_square(12))
    out = tmp_path / "wlasl100"
    summary = ingest(NSLT, out, videos=videos, class_list=CLASSES, progress=False)
    assert load_glosses(out) == classes[:100]  # WLASL100: the first 100 glosses
    assert summary["instances"] == len(nslt) and summary["skipped"] == []
    assert summary["videos"] == {"copied": 2, "linked": 0, "missing": len(nslt) - 2}
    assert summary["splits"] == dict(Counter(r["subset"] for r in nslt.values()))
    samples = {s.video_id: s for s in load_samples(out)}
    for vid, rec in nslt.items():
        cid, start, end = rec["action"]
        s = samples[vid]
        assert (s.label, s.gloss, s.split) == (cid, classes[cid], rec["subset"])
        assert (s.frame_start, s.frame_end, s.fps) == (start, end, 25.0)
    top10 = ingest(
        NSLT, tmp_path / "w10", videos=videos, class_list=CLASSES, top=10, progress=False
    )
    assert top10["glosses"] == 10
    assert top10["instances"] == sum(r["action"][0] < 10 for r in nslt.values())


def _records(videos: Path) -> list[dict]:
    recs = []
    for i, (gloss, label, split) in enumerate(
        [("book", 0, "train"), ("book", 0, "val"), ("drink", 1, "train"), ("drink", 1, "test")]
    ):
        vid = f"r{i}"
        write_video(videos / f"{vid}.mp4", moving_square(12, seed=i))
        recs.append(
            {
                "gloss": gloss,
                "label": label,
                "video_id": vid,
                "frame_start": 1,
                "frame_end": 12,
                "split": split,
                "signer_id": i,
                "variation_id": 0,
                "bbox": [5, 5, 60, 60],
            }
        )
    for vid in ("r4", "r5"):
        write_video(videos / f"{vid}.mp4", moving_square(12, seed=int(vid[1])))
    recs.append(recs[2] | {"video_id": "r4", "label": 7})  # drink's record with a wrong label
    recs.append({k: v for k, v in recs[0].items() if k != "gloss"} | {"video_id": "r5"})
    recs.append(recs[0] | {"gloss": "nobody", "label": None, "video_id": "r6"})
    return recs


def test_record_lists_json_and_jsonl_then_validate(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    recs = _records(videos)
    (tmp_path / "records.json").write_text(json.dumps(recs))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    a = ingest(tmp_path / "records.json", tmp_path / "a", progress=False)
    b = ingest(tmp_path / "records.jsonl", tmp_path / "b", progress=False)
    assert read_metadata(tmp_path / "a") == read_metadata(tmp_path / "b")
    assert a["format"] == b["format"] == "records" and a["instances"] == 6
    assert [s["video_id"] for s in a["skipped"]] == ["r6"]  # a gloss no record gives a label
    meta = read_metadata(tmp_path / "a")
    assert [e["gloss"] for e in meta] == ["book", "drink"]
    by_id = {i["video_id"]: (g, i) for g, e in enumerate(meta) for i in e["instances"]}
    assert by_id["r5"][0] == 0 and by_id["r4"][0] == 1  # placed by gloss, or by label if none
    assert by_id["r4"][1] == {k: v for k, v in recs[4].items() if k != "gloss"}  # label 7 kept

    report = validate(
        tmp_path / "a",
        tmp_path / "v",
        max_bad_fraction=0.5,
        progress=False,
        cache_dir=tmp_path / "cache",
        min_frames=4,
    )
    assert [(q["video_id"], q["reasons"]) for q in report["quarantined"]] == [("r4", ["bad_label"])]
    assert report["valid"] == 5


def test_bad_sources_are_refused_with_one_line(wlasl, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(IngestError, match="not empty"):
        ingest(wlasl, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(IngestError, match="give the class list"):
        ingest(NSLT, tmp_path / "n", progress=False)
    (tmp_path / "odd.json").write_text("[1, 2, 3]")
    with pytest.raises(IngestError, match="cannot tell the format"):
        ingest(tmp_path / "odd.json", tmp_path / "o", progress=False)
    (tmp_path / "classes.txt").write_text("0\tbook\n2\tdrink\n")
    with pytest.raises(IngestError, match=r"classes.txt:2: expected '1<TAB>gloss'"):
        ingest(NSLT, tmp_path / "c", class_list=tmp_path / "classes.txt", progress=False)
    assert main(["data", "ingest", str(tmp_path / "nothing.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
