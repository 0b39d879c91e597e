"""`convert`: a WLASL-layout dataset -> WebDataset tar shards of trimmed, resized mp4 clips.

Each clip goes through the shared preprocessing up to the resize (trim -> [fps resample] ->
[bbox crop] -> short side = pre.resize). Temporal sampling and the final crop are left to training,
which redoes them every epoch. Output under `out/`:

    <split>-000000.tar ...   WebDataset shards: <key>.mp4 (the clip at pre.fps) + <key>.json (meta)
    manifest.json            written last; its presence means every shard it lists is complete

With `idle_clips`, the frames before frame_start and after frame_end (the signer at rest) are
stored too, as extra samples `<key>~idle0` (before) and `<key>~idle1` (after) with label -1,
`"idle": true` and `"position"` (no sign's key contains `~`). Put back around their sign they
rebuild the whole video, from which training cuts context windows (learning/context.py) that
teach the model where signs start and stop -- what sentence mode needs.

Same input -> byte-identical shards, so DVC caches them by content.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import tarfile
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from tqdm import tqdm

from components.data.dataset import SPLITS, Sample, load_glosses, load_samples
from components.infra.cpus import usable_cpus
from model.files import fsync_dir, hash_file
from model.video.clip import PreprocessConfig, resize_frames
from model.video.decode import VideoError, decode, decode_trimmed, probe

FORMAT = "sign2text-shards/1"
MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"[A-Za-z0-9_]+-\d{6}\.tar")


def _tmpdir() -> str | None:
    # RAM beats disk for throwaway clips; TemporaryDirectory makes a private 0700 dir inside.
    return "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108


def _key(video_id: str) -> str:
    # WebDataset splits a member name at its first dot into key + extension.
    return re.sub(r"[^A-Za-z0-9_-]", "_", video_id)


def _resampler(src_fps: float, fps: float):
    def pick(n: int) -> np.ndarray:
        if abs(src_fps - fps) <= 0.5:
            return np.arange(n)
        # Resample to fps: the nearest source frame at each output time step.
        n_out = max(1, round(n * fps / src_fps))
        pos = np.floor(np.arange(n_out) * src_fps / fps + 0.5).astype(np.int64)
        return np.minimum(pos, n - 1)

    return pick


def _load(
    root: Path, s: Sample, pre: PreprocessConfig, idle: bool = False
) -> tuple[np.ndarray, int, int, float, dict[int, np.ndarray]]:
    """Decode the sample's range at pre.fps -> (resized frames, first, last 1-based, source fps,
    {0: the resized rest before it, 1: after it} if `idle`, each only where there is one)."""
    path = s.video_path(root)
    info = probe(path)
    src_fps = info.fps or pre.fps  # unknown rate: trust the metadata's clock
    pick = _resampler(src_fps, pre.fps)
    frames, lo, hi = decode_trimmed(path, s.frame_start, s.frame_end, pick)
    rest = {}
    if idle:
        total = hi if s.frame_end == -1 else max(hi, info.frames)  # -1: nothing after
        for i, (a, b) in enumerate(((0, lo), (hi, total))):
            if b > a:
                try:
                    rest[i] = resize_frames(decode(path, a + pick(b - a)), pre, s.bbox)
                except VideoError:
                    pass  # a container over-counting its frames: no idle clip, the sign stays
    return resize_frames(frames, pre, s.bbox), lo + 1, hi, src_fps, rest


def _encode(frames: np.ndarray, fps: float, key: str) -> bytes:
    # MPEG-4 part 2 truncates odd sizes; pad by edge replication, iter_samples slices it off.
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with tempfile.TemporaryDirectory(dir=_tmpdir()) as d:
        path = os.path.join(d, f"{key}.mp4")
        vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, frames.shape[2:0:-1])
        if not vw.isOpened():
            raise RuntimeError(f"OpenCV cannot encode mp4v {w}x{h} here")
        for f in frames:
            vw.write(f)
        vw.release()
        return Path(path).read_bytes()


def _convert_one(
    job: tuple[Path, Sample, PreprocessConfig, bool],
) -> list[tuple[str, dict, bytes]] | str:
    """One sample -> [(key, meta, mp4 bytes)] (the sign, then any idle clips), or why not."""
    root, s, pre, idle = job
    try:
        frames, first, last, src_fps, rest = _load(root, s, pre, idle)
    except VideoError as e:
        return str(e).replace(f"{root}{os.sep}", "")  # the reason must not depend on the mount
    key = _key(s.video_id)
    base = {k: getattr(s, k) for k in ("label", "gloss", "video_id", "signer_id", "split")}
    base |= {"fps": pre.fps, "source_fps": src_fps}

    def item(k: str, clip: np.ndarray, **meta) -> tuple[str, dict, bytes]:
        size = {"num_frames": len(clip), "height": clip.shape[1], "width": clip.shape[2]}
        return k, base | meta | size, _encode(clip, pre.fps, k)

    sign = item(key, frames, frame_start=first, frame_end=last)
    sign[1]["source_bytes"] = s.video_path(root).stat().st_size
    idle_items = [
        item(f"{key}~idle{i}", clip, label=-1, gloss="", idle=True, position=("before", "after")[i])
        for i, clip in rest.items()
    ]
    return [sign, *idle_items]


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool is the parallelism; OpenCV's own threads would oversubscribe


def _run(jobs: list, workers: int) -> Iterator:
    """Results in job order; at most a few jobs per worker in flight, so memory stays bounded."""
    if not jobs:
        return
    if workers <= 1:
        yield from map(_convert_one, jobs)
        return
    # spawn, not fork: forking a process whose torch / OpenMP threads are running can deadlock
    # the children (seen under pytest after a test had used torch).
    ctx = multiprocessing.get_context("spawn")
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
    try:
        it = iter(jobs)
        pending = deque(ex.submit(_convert_one, j) for j in islice(it, 4 * workers))
        while pending:
            result = pending.popleft().result()
            for j in islice(it, 1):
                pending.append(ex.submit(_convert_one, j))
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _commit(out: Path, name: str, write) -> str:
    """Write `out/name` via a hidden temp file + fsync + rename; return its sha256."""
    tmp = out / f".{name}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        sha = hash_file(tmp)
        os.replace(tmp, out / name)
        fsync_dir(out)  # makes the rename itself durable
    finally:
        tmp.unlink(missing_ok=True)
    return sha


def _write_shard(out: Path, name: str, members: list[tuple[str, bytes]]) -> dict:
    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for member, data in members:
                info = tarfile.TarInfo(member)  # fixed fields: no times, owners or umask
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))

    sha = _commit(out, name, write)
    size = (out / name).stat().st_size
    idle = sum(name.endswith(".json") and "~idle" in name for name, _ in members)
    return {
        "name": name,
        "samples": len(members) // 2 - idle,
        "idle": idle,
        "bytes": size,
        "sha256": sha,
    }


def convert(
    dataset: Path,
    out: Path,
    pre: PreprocessConfig,
    *,
    shard_size: int = 64,
    samples: list[Sample] | None = None,
    progress: bool = True,
    workers: int | None = None,
    idle_clips: bool = False,
) -> dict:
    """Convert `samples` (default: all of `dataset`) to shards under `out`; return the manifest."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    dataset, out = Path(dataset), Path(out)
    samples = load_samples(dataset) if samples is None else samples
    keys = [_key(s.video_id) for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError("video_ids must stay unique after making them safe as WebDataset keys")
    split_order = sorted({s.split for s in samples}, key=lambda x: ((SPLITS + (x,)).index(x), x))
    if bad := [x for x in split_order if not re.fullmatch(r"[A-Za-z0-9_]+", x)]:
        raise ValueError(f"split names must be [A-Za-z0-9_]+ to name shards, got {bad}")
    samples = sorted(samples, key=lambda s: (split_order.index(s.split), s.video_id))

    out.mkdir(parents=True, exist_ok=True)
    # Shards are about to be overwritten: an old manifest must not vouch for them meanwhile.
    (out / MANIFEST).unlink(missing_ok=True)
    fsync_dir(out)
    for stale in out.glob(".*.tmp"):
        stale.unlink()

    splits = {sp: {"shards": [], "samples": 0, "idle": 0} for sp in split_order}
    skipped, source_bytes, batch = [], 0, []

    def flush(split: str) -> None:
        name = f"{split}-{len(splits[split]['shards']):06d}.tar"
        shard = _write_shard(out, name, batch)
        splits[split]["shards"].append(shard)
        splits[split]["samples"] += shard["samples"]
        splits[split]["idle"] += shard["idle"]
        batch.clear()

    jobs = [(dataset, s, pre, idle_clips) for s in samples]
    workers = workers or usable_cpus()
    bar = tqdm(total=len(jobs), desc="convert", unit="video", disable=not progress)
    with bar:
        for i, (s, result) in enumerate(zip(samples, _run(jobs, workers), strict=True)):
            if isinstance(result, str):
                skipped.append({"video_id": s.video_id, "reason": result})
            else:
                source_bytes += result[0][1].pop("source_bytes")
                for key, meta, mp4 in result:
                    batch += [
                        (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
                        (f"{key}.mp4", mp4),
                    ]
            split_ends = i + 1 == len(samples) or samples[i + 1].split != s.split
            if batch and (len(batch) // 2 >= shard_size or split_ends):
                flush(s.split)
            bar.update()

    names = {sh["name"] for sp in splits.values() for sh in sp["shards"]}
    for p in out.glob("*.tar"):
        if SHARD_RE.fullmatch(p.name) and p.name not in names:
            p.unlink()  # left over from an earlier run that had more shards
    hashes = sorted(sh["sha256"] for sp in splits.values() for sh in sp["shards"])
    manifest = {
        "format": FORMAT,
        "labels": load_glosses(dataset),  # class id -> gloss, for training's model directory
        "preprocess": pre.to_dict(),
        "splits": splits,
        "content_hash": hashlib.sha256("\n".join(hashes).encode()).hexdigest(),
        "source_bytes": source_bytes,
        "shard_bytes": sum(sh["bytes"] for sp in splits.values() for sh in sp["shards"]),
        "skipped": skipped,
    }
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    _commit(out, MANIFEST, lambda f: f.write(text.encode()))
    return manifest


def read_manifest(shard_dir: Path) -> dict:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no complete conversion in {shard_dir}")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def _members(tar: tarfile.TarFile, where: object) -> Iterator[dict[str, bytes]]:
    """Group consecutive members by key, as WebDataset does: {extension: bytes} per sample."""
    key, parts = None, {}
    for m in tar:
        if not m.isfile():  # a link or a device would read what is not in the shard
            raise ValueError(f"{where}: member {m.name!r} is not a regular file")
        k, _, ext = m.name.partition(".")
        if k != key and parts:
            yield _sample(parts, key, where)
            parts = {}
        key = k
        parts[ext] = tar.extractfile(m).read()
    if parts:
        yield _sample(parts, key, where)


def _sample(parts: dict[str, bytes], key: str, where: object) -> dict[str, bytes]:
    if set(parts) != {"json", "mp4"}:
        raise ValueError(f"{where}: sample {key!r} has {sorted(parts)}, expected json and mp4")
    return parts


def shard_name(name: object, manifest: object) -> str:
    """A shard named by a manifest: SPLIT-NNNNNN.tar, no folder (so it stays in the shards')."""
    if not isinstance(name, str) or not SHARD_RE.fullmatch(name):
        raise ValueError(f"{manifest}: {name!r} is not a shard name (SPLIT-NNNNNN.tar)")
    return name


def _shard_path(shard_dir: Path, name: object) -> Path:
    """A shard named by manifest.json: a file directly in shard_dir, nowhere else."""
    return shard_dir / shard_name(name, shard_dir / MANIFEST)


def split_shards(shard_dir: Path, split: str) -> list[tuple[Path, int]]:
    """(path, sign samples) of each shard of `split`, in order, as manifest.json lists them."""
    shard_dir = Path(shard_dir)
    splits = read_manifest(shard_dir)["splits"]
    if split not in splits:
        raise ValueError(f"no split {split!r} in {shard_dir}; it has {sorted(splits)}")
    return [
        (_shard_path(shard_dir, sh.get("name")), int(sh.get("samples", 0)))
        for sh in splits[split]["shards"]
    ]


def read_shard(path: Path) -> Iterator[tuple[dict, bytes]]:
    """(meta, mp4 bytes) for every sample of one shard, in order, not yet decoded."""
    yield from read_tar(path, mode="r:")


def read_tar(source: Path | IO[bytes], where: object = None, mode: str = "r|") -> Iterator:
    """(meta, mp4 bytes) of a shard file (mode "r:") or a stream read once (mode "r|", e.g. an
    object store's): uncompressed tar only, so a small shard cannot inflate into a huge one;
    regular members only, each sample a json and an mp4."""
    where = source if where is None else where
    try:
        if isinstance(source, Path):
            tar = tarfile.open(source, mode=mode)
        else:
            tar = tarfile.open(fileobj=source, mode=mode)
    except tarfile.ReadError as e:
        raise ValueError(f"{where}: not an uncompressed tar shard ({e})") from None
    with tar:
        for parts in _members(tar, where):
            try:
                meta = json.loads(parts["json"])
                _ = [int(meta[k]) for k in ("num_frames", "height", "width")]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{where}: a sample's metadata is malformed ({e!r})") from None
            yield meta, parts["mp4"]


def decode_clip(meta: dict, mp4: bytes, scratch: str) -> np.ndarray:
    """A stored clip -> frames T x H x W x 3 uint8 BGR. `scratch`: a private folder."""
    clip = os.path.join(scratch, "clip.mp4")
    Path(clip).write_bytes(mp4)
    n, h, w = (int(meta[k]) for k in ("num_frames", "height", "width"))
    return np.ascontiguousarray(decode(clip, range(n))[:, :h, :w])


def iter_shard(path: Path, scratch: str) -> Iterator[tuple[dict, np.ndarray]]:
    """(meta, frames T x H x W x 3 uint8 BGR) for every sample of one shard, in order."""
    for meta, mp4 in read_shard(path):
        yield meta, decode_clip(meta, mp4, scratch)


def iter_samples(shard_dir: Path, split: str) -> Iterator[tuple[dict, np.ndarray]]:
    """(meta, frames T x H x W x 3 uint8 BGR) for every converted sample of `split`, in order."""
    paths = [path for path, _ in split_shards(shard_dir, split)]
    with scratch_dir() as d:
        for path in paths:
            yield from iter_shard(path, d)


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A private folder for the one clip being decoded (OpenCV reads files, not bytes)."""
    return tempfile.TemporaryDirectory(dir=_tmpdir())
