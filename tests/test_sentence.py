"""Sentence mode's decoding on a stub classifier that reads its answer off the window's centre.

Frame encoding: a sign frame is filled with 40 * (k + 1) for gloss k, a frame at rest is black.
The stub answers what a context-trained model is taught to answer: the gloss of the frame at the
centre of the window it is shown, or "no sign" there. So these tests pin down the windows,
interpolation, thresholds, run rules and spans; tests/test_sentence_model.py runs a real model
on real videos.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from model.sentence import SentenceUnsupported, Word, centred_window, segment, transcribe
from model.video.clip import PreprocessConfig

LABELS = ["a", "b", "c"]
NO_SIGN = len(LABELS)
PRE = PreprocessConfig(num_frames=8, resize=16, crop=16, fps=25.0)


class StubClassifier:
    """The Classifier interface sentence mode uses: labels, info, logits(clips)."""

    def __init__(self, window: int | None = 30):
        self.labels = LABELS
        self.info = SimpleNamespace(preprocess=PRE, sentence_window=window)
        self.calls = 0

    def logits(self, clips: np.ndarray) -> np.ndarray:
        self.calls += 1
        centre = clips[:, :, clips.shape[2] // 2].mean(axis=(1, 2, 3))  # B, uint8 clips' scale
        level = np.round(centre / 40).astype(int) - 1
        cls = np.where(level >= 0, np.minimum(level, NO_SIGN - 1), NO_SIGN)
        return 10.0 * np.eye(NO_SIGN + 1, dtype=np.float32)[cls]


def video(*parts: tuple[int | None, int]) -> np.ndarray:
    """(gloss index or None for rest, frame count) ... -> T x 16 x 16 x 3 uint8 frames."""
    frames = []
    for k, n in parts:
        frames.append(np.full((n, 16, 16, 3), 0 if k is None else 40 * (k + 1), np.uint8))
    return np.concatenate(frames)


def iou(word: Word, start: int, end: int) -> float:
    inter = max(0, min(word.end, end) - max(word.start, start) + 1)
    return inter / ((word.end - word.start + 1) + (end - start + 1) - inter)


def test_one_sign_seen_by_many_windows_is_one_word():
    words = transcribe(StubClassifier(), video((None, 30), (1, 40), (None, 30)))
    assert [w.gloss for w in words] == ["b"]
    assert iou(words[0], 30, 69) >= 0.9
    assert words[0].confidence > 0.9


def test_sequence_with_repeat_and_spans():
    frames = video((None, 10), (0, 30), (None, 5), (2, 30), (None, 40), (2, 30), (None, 10))
    words = transcribe(StubClassifier(), frames)
    assert [w.gloss for w in words] == ["a", "c", "c"]  # the repeat after a pause counts twice
    for w, (s, e) in zip(words, [(10, 39), (45, 74), (115, 144)], strict=True):
        assert iou(w, s, e) >= 0.9, (w, s, e)


def test_signs_back_to_back_without_rest_are_two_words():
    words = transcribe(StubClassifier(), video((None, 10), (0, 25), (1, 25), (None, 10)))
    assert [w.gloss for w in words] == ["a", "b"]
    assert iou(words[0], 10, 34) >= 0.9 and iou(words[1], 35, 59) >= 0.9


def test_short_pause_inside_a_sign_does_not_split_it():
    frames = video((None, 20), (1, 30), (None, 2), (1, 30), (None, 20))  # 2 < window // 8
    assert [w.gloss for w in transcribe(StubClassifier(), frames)] == ["b"]
    labels = np.array([-1] * 5 + [0] * 15 + [-1] * 3 + [0] * 15 + [-1] * 5)
    assert segment(labels, min_len=10, max_gap=4) == [(0, 5, 37)]
    assert segment(labels, min_len=10, max_gap=3) == [(0, 5, 19), (0, 23, 37)]


def test_short_runs_join_the_word_they_touch_or_go():
    # A 4-frame "b" right before a long "a": the misread start of "a".
    labels = np.array([-1] * 5 + [1] * 4 + [0] * 20 + [-1] * 5)
    assert segment(labels, min_len=10, max_gap=3) == [(0, 5, 28)]
    # Alone between rests: a 5-frame run (min_len // 2) stays, a 4-frame one goes.
    labels = np.array([-1] * 5 + [1] * 5 + [-1] * 5 + [2] * 4 + [-1] * 5 + [0] * 12)
    assert segment(labels, min_len=10, max_gap=3) == [(1, 5, 9), (0, 24, 35)]
    # Shortest first: the 2-frame run joins the 6-frame one, which then joins the long one.
    labels = np.array([2] * 2 + [1] * 6 + [0] * 20)
    assert segment(labels, min_len=10, max_gap=3) == [(0, 0, 27)]


def test_a_run_under_half_a_window_against_a_word_is_that_words_edge():
    # Through transcribe's own lengths (window 30): 12 frames of "a" before a "b" are a window
    # straddling two signs, briefly unsure; 18 frames of "a" are a sign of their own.
    words = transcribe(StubClassifier(), video((None, 20), (0, 12), (1, 30), (None, 20)))
    assert [w.gloss for w in words] == ["b"] and iou(words[0], 20, 61) >= 0.9
    words = transcribe(StubClassifier(), video((None, 20), (0, 18), (1, 30), (None, 20)))
    assert [w.gloss for w in words] == ["a", "b"]
    # Alone: a 4-frame run (under window // 4) is dropped, a 10-frame one stays.
    assert transcribe(StubClassifier(), video((None, 20), (2, 4), (None, 20))) == []
    words = transcribe(StubClassifier(), video((None, 20), (2, 10), (None, 20)))
    assert [w.gloss for w in words] == ["c"]


def test_rest_only_is_no_words_and_threshold_bounds_work():
    assert transcribe(StubClassifier(), video((None, 90))) == []
    frames = video((None, 20), (2, 30), (None, 20))
    # The stub is 99.99% sure: a threshold of 1.0 is never met, 0.0 always is.
    assert transcribe(StubClassifier(), frames, threshold=1.0) == []
    words = transcribe(StubClassifier(), frames, threshold=0.0)  # every frame is "a sign"
    assert sum(w.end - w.start + 1 for w in words) == len(frames)


def test_video_shorter_than_the_window():
    words = transcribe(StubClassifier(), video((1, 20)))  # the window's ends repeat frames
    assert [(w.gloss, w.start, w.end) for w in words] == [("b", 0, 19)]
    words = transcribe(StubClassifier(), video((0, 6)), window=12)  # fewer than num_frames
    assert [(w.gloss, w.start, w.end) for w in words] == [("a", 0, 5)]


def test_stride_and_batch_size():
    frames = video((None, 10), (0, 30), (None, 20), (1, 25))
    clf = StubClassifier()
    assert transcribe(clf, frames, batch_size=1) == transcribe(clf, frames, batch_size=64)
    clf = StubClassifier()
    transcribe(clf, frames, stride=5, batch_size=1)
    assert clf.calls == len(range(0, len(frames), 5)) + 1  # + the last frame's window


def test_centred_window_repeats_the_ends():
    assert centred_window(100, 50, 6).tolist() == [47, 48, 49, 50, 51, 52]
    assert centred_window(100, 0, 6).tolist() == [0, 0, 0, 0, 1, 2]
    assert centred_window(5, 4, 6).tolist() == [1, 2, 3, 4, 4, 4]


def test_a_model_without_a_no_sign_output_is_refused():
    with pytest.raises(SentenceUnsupported, match="no no-sign output.*context_fraction"):
        transcribe(StubClassifier(window=None), video((0, 20)))


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
        ({"window": 10**9}, "window"),  # capped at max(frames, trained window)
        ({"stride": 0}, "stride"),
        ({"window": 10, "stride": 11}, "stride"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_parameters(kwargs, bad):
    value = repr(kwargs[bad])
    with pytest.raises(ValueError, match=rf"{bad} .*got {value}"):
        transcribe(StubClassifier(), video((0, 20)), **kwargs)


def test_invalid_frames():
    with pytest.raises(ValueError, match="frames"):
        transcribe(StubClassifier(), np.zeros((0, 16, 16, 3), np.uint8))
