import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.data import synth, synth_render

SMALL = {"classes": 4, "per_class": 6, "signers": 4}
FIELDS = {
    "bbox": list,
    "fps": int,
    "frame_end": int,
    "frame_start": int,
    "instance_id": int,
    "signer_id": int,
    "source": str,
    "split": str,
    "url": str,
    "variation_id": int,
    "video_id": str,
}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synth.synthesize(out, **SMALL, progress=False)
    return out


def _read(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _instances(out: Path):
    for label, entry in enumerate(json.loads((out / "WLASL_v0.3.json").read_text())):
        for inst in entry["instances"]:
            yield label, entry["gloss"], inst


def test_wlasl_schema_and_videos(small):
    data = json.loads((small / "WLASL_v0.3.json").read_text())
    assert isinstance(data, list) and len(data) == SMALL["classes"]
    glosses = [e["gloss"] for e in data]
    assert len(set(glosses)) == len(glosses)
    assert all(g == g.lower() and g.isalpha() for g in glosses)
    ids = [inst["video_id"] for _, _, inst in _instances(small)]
    assert len(ids) == len(set(ids)) == SMALL["classes"] * SMALL["per_class"]
    for _, _, inst in _instances(small):
        assert set(inst) == set(FIELDS)
        for key, typ in FIELDS.items():
            assert type(inst[key]) is typ, key
        assert len(inst["video_id"]) == 5 and inst["video_id"].isdigit()
        assert inst["fps"] == 25 and inst["source"] == "synth" and inst["variation_id"] == 0
        assert inst["split"] in {"train", "val", "test"}
        assert inst["url"].endswith(inst["video_id"])
        cap = cv2.VideoCapture(str(small / "videos" / f"{inst['video_id']}.mp4"))
        assert cap.isOpened()
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        ok, frame = cap.read()
        cap.release()
        assert ok and frame.shape == (h, w, 3)
        assert inst["frame_start"] >= 1
        if inst["frame_end"] != -1:
            assert inst["frame_start"] <= inst["frame_end"] <= n
        else:
            assert inst["frame_start"] < n
        x0, y0, x1, y1 = inst["bbox"]
        assert all(type(v) is int for v in inst["bbox"])
        assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1


def test_side_files(small):
    meta = json.loads((small / "synth_classes.json").read_text())
    assert meta["params"] == {"seed": 0, **SMALL}
    assert [c["label"] for c in meta["classes"]] == list(range(SMALL["classes"]))
    assert {"gloss", "shape", "motion", "direction"} <= set(meta["classes"][0])
    lines = (small / "wlasl_class_list.txt").read_text().splitlines()
    glosses = [c["gloss"] for c in meta["classes"]]
    assert lines == [f"{i}\t{g}" for i, g in enumerate(glosses)]
    pairs = json.loads((small / "reversed_pairs.json").read_text())["pairs"]
    assert pairs == [glosses[0:2], glosses[2:4]]


def test_first_pairs_differ_in_path_and_shape():
    specs = [synth_render.class_spec(c) for c in range(synth_render.MAX_CLASSES)]
    assert len({(s.path, s.shape, s.direction) for s in specs}) == synth_render.MAX_CLASSES
    assert len({s.gloss for s in specs}) == synth_render.MAX_CLASSES
    first = specs[0:10:2]  # one class per pair
    assert len({s.path for s in first}) == 5
    assert len({s.shape for s in first[:4]}) == 4


def test_splits_disjoint_by_signer_and_cover_every_class(small):
    by_split: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    classes: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for label, _, inst in _instances(small):
        by_split[inst["split"]].add(inst["signer_id"])
        classes[inst["split"]].add(label)
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"])
    assert not by_split["val"] & by_split["test"]
    assert all(c == set(range(SMALL["classes"])) for c in classes.values())
    assert synth.split_signers(8) == {"train": [0, 1, 2, 3, 4], "val": [5], "test": [6, 7]}


def test_same_seed_identical_other_seed_differs(small, tmp_path):
    synth.synthesize(tmp_path / "again", **SMALL, progress=False)
    synth.synthesize(tmp_path / "other", **SMALL, seed=1, progress=False)
    first = _hashes(small)
    assert len(first) == SMALL["classes"] * SMALL["per_class"] + 4
    assert _hashes(tmp_path / "again") == first
    other = _hashes(tmp_path / "other")
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first if k.endswith(".mp4"))


