"""Training and evaluation clips from shards: what both loaders share, and the cached loader.

Every random choice of an epoch (sample order, temporal jitter, crop, flip, colour) is drawn from
a generator seeded by (seed, epoch[, rank, worker], item), so a run resumed after any epoch draws
what an uninterrupted run draws.

Several processes (DDP): training reads each rank's own shards (`part`, as WebDataset's
split_by_node splits them: shard i goes to rank i mod world) or, with fewer shards than ranks,
its own videos of them (`rank_reads`), and every rank yields the same number of clips per epoch
(`rank_items`), so every rank takes the same number of optimizer steps. Evaluation splits the
clips, not the shards (a small split may be one shard).

`ShardClips` holds a split in memory (`cache: true`, small data: decoded once); `StreamClips`
(learning/stream.py) streams it with memory bounded per worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import multiprocessing
import os
from collections.abc import Iterator
from itertools import accumulate, groupby, islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from components.conversion.convert import (
    decode_clip,
    iter_shard,
    read_shard,
    scratch_dir,
    split_shards,
)
from components.training.context import ContextWindows, rebuild_videos
from model.video.clip import PreprocessConfig, clip_from_frames, normalize

Part = tuple[int, int]  # (rank, world size)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def loader(
    dataset: IterableDataset, batch: int, workers: int, *, pin: bool = False, keep: bool = False
) -> DataLoader:
    """How training reads a dataset: `workers` processes (kept across epochs with `keep`),
    batches pinned for the GPU with `pin`, each worker's memory steady (`steady_memory`)."""
    return DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=keep and workers > 0,
        worker_init_fn=steady_memory if workers else None,
    )


def steady_memory(_worker: int = 0) -> None:
    """Fix glibc's mmap threshold in a loader worker. glibc raises it after each large free,
    so later clip-sized buffers come from the heap and stay there, fragmented: a worker's
    private memory grew with the clips it made (24 / 96 / 384 clips: 21 / 51 / 99 MiB, a
    plain tensor source alike), and is flat with a fixed threshold (tests/test_distributed.py)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


class Epoch:
    """The epoch and whether it has context windows, in shared memory: persistent DataLoader
    workers keep their copy of the dataset, so a plain attribute set later never reaches them."""

    def __init__(self, context: bool) -> None:
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self._context = multiprocessing.Value("b", int(context), lock=False)

    def set(self, epoch: int, context: bool) -> None:
        self._epoch.value, self._context.value = epoch, int(context)

    @property
    def number(self) -> int:
        return int(self._epoch.value)

    @property
    def context(self) -> bool:
        return bool(self._context.value)


def rank_shards(shards: list, part: Part) -> list:
    """This rank's shards: as webdataset.split_by_node slices, but from the given group."""
    rank, world = part
    return list(islice(shards, rank, None, world))


def rank_reads(
    listed: list[tuple[Path, int]], part: Part, where: str = "the split"
) -> list[tuple[Path, int | None]]:
    """What one rank of a training run reads of a split listed as (shard, sign samples):
    (shard, None) for a shard it reads whole, (shard, the split's index of the shard's first
    video) for one it shares with the other ranks, keeping its videos only (`rank_video`).

    At least as many shards as ranks: each rank its own shards (`rank_shards`), whole. Fewer:
    the ranks share every shard by video -- video k of the split (a sign and its rest clips,
    which convert stores side by side) is rank k mod world's -- so the ranks' videos are
    disjoint, cover the split and are at most one apart in number (`rank_items` evens out the
    clips). The readers share rather than convert writing more shards because convert cannot
    know the run: the same shards train on one process or a TrainJob of nodes x GPUs, and a
    small split (a demo, a retrain on feedback) is one shard whatever shard_size says."""
    rank, world = part
    if world == 1 or len(listed) >= world:
        return [(path, None) for path, _ in rank_shards(listed, part)]
    total = sum(n for _, n in listed)
    if total < world:
        raise ValueError(
            f"{where} has {total} videos, fewer than the {world} training processes: "
            "some would have none to train on"
        )
    firsts = accumulate((n for _, n in listed), initial=0)
    return [(path, first) for (path, _), first in zip(listed, firsts, strict=False)]


