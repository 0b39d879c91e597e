"""convert: WLASL layout -> deterministic, atomic WebDataset shards that training reads back."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

import components.conversion.convert as conv
from components.conversion.convert import convert, iter_samples, read_manifest
from components.data.dataset import load_glosses, load_samples
from components.data.synth import synthesize
from model.video.clip import PreprocessConfig
from model.video.decode import count_frames
from tests.conftest import moving_square, write_video

# Synth clips are 126-160 px on the short side: 112 shrinks them all, and a 16:9 one comes out
# 199 px wide, which exercises the odd-size padding around the mp4 encoder.
PRE = PreprocessConfig(num_frames=16, resize=112, crop=96)
SHARD = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, classes=4, per_class=6, signers=4, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def shards(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    convert(dataset, out, PRE, shard_size=SHARD, progress=False)
    return out


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_manifest_counts_and_hashes(dataset, shards):
    m = read_manifest(shards)
    samples = load_samples(dataset)
    assert {k: v["samples"] for k, v in m["splits"].items()} == Counter(s.split for s in samples)
    assert m["skipped"] == [] and m["preprocess"] == PRE.to_dict()
    listed = []
    for split, info in m["splits"].items():
        assert sum(sh["samples"] for sh in info["shards"]) == info["samples"]
        for i, sh in enumerate(info["shards"]):
            data = (shards / sh["name"]).read_bytes()
            assert sh["name"] == f"{split}-{i:06d}.tar" and 0 < sh["samples"] <= SHARD
            assert (len(data), hashlib.sha256(data).hexdigest()) == (sh["bytes"], sh["sha256"])
            listed.append(sh)
    assert set(_tars(shards)) == {sh["name"] for sh in listed}
    assert m["shard_bytes"] == sum(sh["bytes"] for sh in listed)
    assert m["source_bytes"] == sum(s.video_path(dataset).stat().st_size for s in samples)
    hashes = "\n".join(sorted(sh["sha256"] for sh in listed))
    assert m["content_hash"] == hashlib.sha256(hashes.encode()).hexdigest()


def test_iter_samples_trimmed_resized_and_labelled(dataset, shards):
    by_id = {s.video_id: s for s in load_samples(dataset)}
    glosses = load_glosses(dataset)
    seen = []
    for split in read_manifest(shards)["splits"]:
        ids = []
        for meta, frames in iter_samples(shards, split):
            s = by_id[meta["video_id"]]
            end = s.frame_end if s.frame_end != -1 else count_frames(s.video_path(dataset))
            assert (meta["frame_start"], meta["frame_end"]) == (s.frame_start, end)
            assert frames.dtype == np.uint8 and frames.shape[-1] == 3
            assert frames.shape == (end - s.frame_start + 1, meta["height"], meta["width"], 3)
            assert min(frames.shape[1:3]) == PRE.resize
            assert (meta["label"], meta["gloss"], meta["split"], meta["signer_id"]) == (
                s.label,
                glosses[s.label],
                split,
                s.signer_id,
            )
            ids.append(meta["video_id"])
        assert ids == sorted(ids)
        seen += ids
    assert sorted(seen) == sorted(by_id)
    assert any(meta["width"] % 2 for meta, _ in iter_samples(shards, "train"))  # padding covered


def test_one_process_and_several_give_identical_bytes(dataset, shards, tmp_path):
    """Convert on every core (the default: components/infra/cpus.py) writes what one process
    writes, byte for byte, whatever order the workers finish in."""
    for workers in (1, 3):
        out = tmp_path / str(workers)
        convert(dataset, out, PRE, shard_size=SHARD, progress=False, workers=workers)
        assert _tars(out) == _tars(shards), workers
        assert (out / "manifest.json").read_bytes() == (shards / "manifest.json").read_bytes()


def test_same_input_gives_identical_bytes(dataset, shards, tmp_path):
    m = convert(dataset, tmp_path, PRE, shard_size=SHARD, progress=False)
    assert m["content_hash"] == read_manifest(shards)["content_hash"]
    assert _tars(tmp_path) == _tars(shards)
    assert (tmp_path / "manifest.json").read_bytes() == (shards / "manifest.json").read_bytes()


def test_shards_are_webdataset(dataset, shards):
    urls = [str(p) for p in sorted(shards.glob("*.tar"))]
    got = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}
    assert set(got) == {s.video_id for s in load_samples(dataset)}
    for key, s in got.items():
        assert json.loads(s["json"])["video_id"] == key and s["mp4"][4:8] == b"ftyp"


def test_corrupt_video_is_skipped_with_reason(dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    victim = load_samples(root)[5]
    victim.video_path(root).write_text("this is not a video\n")
    m = convert(root, tmp_path / "out", PRE, shard_size=SHARD, progress=False)
    assert [s["video_id"] for s in m["skipped"]] == [victim.video_id]
    assert "not a readable video" in m["skipped"][0]["reason"]
    assert str(tmp_path) not in m["skipped"][0]["reason"]  # manifests must not depend on mounts
    assert sum(v["samples"] for v in m["splits"].values()) == len(load_samples(root)) - 1
    ids = [meta["video_id"] for meta, _ in iter_samples(tmp_path / "out", victim.split)]
    assert victim.video_id not in ids


def test_crash_leaves_no_partial_files(dataset, tmp_path, monkeypatch):
    convert(dataset, tmp_path, PRE, shard_size=2, progress=False)  # an older, finer run
    train = sorted(s.video_id for s in load_samples(dataset) if s.split == "train")
    real = conv._encode

    def encode(frames, fps, key):  # in-process (workers=1), so the patch is what runs
        if key == train[6]:  # mid second shard: one shard is already committed by then
            raise RuntimeError("encoder died")
        return real(frames, fps, key)

    monkeypatch.setattr(conv, "_encode", encode)
    with pytest.raises(RuntimeError, match="encoder died"):
        convert(dataset, tmp_path, PRE, shard_size=SHARD, progress=False, workers=1)
    # The old manifest would vouch for shards that were just overwritten, so it is gone.
    assert not (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.glob(".*"))
    for p in tmp_path.glob("*.tar"):
        with tarfile.open(p) as tar:  # complete: every member reads back in full
            assert all(len(tar.extractfile(m).read()) == m.size for m in tar)

    monkeypatch.setattr(conv, "_encode", real)
    m = convert(dataset, tmp_path, PRE, shard_size=SHARD, progress=False)
    names = {sh["name"] for v in m["splits"].values() for sh in v["shards"]}
    assert set(_tars(tmp_path)) == names  # the finer run's extra shards are gone


def test_30fps_source_is_resampled_to_25(tmp_path):
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "v.30.mp4", moving_square(n=60), fps=30)
    inst = {
        "video_id": "v.30",
        "split": "test",
        "signer_id": 3,
        "frame_start": 7,
        "frame_end": 54,
        "fps": 25,
        "bbox": [0, 0, 160, 120],
    }
    meta_file = [{"gloss": "hello", "instances": [inst]}]
    (tmp_path / "WLASL_v0.3.json").write_text(json.dumps(meta_file))
    m = convert(tmp_path, tmp_path / "out", PRE, progress=False)
    assert m["splits"]["test"]["shards"][0]["samples"] == 1
    [(meta, frames)] = list(iter_samples(tmp_path / "out", "test"))
    assert (meta["frame_start"], meta["frame_end"], meta["source_fps"]) == (7, 54, 30.0)
    assert len(frames) == meta["num_frames"] == 40  # 48 source frames * 25 / 30
    assert meta["video_id"] == "v.30" and min(frames.shape[1:3]) == PRE.resize
    with tarfile.open(tmp_path / "out" / "test-000000.tar") as tar:
        assert tar.getnames() == ["v_30.json", "v_30.mp4"]  # a dot would split the key


def test_missing_manifest_and_split(shards, tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match="no split"):
        next(iter_samples(shards, "nope"))


def test_idle_clips_are_the_rest_around_each_sign(dataset, shards, tmp_path):
    """Rest before frame_start / after frame_end becomes label -1 samples named by position, and
    before + sign + after is the whole video again; signs are unchanged."""
    out = tmp_path / "idle"
    m = convert(dataset, out, PRE, shard_size=SHARD, progress=False, idle_clips=True, workers=1)
    plain = {meta["video_id"]: f for sp in m["splits"] for meta, f in iter_samples(shards, sp)}
    by_id = {s.video_id: s for s in load_samples(dataset)}
    n_idle = 0
    for split, info in m["splits"].items():
        items = list(iter_samples(out, split))
        idle = {(meta["video_id"], meta["position"]): f for meta, f in items if meta.get("idle")}
        assert info["idle"] == len(idle) > 0 and info["samples"] == len(items) - len(idle)
        assert all(
            meta["label"] == -1 and meta["gloss"] == "" for meta, _ in items if meta.get("idle")
        )
        n_idle += len(idle)
        for meta, frames in items:
            if meta.get("idle"):
                continue
            s = by_id[meta["video_id"]]
            assert np.array_equal(frames, plain[s.video_id])  # the sign clip itself is unchanged
            total = count_frames(s.video_path(dataset))
            before = s.frame_start - 1
            after = 0 if s.frame_end == -1 else total - s.frame_end
            assert len(idle.get((s.video_id, "before"), ())) == before
            assert len(idle.get((s.video_id, "after"), ())) == after
    expected = 0
    for s in by_id.values():
        total = count_frames(s.video_path(dataset))
        expected += (s.frame_start > 1) + (s.frame_end != -1 and total > s.frame_end)
    assert n_idle == expected


def test_hostile_shards_are_refused_naming_the_shard(shards, tmp_path):
    """Shards come from an object store too: a manifest naming a file outside the folder, a
    compressed shard (a small file that inflates), a link member or a sample missing a part
    each stop reading with a ValueError that names the shard, not a KeyError or a huge read."""
    import gzip

    def tampered(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(shards, out)
        return out

    def first_shard(out: Path) -> Path:
        return out / read_manifest(out)["splits"]["train"]["shards"][0]["name"]

    escape = tampered("escape")
    manifest = json.loads((escape / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = "../escape.tar"
    (escape / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"'\.\./escape\.tar' is not a shard name"):
        next(iter_samples(escape, "train"))

    packed = tampered("packed")
    shard = first_shard(packed)
    shard.write_bytes(gzip.compress(shard.read_bytes()))
    with pytest.raises(ValueError, match=f"{shard.name}: not an uncompressed tar shard"):
        next(iter_samples(packed, "train"))

    for case, member in (("link", "link"), ("partial", "part")):
        out = tampered(case)
        shard = first_shard(out)
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar]
        with tarfile.open(shard, "w") as tar:
            m, data = members[0]  # the first sample's json
            if member == "link":
                link = tarfile.TarInfo(m.name)
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
            else:
                tar.addfile(m, io.BytesIO(data))  # its mp4 left out
        expected = "is not a regular file" if member == "link" else "expected json and mp4"
        with pytest.raises(ValueError, match=f"{shard.name}: .*{expected}"):
            next(iter_samples(out, "train"))
