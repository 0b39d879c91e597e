"""Decoding video files with OpenCV/FFmpeg: only the frames asked for, checked against what the
container claims.

`decode` grabs the frames it does not need (no colour conversion, no copy) and stops after the
last one it needs; `count_frames` / `decode_all` count what really decodes, bounded by a frame
limit, since containers can claim more (or nothing). The errors here are every video error the
project raises (`VideoError` and its kinds).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


class VideoError(ValueError):
    """A video that cannot be used; the message says what is wrong with it."""


class UnreadableVideo(VideoError):
    pass


class NoFrames(VideoError):
    pass


class FrameRangeError(VideoError):
    pass


class Truncated(VideoError):
    """Fewer frames decode than the container promises: a cut-off or partly corrupt file."""


class OverLimit(VideoError):
    """A video that would cost more than the server's limits allow."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int


FFMPEG_THREADS: int | None = None  # FFmpeg's choice (one per core); model/serving/decoder.py sets 1


def open_video(path: str | os.PathLike) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise UnreadableVideo(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise UnreadableVideo(f"video is empty (0 bytes): {path}")
    params = [] if FFMPEG_THREADS is None else [cv2.CAP_PROP_N_THREADS, FFMPEG_THREADS]
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        raise UnreadableVideo(f"not a readable video: {path}")
    return cap


def probe(path: str | os.PathLike) -> VideoInfo:
    """Container metadata. The frame count is the container's claim; decode() checks it."""
    cap = open_video(path)
    try:
        return VideoInfo(
            frames=claimed_frames(cap),
            fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        cap.release()


def claimed_frames(cap: cv2.VideoCapture) -> int:
    return max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)


def trim_range(frame_start: int, frame_end: int, total: int) -> tuple[int, int]:
    """WLASL's 1-based inclusive [frame_start, frame_end] (-1 = to the end) -> 0-based [lo, hi)."""
    if frame_start < 1:
        raise FrameRangeError(f"frame_start must be >= 1 (1-based), got {frame_start}")
    end = total if frame_end == -1 else frame_end
    if end < frame_start:
        raise FrameRangeError(f"frame_end {frame_end} is before frame_start {frame_start}")
    if end > total:
        raise FrameRangeError(f"frame_end {end} is beyond the video's {total} frames")
    return frame_start - 1, end


def sample_indices(
    n: int, num_frames: int, *, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Pick num_frames positions in [0, n).

    Long clips are covered end to end: one frame from each of num_frames equal segments (its
    centre, or a random point in it when training -- temporal jitter). Short clips keep every
    frame in order and are padded by repeating the last one (random front/back split when
    training), so the motion keeps its speed.
    """
    if n < 1:
        raise NoFrames("no frames to sample from")
    if n >= num_frames:
        edges = np.linspace(0, n, num_frames + 1)
        if rng is None:
            pos = (edges[:-1] + edges[1:]) / 2
        else:
            pos = edges[:-1] + rng.random(num_frames) * np.diff(edges)
        return np.minimum(pos.astype(np.int64), n - 1)
    pad = num_frames - n
    front = int(rng.integers(0, pad + 1)) if rng is not None else 0
    return np.concatenate([np.zeros(front, np.int64), np.arange(n), np.full(pad - front, n - 1)])


Frame = Callable[[np.ndarray], np.ndarray]  # applied to each frame as it decodes


def decode(
    path: str | os.PathLike, indices: Sequence[int], each: Frame | None = None
) -> np.ndarray:
    """Decode the frames at sorted-or-not 0-based `indices` -> T x H x W x 3 uint8 BGR.

    Frames that are not needed are only grabbed (no colour conversion, no copy), and decoding
    stops after the last needed frame. `each` (e.g. a resize) runs on every kept frame as it
    decodes, so only its results are held.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise NoFrames("no frames requested")
    out: np.ndarray | None = None

    def keep(frame: np.ndarray, at: int) -> None:
        nonlocal out
        if each is not None:
            frame = each(frame)
        if out is None:
            out = np.empty((len(indices), *frame.shape), frame.dtype)
        elif frame.shape != out.shape[1:]:
            shape = out.shape[1:]
            raise VideoError(f"frame size changes mid-video: {frame.shape} after {shape}")
        out[at] = frame

    cap = open_video(path)
    try:
        src, dup = decode_into(cap, path, indices, keep)
    finally:
        cap.release()
    out[dup] = out[src[dup]]  # copies of frames already decoded into their first place
    return out


def decode_into(
    cap: cv2.VideoCapture,
    path: str | os.PathLike,
    indices: np.ndarray,
    keep: Callable[[np.ndarray, int], None],
    reuse: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """decode's loop on an open capture: keep(frame, position) once per distinct index, at the
    first position asking for it. Returns (src, dup): position dup[i] repeats position
    src[dup[i]]. reuse: every frame is retrieved into the previous one's array (no allocation
    each), so keep must be done with a frame when it returns."""
    into = None
    wanted, first = np.unique(indices, return_index=True)  # first: where each lands in the output
    got = 0
    pos = 0
    for idx, at in zip(wanted.tolist(), first.tolist(), strict=True):
        while pos < idx:
            if not cap.grab():
                break
            pos += 1
        ok = pos == idx and cap.grab()
        frame = (cap.retrieve() if into is None else cap.retrieve(into))[1] if ok else None
        if frame is None:
            break
        keep(frame, at)
        if reuse:
            into = frame
        got += 1
        pos += 1
    if got == 0:
        raise NoFrames(f"no decodable frames in {path}")
    if got < len(wanted):
        missing = int(wanted[got])
        raise FrameRangeError(
            f"{path} has only {missing} decodable frames; frame {missing + 1} was requested"
        )
    src = first[np.searchsorted(wanted, indices)]  # repeated indices (a short clip's padding)
    return src, np.flatnonzero(src != np.arange(len(indices)))


def count_frames(path: str | os.PathLike, max_frames: int | None = None) -> int:
    """Frames that actually decode (containers can claim more than they hold); past
    `max_frames` an OverLimit, so counting a video that claims nothing stays bounded too."""
    cap = open_video(path)
    n = 0
    try:
        while cap.grab():
            n += 1
            if max_frames is not None and n > max_frames:
                raise OverLimit(
                    f"video has more than {max_frames} frames; the limit is {max_frames}"
                )
    finally:
        cap.release()
    return n


def decode_all(
    path: str | os.PathLike, max_frames: int | None = None, each: Frame | None = None
) -> np.ndarray:
    """Every frame that decodes -> T x H x W x 3 uint8 BGR, in one pass over the file.

    The count is the true one, not the container's claim. A video with more than `max_frames`
    fails as soon as frame max_frames + 1 decodes, so memory stays bounded whatever it claims.
    `each` runs on every frame as it decodes (decode's).
    """
    cap = open_video(path)
    frames: list[np.ndarray] = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if max_frames is not None and len(frames) >= max_frames:
                raise OverLimit(
                    f"video has more than {max_frames} frames; the limit is {max_frames}"
                )
            frames.append(frame if each is None else each(frame))
    finally:
        cap.release()
    if not frames:
        raise NoFrames(f"no decodable frames in {path}")
    return np.stack(frames)


def frame_total(path: str | os.PathLike, info: VideoInfo | None = None) -> int:
    """The container's frame count, or the decoded count where it claims none."""
    claimed = (info or probe(path)).frames
    return claimed if claimed > 0 else count_frames(path)


def decode_trimmed(
    path: str | os.PathLike,
    frame_start: int,
    frame_end: int,
    pick,
    total: int | None = None,
    each: Frame | None = None,
) -> tuple[np.ndarray, int, int]:
    """Decode the frames `pick(n)` selects (offsets into the n-frame trimmed range).

    Returns (frames, lo, hi) with [lo, hi) the 0-based trimmed range. `total` is frame_total's
    answer when the caller already has it. Containers can claim more frames than decode; for
    frame_end = -1 the range is then recounted and picked again. `each`: decode's.
    """
    if total is None:
        total = frame_total(path)

    def attempt(total: int) -> tuple[np.ndarray, int, int]:
        if total <= 0:
            raise NoFrames(f"no decodable frames in {path}")
        lo, hi = trim_range(frame_start, frame_end, total)
        return decode(path, lo + np.asarray(pick(hi - lo)), each), lo, hi

    try:
        return attempt(total)
    except FrameRangeError:
        if frame_end != -1:
            raise
        return attempt(count_frames(path))
