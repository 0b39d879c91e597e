"""Sentence mode: a video with several signs in a row -> the words, their frame spans, confidences.

The classifier was trained on single trimmed signs and has no "idle" class, so windows straddling
a sign and the resting hand after it are confidently wrong. Where signing happens is therefore
read off the video itself first, and only those stretches are classified:

1. Motion. Frames go to grey, shrink to MOTION_SIDE pixels on the short side and blur (compression
   noise, tiny jitter); the motion at frame t is the mean of |g[t+h] - g[t-h]| above MOTION_FLOOR
   grey levels over a lag of MOTION_LAG frames (an idle hand's jitter does not grow with the lag,
   a sign's motion does), smoothed, divided by the video's MOTION_PCT-th percentile (not below
   MOTION_MIN, so a still video stays still).
2. Active segments. Hysteresis: a segment is a run of frames above LOW that reaches HIGH; gaps
   shorter than `window // 8` are closed, segments shorter than `window // 5` dropped.
3. Words. A segment up to 1.5 windows long is one sign: one clip through `clip_from_frames`, the
   shared preprocessing, clip logits = max over time, softmax. A longer one holds several signs:
   windows inside it (`window` frames every `stride`) give per-time logits spread onto frames,
   Hann-tapered (`frame_probabilities`); frames below `threshold` are idle and `segment` turns
   the per-frame labels into runs (blips under window // 3 dropped, gaps under window // 4 filled).
   A word below `threshold` confidence is dropped.
4. Repeats. Neighbouring words of one gloss with less than `window // 8` frames between them are
   one word; the same sign twice after a real pause stays two words.

Defaults come from the model's PreprocessConfig: window = max(num_frames, SIGN_SECONDS * fps)
source frames (about one sign), stride = window // 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from model.video import clip_from_frames

SIGN_SECONDS = 1.2  # typical duration of one sign: the default window
DEFAULT_THRESHOLD = 0.5  # a word less confident than this is dropped
MOTION_SIDE, MOTION_LAG, MOTION_FLOOR = 48, 4, 10.0  # grey short side, frame lag, grey levels
MOTION_PCT, MOTION_MIN = 50, 0.05  # normaliser: this percentile of the video, at least MIN
HIGH, LOW = 0.5, 0.3  # hysteresis on normalised motion


@dataclass(frozen=True)
class Word:
    gloss: str
    start: int  # 0-based frame indices in the input video, inclusive
    end: int
    confidence: float  # mean per-frame max probability over [start, end]


def _check(name: str, value, lo: float, hi: float = math.inf, integer: bool = True):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{lo}, {hi}], got {value!r}")
    return int(value) if integer else float(value)


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Start frames of the windows covering [0, n); the last one ends at n."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def frame_probabilities(
    classifier, frames: np.ndarray, window: int, stride: int, batch_size: int = 8
) -> np.ndarray:
    """Steps 1-2: T x H x W x 3 uint8 BGR frames -> T x N per-frame class probabilities."""
    cfg = classifier.bundle.preprocess
    n = len(frames)
    starts = window_starts(n, window, stride)
    total = np.zeros((n, len(classifier.labels)), np.float64)
    weight = np.zeros(n, np.float64)
    for i in range(0, len(starts), batch_size):
        batch = starts[i : i + batch_size]
        clips = torch.stack([clip_from_frames(frames[a : a + window], cfg) for a in batch])
        x = clips.to(classifier.device).contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            probs = classifier.model(x).float().softmax(dim=1).cpu().numpy()  # B x N x T'
        for a, p in zip(batch, probs, strict=True):
            b = min(a + window, n)
            span = max(b - a, cfg.num_frames)  # a padded window's time axis
            steps = p.shape[1]
            pos = np.arange(b - a)
            step_of = np.minimum(pos * steps // span, steps - 1)
            taper = np.sin(np.pi * (pos + 0.5) / (b - a)) ** 2
            total[a:b] += taper[:, None] * p[:, step_of].T
            weight[a:b] += taper
    return total / weight[:, None]


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, start, end inclusive) for each run of equal labels."""
    cuts = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate([[0], cuts, [len(labels)]])
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    return [(int(labels[s]), int(s), int(e) - 1) for s, e in pairs]


