"""The one video preprocessing path, shared by conversion, training, evaluation and serving.

    decode (only the frames needed) -> trim -> [bbox crop] -> resize short side
        -> sample num_frames -> centre / random crop -> channel order -> C x T x H x W uint8

Frames travel as uint8 BGR arrays (OpenCV's order); the last step crops each one into the
model's channel order, straight into the output. A clip stays uint8: the model's value range is
the network's first step (`normalize`, which every runtime and the ONNX graph apply), so a clip
is a quarter of its float32 size in every copy, pipe and request, and preprocessing costs
little more than decoding (make bench).
load_clip and clip_from_frames take one sampled frame at a time from the decoder (or the input)
through the resize into its place in the output: only the frame in flight is held, in arrays
reused from frame to frame, with no intermediate copies; and only the part of each frame that the
crop reaches is resized (bit for bit what resizing all of it gives there: _top_left).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from model.config import check_fields, rule, strict_from_dict
from model.video.decode import (
    Frame,
    FrameRangeError,
    NoFrames,
    VideoError,
    claimed_frames,
    count_frames,
    decode_into,
    open_video,
    sample_indices,
    trim_range,
)


@dataclass(frozen=True)
class PreprocessConfig:
    """How the model wants its input. Stored in config.json so serving never guesses."""

    num_frames: int = field(default=64, metadata=rule(ge=1))
    resize: int = field(default=256, metadata=rule(ge=1))  # short side after resizing, pre-crop
    crop: int = field(default=224, metadata=rule(ge=1))
    # what the network was trained on (WLASL: OpenCV BGR)
    channel_order: str = field(default="BGR", metadata=rule(choices=("BGR", "RGB")))
    value_range: tuple[float, float] = (-1.0, 1.0)  # uint8 [0, 255] maps linearly onto this
    bbox_crop: bool = False  # crop around the signer's box (needs a bbox, i.e. not at serving)
    # fraction of the box size added on each side
    bbox_margin: float = field(default=0.1, metadata=rule(ge=0))
    fps: float = field(default=25.0, metadata=rule(gt=0))  # rate frame indices and motion assume
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_fields(self, "model")  # types, ranges, choices; value_range becomes a float tuple
        if self.crop > self.resize:
            raise ValueError(f"model.crop must be <= model.resize ({self.resize}), got {self.crop}")
        lo, hi = self.value_range
        if not lo < hi:
            raise ValueError(
                f"model.value_range must be [low, high] with low < high, got "
                f"{list(self.value_range)}"
            )

    def to_dict(self) -> dict:
        return asdict(self) | {"value_range": list(self.value_range)}

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return strict_from_dict(cls, d, "model")


def bbox_window(
    bbox: Sequence[float], margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """The bbox [xmin, ymin, xmax, ymax] grown by margin on each side, clipped to the frame."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    x0, y0 = max(0, int(x0 - mx)), max(0, int(y0 - my))
    x1, y1 = min(width, int(np.ceil(x1 + mx))), min(height, int(np.ceil(y1 + my)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise VideoError(f"bbox {list(bbox)} leaves no image inside the {width}x{height} frame")
    return x0, y0, x1, y1


def resize_frames(
    frames: np.ndarray, cfg: PreprocessConfig, bbox: Sequence[float] | None = None
) -> np.ndarray:
    """[bbox crop] + resize so the short side is cfg.resize. T x H x W x 3 uint8 in and out."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"expected frames T x H x W x 3, got shape {list(frames.shape)}")
    if cfg.bbox_crop and bbox is not None:
        x0, y0, x1, y1 = bbox_window(bbox, cfg.bbox_margin, frames.shape[2], frames.shape[1])
        frames = frames[:, y0:y1, x0:x1]
    h, w = frames.shape[1:3]
    size = resized_size(w, h, cfg)
    if size == (w, h):
        return np.ascontiguousarray(frames)
    out = np.empty((len(frames), size[1], size[0], 3), np.uint8)
    for f, o in zip(frames, out, strict=True):  # straight into place: no list to stack
        cv2.resize(f, size, dst=o, interpolation=cv2.INTER_LINEAR)
    return out


def frame_resizer(
    width: int, height: int, cfg: PreprocessConfig, bbox: Sequence[float] | None = None
) -> Frame:
    """resize_frames for one width x height frame, to run on each frame as it decodes."""
    return _frame_resizer(width, height, cfg, bbox, reuse=False)


def _frame_resizer(
    width: int,
    height: int,
    cfg: PreprocessConfig,
    bbox: Sequence[float] | None,
    reuse: bool,
    upto: tuple[int, int] | None = None,
) -> Frame:
    """frame_resizer; with reuse, every result is written into one array (in cache from frame to
    frame, and no allocation each), so a caller must be done with one result before the next.
    upto=(x, y): only the result's [:y, :x] is needed (the rest may be missing; see _top_left)."""
    x0, y0, x1, y1 = _window(width, height, cfg, bbox)
    size = resized_size(x1 - x0, y1 - y0, cfg)
    if size == (x1 - x0, y1 - y0):
        return lambda frame: frame[y0:y1, x0:x1]
    part = None if upto is None else _top_left(x1 - x0, y1 - y0, size, upto)
    if part is None:
        scratch = np.empty((size[1], size[0], 3), np.uint8) if reuse else None
        return lambda frame: cv2.resize(
            frame[y0:y1, x0:x1], size, dst=scratch, interpolation=cv2.INTER_LINEAR
        )
    w, h, fx, fy = part
    scratch = np.empty((round(h * fy), round(w * fx), 3), np.uint8) if reuse else None
    return lambda frame: cv2.resize(
        frame[y0 : y0 + h, x0 : x0 + w],
        None,
        dst=scratch,
        fx=fx,
        fy=fy,
        interpolation=cv2.INTER_LINEAR,
    )


def _top_left(
    width: int, height: int, size: tuple[int, int], upto: tuple[int, int]
) -> tuple[int, int, float, float] | None:
    """(w, h, fx, fy): resizing the top left w x h of a width x height frame by fx, fy gives
    exactly the [:upto[1], :upto[0]] of resizing all of it to `size` -- the same pixels for
    less work, as a centre crop drops the right and bottom. None where that does not hold.

    OpenCV's bilinear resize of uint8 computes each output pixel in fixed point from its own
    source position and weights, which depend only on the output index and the scale. So with
    the full resize's own scale (fx = size / width, what cv2.resize derives from a dsize), the
    same origin, and every source pixel the wanted outputs read inside the part (with a margin:
    none clamped at an edge the full frame does not have), the wanted outputs come out the same;
    tests/test_video.py sweeps sizes, windows and crops to hold OpenCV to it. Not used where
    cv2.resize takes another path: a whole number scale (its area shortcut) or a part whose size
    would not change (a plain copy)."""
    fx, fy = size[0] / width, size[1] / height
    sx, sy = 1 / fx, 1 / fy  # OpenCV's source step per output pixel
    if abs(sx - round(sx)) < 1e-9 or abs(sy - round(sy)) < 1e-9:
        return None
    w = min(width, math.floor((upto[0] - 0.5) * sx - 0.5) + 3)
    h = min(height, math.floor((upto[1] - 0.5) * sy - 0.5) + 3)
    out = round(w * fx), round(h * fy)  # the dsize cv2.resize gives the part
    if (w, h) == (width, height) or out == (w, h) or out[0] < upto[0] or out[1] < upto[1]:
        return None
    return w, h, fx, fy


def _window(
    width: int, height: int, cfg: PreprocessConfig, bbox: Sequence[float] | None
) -> tuple[int, int, int, int]:
    """The part of a width x height frame that is resized: the bbox window when cropping to it."""
    if cfg.bbox_crop and bbox is not None:
        return bbox_window(bbox, cfg.bbox_margin, width, height)
    return 0, 0, width, height


def resized_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(width, height) of a width x height frame after resize_frames: short side cfg.resize."""
    scale = cfg.resize / min(height, width)
    return max(cfg.crop, round(width * scale)), max(cfg.crop, round(height * scale))


def to_clip(
    frames: np.ndarray, cfg: PreprocessConfig, *, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Resized uint8 BGR frames T x H x W x 3 -> crop -> uint8 C x T x crop x crop."""
    c = cfg.crop
    y, x = _crop_origin(*frames.shape[1:3], cfg, rng)
    out = np.empty((len(frames), c, c, 3), np.uint8)
    convert = _converter(cfg)
    for f, o in zip(frames, out, strict=True):  # frame by frame: each stays in cache
        convert(f[y : y + c, x : x + c], o)
    return _channels_first(out)


def _crop_origin(
    h: int, w: int, cfg: PreprocessConfig, rng: np.random.Generator | None
) -> tuple[int, int]:
    """Top left corner of the crop in an h x w resized frame: centred, or jittered (rng)."""
    c = cfg.crop
    y, x = (h - c) // 2, (w - c) // 2
    if rng is not None:
        # Jitter within the central resize x resize square: on a wide frame a crop anywhere
        # along the width would often cut the signer out, which eval and serving never do.
        j = (cfg.resize - c) // 2
        y = int(np.clip(y + rng.integers(-j, j + 1), 0, h - c))
        x = int(np.clip(x + rng.integers(-j, j + 1), 0, w - c))
    return y, x


def _converter(cfg: PreprocessConfig) -> Callable[[np.ndarray, np.ndarray], None]:
    """(cropped uint8 BGR frame, its place in the output) -> the model's channel order there."""
    if cfg.channel_order == "RGB":
        return lambda f, o: np.copyto(o, f[..., ::-1])
    return lambda f, o: np.copyto(o, f)


def _channels_first(out: np.ndarray) -> np.ndarray:
    # C x T x H x W as a view of T x H x W x C memory, i.e. already channels_last_3d, the layout
    # the fast torch forward wants (torch.from_numpy keeps the strides). No torch here: the
    # decoder process and the ONNX serving image never have it.
    return out.transpose(3, 0, 1, 2)


def value_map(value_range: Sequence[float]) -> tuple[np.float32, np.float32]:
    """uint8 [0, 255] -> value_range as float32 (scale, offset): x * scale + offset."""
    lo, hi = value_range
    return np.float32((hi - lo) / 255.0), np.float32(lo)


def normalize(clips: np.ndarray, value_range: Sequence[float]) -> np.ndarray:
    """uint8 clips (any shape) -> float32 in value_range, the network's first step.

    float32(v) * scale + offset, each step rounded to float32: bit for bit what the torch
    runtime's `.to(float32).mul_(scale).add_(offset)` and the ONNX graph's Cast, Mul, Add give.
    The result keeps the input's memory layout (channels last stays channels last)."""
    if clips.dtype != np.uint8:
        raise TypeError(f"clips must be uint8 (preprocessing's output), got {clips.dtype}")
    scale, offset = value_map(value_range)
    out = np.multiply(clips, scale, dtype=np.float32)
    return np.add(out, offset, out=out, dtype=np.float32)


def clip_from_frames(
    frames: np.ndarray,
    cfg: PreprocessConfig,
    *,
    bbox: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Already-trimmed BGR frames (any count) -> model input. rng=None is eval/serving.

    to_clip(resize_frames(frames[sampled], ...)), one sampled frame at a time: no copy of the
    sampled frames, and each resized one goes straight into its place in the output."""
    idx = sample_indices(len(frames), cfg.num_frames, rng=rng)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"expected frames T x H x W x 3, got shape {list(frames.shape)}")
    x0, y0, x1, y1 = _window(frames.shape[2], frames.shape[1], cfg, bbox)
    w, h = resized_size(x1 - x0, y1 - y0, cfg)  # as resize_frames would size it
    c = cfg.crop
    y, x = _crop_origin(h, w, cfg, rng)
    upto = x + c, y + c
    resize = _frame_resizer(frames.shape[2], frames.shape[1], cfg, bbox, reuse=True, upto=upto)
    out = np.empty((len(idx), c, c, 3), np.uint8)
    convert = _converter(cfg)
    done: dict[int, int] = {}  # frame -> where it went first (a short clip's padding repeats)
    for at, i in enumerate(idx.tolist()):
        if i in done:
            out[at] = out[done[i]]
        else:
            done[i] = at
            convert(resize(np.ascontiguousarray(frames[i]))[y : y + c, x : x + c], out[at])
    return _channels_first(out)


def load_clip(
    path: str | os.PathLike,
    cfg: PreprocessConfig,
    *,
    frame_start: int = 1,
    frame_end: int = -1,
    bbox: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
    total: int | None = None,
) -> np.ndarray:
    """A video file -> model input C x T x H x W uint8, decoding only the sampled frames.

    `total`: the video's frame_total, for a caller that probed it already. The result is
    to_clip of decode_trimmed's frames, each resized by frame_resizer, computed one frame at a
    time as it decodes.
    """
    cap = None
    if total is None:  # frame_total from the capture that will decode: one open, not two
        cap = open_video(path)
        try:
            total = claimed_frames(cap) or count_frames(path)
        except BaseException:
            cap.release()
            raise
    args = path, frame_start, frame_end, cfg, bbox, rng
    try:
        return _sampled_clip(cap, total, *args)
    except FrameRangeError:  # decode_trimmed's retry, for a container claiming too many frames
        if frame_end != -1:
            raise
    return _sampled_clip(None, count_frames(path), *args)


def _sampled_clip(
    cap: cv2.VideoCapture | None,
    total: int,
    path: str | os.PathLike,
    frame_start: int,
    frame_end: int,
    cfg: PreprocessConfig,
    bbox: Sequence[float] | None,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """One decode_trimmed attempt of load_clip on `cap` (opened here if None; released here)."""
    try:
        if total <= 0:
            raise NoFrames(f"no decodable frames in {path}")
        lo, hi = trim_range(frame_start, frame_end, total)
        indices = lo + sample_indices(hi - lo, cfg.num_frames, rng=rng)
        # The crop's jitter is drawn at the first frame, where to_clip draws it after decoding:
        # a failed attempt puts it back, so the draws stay those of decode_trimmed + to_clip.
        drawn = None if rng is None else rng.bit_generator.state
        c = cfg.crop
        out = np.empty((len(indices), c, c, 3), np.uint8)
        convert = _converter(cfg)
        first: list = []  # the first frame's shape, its resizer and the crop's top left corner

        def keep(frame: np.ndarray, at: int) -> None:  # as each frame decodes
            if not first:
                width, height = frame.shape[1], frame.shape[0]
                x0, y0, x1, y1 = _window(width, height, cfg, bbox)
                w, h = resized_size(x1 - x0, y1 - y0, cfg)  # as resize_frames would size it
                y, x = _crop_origin(h, w, cfg, rng)
                upto = x + c, y + c
                resize = _frame_resizer(width, height, cfg, bbox, reuse=True, upto=upto)
                first[:] = frame.shape, resize, (y, x)
            elif frame.shape != first[0]:
                raise VideoError(f"frame size changes mid-video: {frame.shape} after {first[0]}")
            y, x = first[2]
            convert(first[1](frame)[y : y + c, x : x + c], out[at])

        try:
            if cap is None:
                cap = open_video(path)
            src, dup = decode_into(cap, path, indices, keep, reuse=True)
        except BaseException:
            if drawn is not None:
                rng.bit_generator.state = drawn
            raise
    finally:
        if cap is not None:
            cap.release()
    out[dup] = out[src[dup]]  # a short clip's padding: copies of frames already converted
    return _channels_first(out)
