"""Sentence mode: a video with several signs in a row -> the words, their frame spans, confidences.

The model must have been trained with context windows (components/training/context.py): besides the
glosses it has a "no sign" output, and it was taught to name the sign under the *centre frame*
of a window of `window` frames, or "no sign" when the signer is at rest there. Sentence mode
asks exactly that of every frame:

1. Windows. A window of `window` frames is centred on every `stride`-th frame (the video's ends
   are extended by repeating the first / last frame, as a signer at rest would look), each goes
   through the shared preprocessing (`clip_from_frames`) and the model; its per-time logits,
   max over time, softmax, give that centre frame's probabilities. Frames between two centres
   interpolate them.
2. Labels. A frame is signing where P(no sign) < 1 - `threshold`; it then gets the most probable
   gloss. Nothing else decides where signs are: no motion heuristics, no fixed segment length.
3. Words. Runs of one gloss are words. The window is about one sign long, so a real sign keeps
   its gloss while the window's centre crosses most of it: a run shorter than `window // 2`
   frames is a window straddling a sign and the rest or the next sign, briefly unsure. Right
   against another word it joins that word; alone, one shorter than `window // 4` is dropped
   (measured on the demo matrix's nine models: a third of a window let those transitions through
   as extra words in up to 7 of 24 strings, half a window in at most 1). Two runs of one gloss
   with less than `window // 8` frames between them are one word -- repeats suppressed, while
   the same sign made twice with a real pause in between stays two words. A word's confidence
   is the mean probability of its gloss over its frames.

Defaults come from the model directory: window = the trained context window, stride =
window // 15 (2 frames for the 30-frame default, finer than I3D's 8-frame time step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.runtimes.choice import softmax, stack
from model.video.clip import clip_from_frames
from model.video.decode import OverLimit, sample_indices

DEFAULT_THRESHOLD = 0.5  # P(some sign) a frame needs to belong to a word
Stop = Callable[[], None]  # called between batches of windows; raises to stop the work


def never() -> None:
    return None


class SentenceUnsupported(ValueError):
    """The model has no no-sign output, so it cannot tell where signs are."""


@dataclass(frozen=True)
class Word:
    gloss: str
    start: int  # 0-based frame indices in the input video, inclusive
    end: int
    confidence: float  # mean probability of the gloss over [start, end]


def _check(name: str, value, lo: float, hi: float = math.inf, integer: bool = True):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{lo}, {hi}], got {value!r}")
    return int(value) if integer else float(value)


def centred_window(n: int, centre: int, window: int) -> np.ndarray:
    """Frame indices of the `window` frames centred on `centre` in a video of n frames; past
    either end the first / last frame repeats."""
    first = centre - window // 2
    return np.clip(np.arange(first, first + window), 0, n - 1)


def window_centres(n: int, stride: int) -> np.ndarray:
    """Every stride-th frame of n, and the last one."""
    centres = np.arange(0, n, stride)
    return centres if centres[-1] == n - 1 else np.append(centres, n - 1)


def max_windows(classifier, max_frames: int | None) -> int | None:
    """The most windows one request may cost: what the default window and stride cost on the
    longest video the server takes. Each window is one clip of num_frames whatever its length
    (frame_probabilities gathers only the frames it samples), so this bounds the work."""
    trained = classifier.info.sentence_window
    if trained is None or max_frames is None:
        return None
    return len(window_centres(max_frames, max(1, trained // 15)))


def window_probabilities(
    classifier,
    frames: np.ndarray,
    centres: np.ndarray,
    window: int,
    batch_size: int = 8,
    stop: Stop = never,
) -> np.ndarray:
    """The window centred on each of `centres` -> len(centres) x (glosses + 1) float32
    probabilities (per-time logits, max over time, softmax; last column: no sign)."""
    cfg = classifier.info.preprocess
    n = len(frames)
    # The num_frames positions clip_from_frames samples from a window, gathered directly: a
    # window is num_frames frames of work however long it is.
    sample = sample_indices(window, cfg.num_frames)
    probs = [np.zeros((0, len(classifier.labels) + 1), np.float32)]
    for i in range(0, len(centres), batch_size):
        stop()
        clips = [
            clip_from_frames(frames[centred_window(n, int(c), window)[sample]], cfg)
            for c in centres[i : i + batch_size]
        ]
        probs.append(softmax(classifier.logits(stack(clips))))
    return np.concatenate(probs)


def frame_probabilities(
    classifier,
    frames: np.ndarray,
    window: int,
    stride: int,
    batch_size: int = 8,
    stop: Stop = never,
) -> np.ndarray:
    """Step 1: T x H x W x 3 uint8 BGR frames -> T x (glosses + 1) per-frame probabilities."""
    n = len(frames)
    centres = window_centres(n, stride)
    p = window_probabilities(classifier, frames, centres, window, batch_size, stop)
    p = p.astype(np.float64)
    t = np.arange(n)
    return np.stack([np.interp(t, centres, p[:, k]) for k in range(p.shape[1])], axis=1)


def complete_centres(n: int, window: int, stride: int, start: int) -> np.ndarray:
    """Centres start, start + stride, ... of the windows that end within n frames: those later
    frames cannot change (live mode scores each once, as it completes)."""
    last = n - 1 - (window - 1 - window // 2)  # the last centre whose window ends in the frames
    return np.arange(start, max(start, last + 1), stride)


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, start, end inclusive) for each run of equal labels."""
    cuts = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate([[0], cuts, [len(labels)]])
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    return [(int(labels[s]), int(s), int(e) - 1) for s, e in pairs]


