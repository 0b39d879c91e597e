"""Signs in context: whole videos rebuilt from the shards, strung together as a signer would sign
them, and cut into the windows sentence mode slides over a video.

A classifier trained only on trimmed signs has never seen the resting hand between two signs,
nor a window that holds the end of one sign and the start of the next, and it names a sign for
those with full confidence. So training also draws *context windows*: a window of about one
sign's length centred on a random frame of a string of 1-3 of one signer's videos, labelled with
the sign under its centre frame, or "no sign" (the model's extra output) when the centre is at
rest. Sentence mode (model/sentence.py) slides the same window over a video and reads each
frame's label off the window centred on it, so what is trained is exactly what is asked.

Evaluation strings 2-4 unseen test videos together the same way and scores the words and spans
sentence mode returns against where each sign really is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from components.data.dataset import Sample
from model.sentence import Word, centred_window
from model.video.decode import count_frames, decode, trim_range

SPEED_JITTER = (0.8, 1.25)  # training windows vary in length: people sign at different speeds
MIN_IOU = 0.5  # a word's span must overlap its sign's true span this much to count


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # the whole video, T x H x W x 3 uint8 BGR, as the shards store it
    start: int  # the sign's frames, 0-based inclusive
    end: int
    label: int
    signer: str
    video_id: str


def rebuild_videos(samples: Iterable[tuple[dict, np.ndarray]]) -> list[Video]:
    """Shard samples (signs + convert's idle clips) -> the whole videos, in the signs' order.

    A sign without stored rest (converted without idle_clips, or signed to the last frame) is
    its own whole video."""
    signs, rest = [], {}
    for meta, frames in samples:
        if meta.get("idle"):
            rest[(meta["video_id"], meta["position"])] = frames
        else:
            signs.append((meta, frames))
    videos = []
    for meta, frames in signs:
        vid = meta["video_id"]
        before = rest.get((vid, "before"), frames[:0])
        after = rest.get((vid, "after"), frames[:0])
        whole = np.concatenate([before, frames, after])
        start = len(before)
        videos.append(
            Video(
                whole,
                start,
                start + len(frames) - 1,
                int(meta["label"]),
                str(meta["signer_id"]),
                vid,
            )
        )
    return videos


def load_videos(dataset, samples: Iterable[Sample], labels: Sequence[str]) -> list[Video]:
    """Whole videos from a WLASL-layout dataset, decoded as serving decodes an upload, with
    each sign's frame range from the metadata; labels index into the model's `labels`."""
    index = {g: i for i, g in enumerate(labels)}
    videos = []
    for s in samples:
        path = s.video_path(dataset)
        frames = decode(path, np.arange(count_frames(path)))
        lo, hi = trim_range(s.frame_start, s.frame_end, len(frames))
        videos.append(Video(frames, lo, hi - 1, index[s.gloss], str(s.signer_id), s.video_id))
    return videos


def signer_groups(videos: Sequence[Video]) -> list[list[int]]:
    """Indices of the videos one signer made at one frame size: those can be strung together."""
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(videos):
        groups.setdefault((v.signer, v.frames.shape[1:3]), []).append(i)
    return list(groups.values())


def string_together(
    videos: Sequence[Video], members: Sequence[int]
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Videos back to back -> (frames, [(start, end, label)] of each sign in the result)."""
    spans, offset = [], 0
    for i in members:
        v = videos[i]
        spans.append((offset + v.start, offset + v.end, v.label))
        offset += len(v.frames)
    return np.concatenate([videos[i].frames for i in members]), spans


def label_at(spans: Sequence[tuple[int, int, int]], t: int, no_sign: int) -> int:
    return next((label for a, b, label in spans if a <= t <= b), no_sign)


class ContextWindows:
    """Draws training context windows from whole videos."""

    def __init__(self, videos: Sequence[Video], window: int, no_sign: int, max_signs: int = 3):
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        self.videos, self.window, self.no_sign, self.max_signs = videos, window, no_sign, max_signs
        self.group_of = {i: g for g in signer_groups(videos) for i in g}

    def draw(self, anchor: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A window around a random frame of `anchor` strung with 0-2 of its group -> (frames,
        label of the centre frame)."""
        group = self.group_of[anchor]
        partners = rng.choice(group, size=int(rng.integers(0, self.max_signs)), replace=True)
        members = [anchor, *partners.tolist()]
        rng.shuffle(members)
        frames, spans = string_together(self.videos, members)
        w = max(1, round(self.window * rng.uniform(*SPEED_JITTER)))
        c = int(rng.integers(len(frames)))
        return frames[centred_window(len(frames), c, w)], label_at(spans, c, self.no_sign)


class SignerBuffer:
    """Context windows from a stream: the last `capacity` whole videos seen, so memory stays
    bounded however large the split. A window strings a random buffered video with 0-2 others
    of its signer still in the buffer, as ContextWindows does with the whole split."""

    def __init__(self, capacity: int, window: int, no_sign: int, max_signs: int = 3):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 video, got {capacity}")
        self.videos: deque[Video] = deque(maxlen=capacity)
        self.window, self.no_sign, self.max_signs = window, no_sign, max_signs

    def add(self, video: Video) -> None:
        self.videos.append(video)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        videos = list(self.videos)
        anchor = int(rng.integers(len(videos)))
        return ContextWindows(videos, self.window, self.no_sign, self.max_signs).draw(anchor, rng)


def sign_strings(
    videos: Sequence[Video], count: int, seed: int = 0, min_signs: int = 2, max_signs: int = 4
) -> list[tuple[np.ndarray, list[tuple[int, int, int]]]]:
    """`count` strings of 2-4 different videos of one signer, for evaluating sentence mode."""
    groups = [g for g in signer_groups(videos) if len(g) >= min_signs]
    if not groups:
        return []
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        g = groups[n % len(groups)]
        k = int(rng.integers(min_signs, min(max_signs, len(g)) + 1))
        out.append(string_together(videos, rng.choice(g, size=k, replace=False).tolist()))
    return out


def span_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)
    return inter / ((a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter)


def score(
    words: Sequence[Word], spans: Sequence[tuple[int, int, int]], labels: Sequence[str]
) -> dict:
    """One transcript against the truth: right words in order, and each span where its sign is."""
    truth = [labels[label] for _, _, label in spans]
    same = [w.gloss for w in words] == truth
    pairs = zip(words, spans, strict=True) if same else ()
    ious = [span_iou((w.start, w.end), (a, b)) for w, (a, b, _) in pairs]
    return {
        "words_right": same,
        "correct": same and all(x >= MIN_IOU for x in ious),
        "iou": ious,
        "edit_distance": _edit_distance([w.gloss for w in words], truth),
        "truth_words": len(truth),
    }


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]
