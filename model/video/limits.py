"""Reading an untrusted video (serving): every cost bounded before and during decoding.

`read_video` gives the frames a mode needs, resized to the model's size as they decode; the
container's header is checked against the `Limits` before any frame decodes, and again on what
decodes, so a header that lies gains nothing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from model.video.clip import PreprocessConfig, resized_size
from model.video.decode import (
    Frame,
    FrameRangeError,
    NoFrames,
    OverLimit,
    Truncated,
    VideoError,
    VideoInfo,
    count_frames,
    decode,
    decode_all,
    probe,
    sample_indices,
)


@dataclass(frozen=True)
class Limits:
    """What one video may cost. Checked on the container's header before any frame decodes,
    and again on what decodes, so a header that lies gains nothing: OpenCV hands every frame
    over at the header's size, and the memory FFmpeg spends inside one frame is bounded by the
    process it runs in (model/serving/decoder.py). None / inf = no limit (in-process use)."""

    max_duration_s: float = math.inf
    max_frames: int | None = None  # frames a video may have (and the `frames` input)
    max_pixels: int | None = None  # width x height of a frame
    max_aspect: float | None = None  # long side / short side of a frame
    max_kept_bytes: int | None = None  # resized frames held at once (sentence mode)


def check_size(width: int, height: int, limits: Limits) -> None:
    """A frame size within the limits; a long thin frame would resize to a huge one."""
    if width < 1 or height < 1:
        raise NoFrames(f"no decodable frames: the video has no picture size ({width}x{height})")
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise OverLimit(
            f"frames are {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} pixels per frame"
        )
    aspect = max(width, height) / min(width, height)
    if limits.max_aspect is not None and aspect > limits.max_aspect:
        raise OverLimit(
            f"frames are {width}x{height}, an aspect ratio of {aspect:.1f}; the limit is "
            f"{limits.max_aspect:g}"
        )


def check_length(frames: int, fps: float, cfg: PreprocessConfig, limits: Limits) -> None:
    """A frame count (claimed or decoded) within the limits, and a video, not a still."""
    if frames <= 0:
        raise NoFrames("the video has no decodable frames")
    if frames == 1:  # FFmpeg opens PNG/JPEG/WebP... as one-frame "videos"
        raise VideoError("not a video: a single still image (1 frame); send a video file")
    if limits.max_frames is not None and frames > limits.max_frames:
        raise OverLimit(f"video has {frames} frames; the limit is {limits.max_frames}")
    seconds = frames / (fps if fps > 0 else cfg.fps)
    if seconds > limits.max_duration_s:
        raise OverLimit(f"video is {seconds:.1f} s long; the limit is {limits.max_duration_s:g} s")


def check_complete(claimed: int, decoded: int) -> None:
    """Refuse a file that decodes to clearly fewer frames than its container promises (cut
    off, or corrupt part-way). Containers misstate counts by a frame or two, hence the slack."""
    if claimed > 0 and claimed - decoded > max(2, claimed // 20):
        raise Truncated(
            f"the video is cut off or corrupt: its container promises {claimed} frames, "
            f"only {decoded} decode"
        )


def _resizer(info: VideoInfo, cfg: PreprocessConfig) -> Frame:
    """Each frame straight to the model's size as it decodes, checked against the header."""
    size = resized_size(info.width, info.height, cfg)
    shape = (info.height, info.width, 3)

    def resize(frame: np.ndarray) -> np.ndarray:
        if frame.shape != shape:  # OpenCV converts at the header's size; never trust it blindly
            raise VideoError(f"frame size changes mid-video: {frame.shape} after {shape}")
        if size == (info.width, info.height):
            return frame
        return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)

    return resize


def read_word(path: str | os.PathLike, cfg: PreprocessConfig, limits: Limits) -> np.ndarray:
    """Word mode's frames: the num_frames sampled ones, resized -> num_frames x h x w x 3.

    to_clip of the result equals load_clip(path, cfg): resizing a frame as it decodes or
    after sampling is the same per-frame operation."""
    info = probe(path)
    check_size(info.width, info.height, limits)
    claimed = info.frames
    total = claimed if claimed > 0 else count_frames(path, limits.max_frames)
    check_length(total, info.fps, cfg, limits)
    resize = _resizer(info, cfg)
    try:
        return decode(path, sample_indices(total, cfg.num_frames), resize)
    except FrameRangeError:  # fewer frames than claimed: refuse a cut-off file, else recount
        n = count_frames(path, limits.max_frames)
        check_complete(claimed, n)
        check_length(n, info.fps, cfg, limits)
        return decode(path, sample_indices(n, cfg.num_frames), resize)


def read_sentence(path: str | os.PathLike, cfg: PreprocessConfig, limits: Limits) -> np.ndarray:
    """Sentence mode's frames: every frame, resized as it decodes -> T x h x w x 3.

    Only resized frames are held, at most max_kept_bytes of them (sampling windows from them
    later is the same as sampling from full-size frames and resizing)."""
    info = probe(path)
    check_size(info.width, info.height, limits)
    if info.frames > 0:  # a claim that breaks a limit needs no decoding to refuse
        check_length(info.frames, info.fps, cfg, limits)
    w, h = resized_size(info.width, info.height, cfg)
    cap = limits.max_frames
    if limits.max_kept_bytes is not None:
        fit = max(1, limits.max_kept_bytes // (w * h * 3))
        if info.frames > fit:
            raise OverLimit(
                f"video has {info.frames} frames of {info.width}x{info.height}; at most {fit} "
                f"frames of that size fit the limit of {limits.max_kept_bytes} bytes"
            )
        cap = fit if cap is None else min(cap, fit)
    frames = decode_all(path, cap, _resizer(info, cfg))
    check_complete(info.frames, len(frames))
    check_length(len(frames), info.fps, cfg, limits)
    return frames


READERS = {"word": read_word, "sentence": read_sentence}


def read_video(
    path: str | os.PathLike, mode: str, cfg: PreprocessConfig, limits: Limits
) -> np.ndarray:
    """The frames a mode needs from a video file, resized to the model's size, within limits."""
    return READERS[mode](path, cfg, limits)


def check_frames(frames: np.ndarray, limits: Limits) -> None:
    """Frames sent already decoded: the same size and count limits as a video's."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise VideoError(f"frames must be T x H x W x 3 with T >= 1, got {list(frames.shape)}")
    check_size(frames.shape[2], frames.shape[1], limits)
    if limits.max_frames is not None and len(frames) > limits.max_frames:
        raise OverLimit(f"{len(frames)} frames; the limit is {limits.max_frames}")