def _words_beside(runs: list[tuple[int, int, int]], k: int) -> list[tuple[int, int, int]]:
    """The runs right before and after run k that are words (not rest)."""
    return [runs[j] for j in (k - 1, k + 1) if 0 <= j < len(runs) and runs[j][0] >= 0]


def segment(labels: np.ndarray, min_len: int, max_gap: int) -> list[tuple[int, int, int]]:
    """Step 3 on per-frame labels (-1 = no sign): [(label, start, end)] of the words.

    A run shorter than `min_len` right against another word is that word's start or end misread
    (its window held the end of one sign and the start of the next): it joins the longer
    neighbour, shortest first. One with rest on both sides is dropped if shorter than
    `min_len // 2`. Then two runs of one gloss less than `max_gap` frames apart become one."""
    labels = labels.copy()
    while True:
        runs = _runs(labels)
        short = [
            (e - s, k)
            for k, (lab, s, e) in enumerate(runs)
            if lab >= 0 and e - s + 1 < min_len and _words_beside(runs, k)
        ]
        if not short:
            break
        k = min(short)[1]
        _, s, e = runs[k]
        labels[s : e + 1] = max(_words_beside(runs, k), key=lambda r: r[2] - r[1])[0]
    for lab, s, e in _runs(labels):  # alone and too short to be a sign
        if lab >= 0 and e - s + 1 < max(1, min_len // 2):
            labels[s : e + 1] = -1
    runs = _runs(labels)
    for k in range(1, len(runs) - 1):  # a short pause inside one sign, or a repeat
        lab, s, e = runs[k]
        if lab < 0 and e - s + 1 < max_gap and runs[k - 1][0] == runs[k + 1][0]:
            labels[s : e + 1] = runs[k - 1][0]
    return [r for r in _runs(labels) if r[0] >= 0]


def transcribe(
    classifier,
    frames: np.ndarray,
    *,
    window: int | None = None,
    stride: int | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
    stop: Stop = never,
    on_probs: Callable[[np.ndarray], None] | None = None,
) -> list[Word]:
    """A video's T x H x W x 3 uint8 BGR frames -> the signed words, in order.

    `max_windows` caps the request's cost (OverLimit beyond it); `stop` is frame_probabilities'.
    `on_probs` is given the T x (glosses + 1) per-frame probabilities (last column: no sign),
    for a caller that shows them (the app's timeline).
    """
    frames, window, stride = _settings(classifier, frames, window, stride)
    threshold = _check(
        "threshold", DEFAULT_THRESHOLD if threshold is None else threshold, 0.0, 1.0, False
    )
    batch_size = _check("batch_size", batch_size, 1)
    _within(len(window_centres(len(frames), stride)), window, stride, max_windows)

    probs = frame_probabilities(classifier, frames, window, stride, batch_size, stop)
    if on_probs is not None:
        on_probs(probs)
    glosses = len(classifier.labels)
    signing = 1.0 - probs[:, glosses] >= threshold
    labels = np.where(signing, probs[:, :glosses].argmax(axis=1), -1)
    return [
        Word(classifier.labels[lab], s, e, float(probs[s : e + 1, lab].mean()))
        for lab, s, e in segment(labels, max(1, window // 2), max(1, window // 8))
    ]


def score_windows(
    classifier,
    frames: np.ndarray,
    *,
    window: int | None = None,
    stride: int | None = None,
    start: int = 0,
    batch_size: int = 8,
    max_windows: int | None = None,
    stop: Stop = never,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Step 1 for a stream (live mode): of the windows `transcribe` scores on these frames, those
    centred on start, start + stride, ... that end within them -> (their centres, their
    len(centres) x (glosses + 1) probabilities, the window). A window reaching before the first
    frame repeats it, as at a video's start; one reaching past the last is left for a later call
    with more frames. A caller that sends a stream's frames from its start, or from half a
    window before `start`, gets exactly the windows `transcribe` would score on the whole."""
    frames, window, stride = _settings(classifier, frames, window, stride)
    start = _check("start", start, 0, len(frames) - 1)
    centres = complete_centres(len(frames), window, stride, start)
    _within(len(centres), window, stride, max_windows)
    probs = window_probabilities(classifier, frames, centres, window, batch_size, stop)
    return centres, probs, window


def _settings(classifier, frames, window, stride) -> tuple[np.ndarray, int, int]:
    """The frames, window and stride checked, the defaults the model's filled in."""
    trained = classifier.info.sentence_window
    if trained is None:
        raise SentenceUnsupported(
            "this model has no no-sign output, so sentence mode cannot tell where signs are; "
            "train it with convert.idle_clips, train.context_fraction and train.context_epochs"
        )
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be T x H x W x 3 with T >= 1, got {list(frames.shape)}")
    # A window longer than the video only repeats its end frames; the cap keeps a request from
    # asking for a billion-frame index.
    window = _check("window", trained if window is None else window, 1, max(len(frames), trained))
    stride = _check("stride", max(1, window // 15) if stride is None else stride, 1, window)
    return frames, window, stride


def _within(windows: int, window: int, stride: int, max_windows: int | None) -> None:
    if max_windows is not None and windows > max_windows:
        raise OverLimit(
            f"window {window} and stride {stride} ask for {windows} windows on this video; the "
            f"limit is {max_windows} (use a larger stride)"
        )
