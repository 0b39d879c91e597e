"""Clips streamed from shards (`cache: false`): memory per loader worker is bounded by two
buffers, whatever the size of the dataset.

Per worker, WebDataset's stages: this rank's shards (split by node, as webdataset's
split_by_node does), in a fresh seeded order each pass and passed over again when an epoch asks
for more than they hold (resampling at epoch boundaries); this worker's share of each pass
(split_by_worker) -- or, with fewer shards than ranks, every shard and the videos of it that are
this rank's and this worker's (clips.rank_reads); grouped into videos (a sign and its rest, which
convert stores side by side); shuffled in a buffer of `shuffle_buffer` videos still compressed
(so a large buffer costs little and what the epoch's end leaves in it was never decoded);
decoded; cut at the epoch's length.
Context windows come from the last `context_buffer` decoded videos (learning/context.py
SignerBuffer), in the proportion `context_fraction` to sign clips.

Tar members are read by convert's own reader (uncompressed shards, regular files only), not
WebDataset's, which would also open compressed streams.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from itertools import count, groupby, islice
from pathlib import Path

import numpy as np
import webdataset as wds
from torch.utils.data import get_worker_info

from components.conversion.convert import decode_clip, read_shard, scratch_dir, split_shards
from components.training.clips import (
    SplitClips,
    augment,
    rank_quota,
    rank_reads,
    rank_video,
    worker_share,
)
from components.training.context import SignerBuffer, Video, rebuild_videos
from components.training.s3stream import S3Shards
from model.video.clip import PreprocessConfig

Packed = list[tuple[dict, bytes]]  # one video's samples (its sign, then its rest), undecoded


class StreamClips(SplitClips):
    """Yields (clip, label, is_context) like ShardClips, from a stream.

    Training (`train`): each rank's share of the epoch (clips.rank_items), shuffled, from its
    own shards only (its own videos of them with fewer shards than ranks). Evaluation: the
    split's videos in order, every `world`-th one on each rank (evenly spread ones when
    `max_items` caps them)."""

    def __init__(
        self,
        shards: Path,
        split: str,
        pre: PreprocessConfig,
        *,
        shuffle_buffer: int = 256,
        context_buffer: int = 32,
        **split_options,
    ):
        super().__init__(shards, split, pre, **split_options)
        self.shuffle_buffer, self.context_buffer = shuffle_buffer, context_buffer
        if isinstance(self.shards, S3Shards):  # read in place as training goes, never copied
            listed, self._read = self.shards.split(split), self.shards.read
        else:
            listed, self._read = split_shards(self.shards, split), read_shard
        self.total = sum(n for _, n in listed)
        where = f"{self.shards}: the {split} split"
        self.reads = (
            rank_reads(listed, self.part, where) if self.train else [(p, None) for p, _ in listed]
        )
        self.paths = [p for p, _ in self.reads]
        # Shared shards (fewer than ranks): the split's index of each one's first video
        self._first = {p: first for p, first in self.reads if first is not None}
        # Per rank, the fewest shards -- or, shared, videos -- any rank has to deal to workers
        self._fewest = (self.total if self._first else len(listed)) // self.part[1]

    def shard_reads(self) -> list[tuple[Path, int | None]]:
        return list(self.reads)

    def shard_paths(self) -> list[Path]:
        return list(self.paths)

    def usable_workers(self, wanted: int) -> int:
        """DataLoader workers that each get a shard (or, shared, a video) to read: the same
        number on every rank."""
        return min(wanted, self._fewest) if self.train else wanted

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        with scratch_dir() as scratch:
            if self.train:
                yield from self._train(worker, workers, scratch)
            else:
                yield from self._evaluate(worker, workers, scratch)

    def _train(self, worker: int, workers: int, scratch: str) -> Iterator:
        epoch, (rank, world) = self.state.number, self.part
        fraction = self.context_fraction if self.state.context else 0.0
        signs, windows = (
            worker_share(n, workers, worker) for n in rank_quota(self.total, fraction, world)
        )
        key = [self.seed, 1, epoch, rank]

        def mine(path: Path, j: int) -> bool:  # a shared shard's video j: this worker's?
            return rank_video(self._first[path] + j, self.part, workers, worker)

        def passes() -> Iterator[Packed]:  # the rank's shards, over again as long as asked
            for lap in count():
                order = np.random.default_rng([*key, lap]).permutation(len(self.paths))
                ordered = [self.paths[i] for i in order]
                if self._first:  # every worker reads every shared shard, keeps its videos
                    videos = _packed(ordered, self._read, mine)
                else:
                    videos = _packed(wds.split_by_worker(ordered), self._read)
                shuffle = wds.shuffle(
                    self.shuffle_buffer,
                    initial=self.shuffle_buffer,
                    rng=random.Random(str([*key, worker, lap])),
                )
                yield from shuffle(videos)  # within a pass: one pass = each video once

        buffer = SignerBuffer(self.context_buffer, self.context_window, self.no_sign)
        n = drawn = 0
        for i, packed in enumerate(islice(passes(), signs)):
            video = _unpack(packed, scratch)
            buffer.add(video)
            yield self._clip(video, np.random.default_rng([*key, worker, n]))
            n += 1
            while drawn < (i + 1) * windows // max(1, signs):  # spread evenly among the signs
                yield self._window(buffer, np.random.default_rng([*key, worker, n]), train=True)
                n, drawn = n + 1, drawn + 1

    def _evaluate(self, worker: int, workers: int, scratch: str) -> Iterator:
        rank, world = self.part
        fraction = self.context_fraction if self.state.context else 0.0
        # max_items counts windows too, in their proportion to signs
        take = math.ceil(self.max_items / (1 + fraction)) if self.max_items else self.total
        step = max(1, self.total // max(1, take))
        picked = (
            packed
            for v, packed in enumerate(_packed(self.paths, self._read))
            if v % step == 0
            and (k := v // step) < take
            and k % world == rank
            and (k // world) % workers == worker
        )
        buffer = SignerBuffer(self.context_buffer, self.context_window, self.no_sign)
        n = drawn = 0
        for i, packed in enumerate(picked):
            video = _unpack(packed, scratch)
            buffer.add(video)
            yield self._clip(video, None)
            n += 1
            while drawn < round((i + 1) * fraction):
                rng = np.random.default_rng([self.seed, 0, rank, worker, n])
                yield self._window(buffer, rng, train=False)
                n, drawn = n + 1, drawn + 1

    def _clip(self, video: Video, rng: np.random.Generator | None):
        frames = video.frames[video.start : video.end + 1]
        x = augment(frames, self.pre, rng, hflip=self.hflip, color_jitter=self.color_jitter)
        return x, video.label, False

    def _window(self, buffer: SignerBuffer, rng: np.random.Generator, *, train: bool):
        frames, label = buffer.draw(rng)
        x = augment(
            frames,
            self.pre,
            rng if train else None,
            hflip=self.hflip,
            color_jitter=self.color_jitter,
        )
        return x, label, True


def _packed(
    paths: Iterable, read: Callable[..., Iterator], keep: Callable[[Path, int], bool] | None = None
) -> Iterator[Packed]:
    """Each video's samples, undecoded: convert writes a sign's rest clips right after it.
    `read`: a shard's samples (a file's or an object's). With `keep`, video j of a shard only
    where keep(shard, j)."""
    for path in paths:
        for j, (_, samples) in enumerate(groupby(read(path), key=lambda s: s[0]["video_id"])):
            if keep is None or keep(path, j):
                yield list(samples)


def _unpack(packed: Packed, scratch: str) -> Video:
    return rebuild_videos([(meta, decode_clip(meta, mp4, scratch)) for meta, mp4 in packed])[0]