def segment(labels: np.ndarray, min_len: int, max_gap: int) -> list[tuple[int, int, int]]:
    """Step 4 on per-frame labels (-1 = idle): [(label, start, end)] of the words."""
    labels = labels.copy()
    for lab, s, e in _runs(labels):  # blips: too short to be a sign
        if lab >= 0 and e - s + 1 < min_len:
            labels[s : e + 1] = -1
    runs = _runs(labels)
    for k in range(1, len(runs) - 1):  # short idle gap between two runs of one gloss
        lab, s, e = runs[k]
        if lab < 0 and e - s + 1 < max_gap and runs[k - 1][0] == runs[k + 1][0]:
            labels[s : e + 1] = runs[k - 1][0]
    return [r for r in _runs(labels) if r[0] >= 0]


def motion_energy(frames: np.ndarray, lag: int = MOTION_LAG) -> np.ndarray:
    """Step 1 without the normalisation: T x H x W x 3 uint8 BGR -> T motion values (>= 0)."""
    h, w = frames.shape[1:3]
    scale = MOTION_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = np.stack(
        [
            cv2.GaussianBlur(
                cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), size, interpolation=cv2.INTER_AREA),
                (3, 3),
                0,
            )
            for f in frames
        ]
    ).astype(np.float32)
    energy = np.zeros(len(frames))
    lag = min(lag, len(frames) - 1)
    if lag >= 1:
        d = np.maximum(np.abs(grey[lag:] - grey[:-lag]) - MOTION_FLOOR, 0).mean(axis=(1, 2))
        energy[lag // 2 : lag // 2 + len(d)] = d
    return np.convolve(energy, np.ones(3) / 3, mode="same")


def active_segments(
    energy: np.ndarray, min_len: int, max_gap: int, high: float = HIGH, low: float = LOW
) -> list[tuple[int, int]]:
    """Step 2: motion per frame -> [(start, end inclusive)] of the stretches with signing."""
    level = energy / max(np.percentile(energy, MOTION_PCT), MOTION_MIN)
    segs = [
        (s, e)
        for on, s, e in _runs((level >= low).astype(int))
        if on and level[s : e + 1].max() >= high
    ]
    merged: list[tuple[int, int]] = []
    for s, e in segs:
        if merged and s - merged[-1][1] - 1 < max_gap:
            s = merged.pop()[0]
        merged.append((s, e))
    return [(s, e) for s, e in merged if e - s + 1 >= min_len]


def _classify_clip(classifier, frames: np.ndarray) -> tuple[int, float]:
    clip = clip_from_frames(frames, classifier.bundle.preprocess)[None].to(classifier.device)
    with torch.inference_mode():
        logits = classifier.model(clip.contiguous(memory_format=torch.channels_last_3d))
    probs = logits.float().amax(dim=2).softmax(dim=1)[0].cpu().numpy()
    return int(probs.argmax()), float(probs.max())


def transcribe(
    classifier,
    frames: np.ndarray,
    *,
    window: int | None = None,
    stride: int | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
) -> list[Word]:
    """A video's T x H x W x 3 uint8 BGR frames -> the signed words, in order."""
    cfg = classifier.bundle.preprocess
    if window is None:
        window = max(cfg.num_frames, round(SIGN_SECONDS * cfg.fps))
    window = _check("window", window, 1)
    stride = _check("stride", max(1, window // 4) if stride is None else stride, 1, window)
    threshold = _check(
        "threshold", DEFAULT_THRESHOLD if threshold is None else threshold, 0.0, 1.0, False
    )
    batch_size = _check("batch_size", batch_size, 1)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be T x H x W x 3 with T >= 1, got {list(frames.shape)}")

    short = max(1, window // 8)
    found: list[tuple[int, int, int, float]] = []  # (label, start, end, confidence)
    for a, b in active_segments(motion_energy(frames), max(1, window // 5), short):
        seg = frames[a : b + 1]
        if len(seg) <= 1.5 * window:
            lab, conf = _classify_clip(classifier, seg)
            found.append((lab, a, b, conf))
            continue
        probs = frame_probabilities(classifier, seg, window, stride, batch_size)
        conf = probs.max(axis=1)
        labels = np.where(conf >= threshold, probs.argmax(axis=1), -1)
        for lab, s, e in segment(labels, max(1, window // 3), max(1, window // 4)):
            found.append((lab, a + s, a + e, float(conf[s : e + 1].mean())))
    words: list[tuple[int, int, int, float]] = []
    for lab, s, e, c in (f for f in found if f[3] >= threshold):
        if words and words[-1][0] == lab and s - words[-1][2] - 1 < short:
            p = words.pop()
            n1, n2 = p[2] - p[1] + 1, e - s + 1
            s, c = p[1], (p[3] * n1 + c * n2) / (n1 + n2)
        words.append((lab, s, e, c))
    return [Word(classifier.labels[lab], s, e, c) for lab, s, e, c in words]