@pytest.mark.parametrize("pair", range(synth_render.MAX_CLASSES // 2))
def test_reversed_pair_is_time_reversal(pair):
    a, b = synth_render.class_spec(2 * pair), synth_render.class_spec(2 * pair + 1)
    assert (a.path, a.shape) == (b.path, b.shape) and a.direction != b.direction
    look = synth_render.signer_look(0, pair % 3)
    fa, _ = synth_render.render_clip(a, look, (192, 144), 25)
    fb, _ = synth_render.render_clip(b, look, (192, 144), 25)
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb[::-1], strict=True))
    assert np.array_equal(fa[12], fb[12])  # the middle frame cannot tell the pair apart
    assert not np.array_equal(fa[6], fb[6])  # but the motion can
    if a.path != "circle":  # a full circle starts and ends at the same place
        assert not np.array_equal(fa[0], fb[0])


def test_idle_frames_show_hand_at_rest():
    look = synth_render.signer_look(0, 0)
    frames, _ = synth_render.render_clip(
        synth_render.class_spec(0), look, (160, 160), 17, n_pre=4, n_post=3
    )
    assert len(frames) == 24
    idle, sign = frames[:4] + frames[-3:], frames[4:-3]
    assert all(np.array_equal(idle[0], f) for f in idle)
    for f in sign:
        assert np.abs(f.astype(int) - idle[0]).sum(-1).astype(bool).sum() > 20


def _moved(a: np.ndarray, b: np.ndarray) -> int:
    # The blur hides encoding artefacts and the per-frame jitter; a hand that moved away does not.
    blur = [cv2.GaussianBlur(x, (0, 0), 3).astype(int) for x in (a, b)]
    return int(np.abs(blur[0] - blur[1]).max())


def test_idle_frames_in_videos(small):
    for _, _, inst in _instances(small):
        frames = _read(small / "videos" / f"{inst['video_id']}.mp4")
        start = inst["frame_start"] - 1
        end = len(frames) if inst["frame_end"] == -1 else inst["frame_end"]
        rest = frames[start - 1]
        assert all(_moved(rest, f) < 75 for f in frames[:start] + frames[end:])
        assert all(_moved(rest, f) > 80 for f in frames[start + 1 : end - 1])
        # Open-ended clips (frame_end == -1) stop mid-sign; the others end at rest again.
        assert (_moved(rest, frames[-1]) > 80) == (inst["frame_end"] == -1)


def test_frame_sizes_vary(small):
    shapes = set()
    for _, _, inst in _instances(small):
        cap = cv2.VideoCapture(str(small / "videos" / f"{inst['video_id']}.mp4"))
        shapes.add(
            (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        )
        cap.release()
    assert len(shapes) >= 2 and len({round(w / h, 2) for w, h in shapes}) >= 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": 1}, "classes"),
        ({"classes": synth_render.MAX_CLASSES + 1}, "classes"),
        ({"signers": 2}, "signers"),
        ({"per_class": 2}, "per_class"),
        ({"per_class": 0}, "per_class"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.synthesize(tmp_path / "out", **{**SMALL, **kwargs}, progress=False)
    assert not (tmp_path / "out").exists()


def test_refuses_foreign_dir_but_overwrites_previous_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a previous synth output"):
        synth.synthesize(foreign, **SMALL, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        synth.synthesize(tmp_path / "file", **SMALL, progress=False)

    out = tmp_path / "out"
    synth.synthesize(out, classes=4, per_class=8, signers=4, progress=False)
    summary = synth.synthesize(out, **SMALL, progress=False)
    assert summary["videos"] == 24 and sum(summary["splits"].values()) == 24
    assert len(list((out / "videos").iterdir())) == 24  # stale videos of the first run are gone


@pytest.mark.slow
def test_default_size_is_small_and_fast(tmp_path):
    t0 = time.perf_counter()
    summary = synth.synthesize(tmp_path / "d", progress=False)
    assert time.perf_counter() - t0 < 60
    assert summary["splits"] == {"train": 300, "val": 60, "test": 120}
    ends = [inst["frame_end"] for _, _, inst in _instances(tmp_path / "d")]
    assert 0.1 < ends.count(-1) / len(ends) < 0.3
    assert sum(p.stat().st_size for p in (tmp_path / "d").rglob("*")) < 20e6