def rank_video(k: int, part: Part, workers: int = 1, worker: int = 0) -> bool:
    """Whether video `k` of a shared split (rank_reads) is this rank's -- and, dealt on among
    the rank's `workers` loader workers, this worker's."""
    rank, world = part
    return k % world == rank and (k // world) % workers == worker


def shard_videos(path: Path) -> Iterator[list[tuple[dict, bytes]]]:
    """Each video's samples of one shard, undecoded: convert writes a sign's rest right after it."""
    for _, samples in groupby(read_shard(path), key=lambda s: s[0]["video_id"]):
        yield list(samples)


def context_per_epoch(signs: int, fraction: float) -> int:
    """How many context windows a context epoch draws (the LR schedule counts them too)."""
    return round(fraction * signs)


def rank_quota(signs: int, context_fraction: float, world: int) -> tuple[int, int]:
    """(sign clips, context windows) each of `world` ranks yields in a training epoch over a split
    of `signs` sign clips: its share of each, rounded up so every rank steps alike."""
    windows = context_per_epoch(signs, context_fraction)
    return math.ceil(signs / world), math.ceil(windows / world)


def rank_items(signs: int, context_fraction: float, world: int) -> int:
    """Clips each rank yields in a training epoch: sign clips and context windows together."""
    return sum(rank_quota(signs, context_fraction, world))


def worker_share(items: int, workers: int, worker: int) -> int:
    """Items worker `worker` of `workers` yields: what items[worker::workers] holds."""
    return items // workers + (worker < items % workers)


def steps_per_epoch(items: int, batch: int, workers: int) -> int:
    """Batches a DataLoader makes from `items` spread over `workers` (each batches its own)."""
    k = max(1, workers)
    return sum(math.ceil(worker_share(items, k, w) / batch) for w in range(k))


def augment(
    frames: np.ndarray,
    pre: PreprocessConfig,
    rng: np.random.Generator | None,
    *,
    hflip: bool,
    color_jitter: float,
) -> torch.Tensor:
    """Frames -> the model's input clip; with `rng` (training) a random crop, temporal jitter,
    optional flip and colour changes, without it what evaluation and serving see."""
    clip = clip_from_frames(frames, pre, rng=rng)  # bbox crop: done in convert
    x = torch.from_numpy(normalize(clip, pre.value_range))  # the runtimes' first step, here
    if rng is not None and hflip and rng.random() < 0.5:
        x = x.flip(-1)
    if rng is not None and color_jitter > 0:
        x = jitter_colour(x, rng, color_jitter, pre.value_range)
    return x


def jitter_colour(
    x: torch.Tensor, rng: np.random.Generator, strength: float, value_range: tuple[float, float]
) -> torch.Tensor:
    """Lighting and colour changes, so signers' clothes and backgrounds stop being cues."""
    lo, hi = value_range
    mid = (lo + hi) / 2
    contrast = 1 + rng.uniform(-strength, strength)
    gain = torch.from_numpy(1 + rng.uniform(-strength, strength, (x.shape[0], 1, 1, 1)))
    shift = rng.uniform(-strength, strength) * (hi - lo) / 2
    return ((x - mid) * contrast * gain.float() + mid + shift).clamp_(lo, hi)


class SplitClips(IterableDataset):
    """What both loaders of a split share (ShardClips here, stream.py's StreamClips): the
    split's shards and preprocessing, training or evaluation, augmentation, context windows,
    this process's part of the run, and the epoch it is in.

    Yields (clip, label, is_context): the trimmed sign clips, plus -- with `context_fraction` and
    `set_epoch(epoch, context=True)` -- that many context windows per sign clip, labelled with
    the sign under their centre frame or `no_sign`."""

    def __init__(
        self,
        shards: Path,
        split: str,
        pre: PreprocessConfig,
        *,
        train: bool,
        seed: int = 0,
        hflip: bool = False,
        color_jitter: float = 0.0,
        context_fraction: float = 0.0,
        context_window: int = 30,
        no_sign: int = -1,
        max_items: int | None = None,
        part: Part = (0, 1),
    ):
        # A folder, or stream.py's S3Shards (streamed from object storage)
        self.shards = Path(shards) if isinstance(shards, str | os.PathLike) else shards
        self.split, self.pre = split, pre
        self.train, self.seed, self.hflip, self.color_jitter = train, seed, hflip, color_jitter
        self.context_fraction, self.context_window = context_fraction, context_window
        self.no_sign, self.max_items, self.part = no_sign, max_items, part
        self.state = Epoch(context_fraction > 0)

    @property
    def epoch(self) -> int:
        return self.state.number

    @property
    def context(self) -> bool:
        return self.state.context

    def set_epoch(self, epoch: int, context: bool | None = None) -> None:
        ctx = self.context if context is None else context and self.context_fraction > 0
        self.state.set(epoch, ctx)


class ShardClips(SplitClips):
    """SplitClips decoded into memory once with `cache` (else every epoch)."""

    def __init__(
        self,
        shards: Path,
        split: str,
        pre: PreprocessConfig,
        *,
        cache: bool = False,
        decoded_by: ShardClips | None = None,
        by_shard: bool | None = None,
        **split_options,
    ):
        super().__init__(shards, split, pre, **split_options)
        self.cache = cache
        # Training reads its rank's shards; evaluation its rank's share of the clips.
        self.by_shard = self.train if by_shard is None else by_shard
        self._cache: list[tuple[dict, np.ndarray]] | None = None
        self._context: ContextWindows | None = None
        # Another view of the same split (e.g. BatchNorm's beside training's) decodes it once.
        self._decoded_by = decoded_by if cache and decoded_by is not None else None
        if self._decoded_by is not None and self._source(decoded_by) != self._source(self):
            raise ValueError("decoded_by must read the same split with the same preprocessing")
        if self.by_shard:
            self.shard_reads()  # too few videos for the ranks: said now, not mid-run

    @staticmethod
    def _source(c: ShardClips) -> tuple:
        shards = c.part if c.by_shard else (0, 1)
        return c.shards, c.split, c.pre, c.context_window, c.no_sign, shards

    def shard_reads(self) -> list[tuple[Path, int | None]]:
        """(shard, None: read whole | the split's index of its first video: shared), as
        rank_reads; evaluation reads every shard whole."""
        listed = split_shards(self.shards, self.split)
        if not self.by_shard:
            return [(p, None) for p, _ in listed]
        return rank_reads(listed, self.part, f"{self.shards}: the {self.split} split")

    def shard_paths(self) -> list[Path]:
        return [path for path, _ in self.shard_reads()]

    def _read(self):
        with scratch_dir() as d:
            for path, first in self.shard_reads():
                if first is None:
                    yield from iter_shard(path, d)
                    continue
                for j, video in enumerate(shard_videos(path)):  # only this rank's decoded
                    if rank_video(first + j, self.part):
                        yield from ((meta, decode_clip(meta, mp4, d)) for meta, mp4 in video)

    def _samples(self):
        if not self.cache:
            return self._read()
        if self._decoded_by is not None:
            return self._decoded_by._samples()
        if self._cache is None:
            self._cache = list(self._read())
        return self._cache

    def _windows(self, samples: list[tuple[dict, np.ndarray]]) -> ContextWindows:
        """The whole videos context windows are cut from: rebuilt each epoch, or once with
        `cache` (the samples they are rebuilt from are cached then too)."""
        if self._decoded_by is not None:
            return self._decoded_by._windows(samples)
        if self._context is None or not self.cache:
            windows = ContextWindows(rebuild_videos(samples), self.context_window, self.no_sign)
            if not self.cache:
                return windows
            self._context = windows
        return self._context

    def _key(self) -> list[int]:
        # Evaluation sees the same windows every epoch; training draws fresh ones per rank.
        if not self.train:
            return [self.seed, 0, 0]
        rank, world = self.part
        return [self.seed, 1, self.epoch] + ([rank] if world > 1 else [])

    def epoch_items(self, signs: int) -> list[tuple[bool, int]]:
        """(is_context, index): every sign clip and, in a context epoch, context windows around
        randomly drawn videos (`context_per_epoch` of them). Shuffled when training; evaluation
        interleaves the two evenly in a fixed order. At most `max_items`: the first ones when
        shuffled, evenly spread ones otherwise (shards run in metadata order, not mixed). Then
        with several ranks, each rank's share of the whole split's epoch (`rank_items`): cut,
        or topped up with more of the same draw."""
        k = context_per_epoch(signs, self.context_fraction) if self.context else 0
        rng = np.random.default_rng(self._key())
        anchors = rng.integers(0, signs, size=k).tolist() if k else []
        items = [(False, i) for i in range(signs)] + [(True, a) for a in anchors]
        cap = len(items) if self.max_items is None else min(self.max_items, len(items))
        if self.train:
            items = [items[i] for i in rng.permutation(len(items))[:cap]]
            if self.part[1] > 1:
                total = sum(n for _, n in split_shards(self.shards, self.split))
                want = rank_items(total, self.context_fraction if self.context else 0, self.part[1])
                items = (items * math.ceil(want / max(1, len(items))))[:want]
            return items
        place = [(i + 0.5) / signs for i in range(signs)] + [(j + 0.5) / k for j in range(k)]
        order = np.argsort(place, kind="stable")
        return [items[order[i]] for i in np.linspace(0, len(items) - 1, cap).round().astype(int)]

    def __iter__(self):
        samples = list(self._samples())
        signs = [(meta, f) for meta, f in samples if not meta.get("idle")]
        items = list(enumerate(self.epoch_items(len(signs))))  # position seeds the draw
        if not self.by_shard:
            rank, world = self.part
            items = items[rank::world]
        windows = self._windows(samples) if any(ctx for _, (ctx, _) in items) else None
        info = get_worker_info()
        if info is not None:
            items = items[info.id :: info.num_workers]
        for n, (is_context, i) in items:
            rng = np.random.default_rng([*self._key(), n, i])
            if is_context:
                frames, label = windows.draw(i, rng)
            else:
                frames, label = signs[i][1], int(signs[i][0]["label"])
            x = augment(
                frames,
                self.pre,
                rng if self.train else None,
                hflip=self.hflip,
                color_jitter=self.color_jitter,
            )
            yield x, label, is_context
