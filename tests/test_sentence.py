"""Sentence mode on a stub classifier whose per-time logits are read off the frames themselves.

Frame encoding: a sign frame's top row is filled with 40 * (k + 1) for gloss k and a white block
moves along its lower half (motion, which sentence mode looks for first); an idle frame is black and
still, and the stub's logits there are all zero (uniform probabilities, i.e. "no sign").
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.sentence import Word, active_segments, motion_energy, segment, transcribe, window_starts
from model.video import PreprocessConfig

LABELS = ["a", "b", "c"]
PRE = PreprocessConfig(num_frames=8, resize=16, crop=16, fps=25.0)  # default window 30


class StubI3D(torch.nn.Module):
    """B x C x T x H x W -> per-time logits B x N x T (one step per sampled frame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = ((x[..., 0, :].mean(dim=(1, 3)) + 1) * 127.5 / 40).round().long() - 1  # B x T
        onehot = torch.nn.functional.one_hot(level.clamp(min=0), len(LABELS)).float()
        return (10.0 * onehot * (level >= 0)[..., None].float()).permute(0, 2, 1)


def stub_classifier():
    return SimpleNamespace(
        model=StubI3D(),
        labels=LABELS,
        bundle=SimpleNamespace(preprocess=PRE),
        device=torch.device("cpu"),
    )


def video(*parts: tuple[int | None, int]) -> np.ndarray:
    """(gloss index or None for idle, frame count) ... -> T x 16 x 16 x 3 uint8 frames."""
    frames = []
    for k, n in parts:
        f = np.zeros((n, 16, 16, 3), np.uint8)
        if k is not None:
            f[:] = 40 * (k + 1)
            for i in range(n):
                x = 2 * (i % 6)
                f[i, 9:13, x : x + 4] = 255
        frames.append(f)
    return np.concatenate(frames)


def iou(word: Word, start: int, end: int) -> float:
    inter = max(0, min(word.end, end) - max(word.start, start) + 1)
    return inter / ((word.end - word.start + 1) + (end - start + 1) - inter)


def test_one_sign_seen_by_many_windows_is_one_word():
    words = transcribe(stub_classifier(), video((None, 30), (1, 40), (None, 30)))
    assert [w.gloss for w in words] == ["b"]
    assert iou(words[0], 30, 69) >= 0.8
    assert words[0].confidence > 0.9


def test_sequence_with_repeat_and_spans():
    frames = video((None, 10), (0, 30), (None, 5), (2, 30), (None, 40), (2, 30), (None, 10))
    words = transcribe(stub_classifier(), frames)
    assert [w.gloss for w in words] == ["a", "c", "c"]  # the repeat after a pause counts twice
    for w, (s, e) in zip(words, [(10, 39), (45, 74), (115, 144)], strict=True):
        assert iou(w, s, e) >= 0.7, (w, s, e)


def test_short_low_confidence_dip_does_not_split_a_word():
    frames = video((None, 20), (1, 30), (None, 4), (1, 30), (None, 20))
    words = transcribe(stub_classifier(), frames)
    assert [w.gloss for w in words] == ["b"]
    labels = np.array([-1] * 5 + [0] * 15 + [-1] * 3 + [0] * 15 + [-1] * 5)
    assert segment(labels, min_len=10, max_gap=7) == [(0, 5, 37)]


def test_segments_shorter_than_the_minimum_are_dropped():
    # Motion over a 4-frame lag smears a 3-frame flash to about 9 frames: under window // 5 = 12.
    assert transcribe(stub_classifier(), video((None, 40), (2, 3), (None, 40)), window=60) == []
    labels = np.array([-1] * 5 + [1] * 4 + [-1] * 5 + [0] * 12)
    assert segment(labels, min_len=10, max_gap=7) == [(0, 14, 25)]


def test_all_idle_is_no_words():
    assert transcribe(stub_classifier(), video((None, 90))) == []


def test_video_shorter_than_the_window():
    words = transcribe(stub_classifier(), video((1, 20)))  # default window 30: one window
    assert [w.gloss for w in words] == ["b"] and iou(words[0], 0, 19) >= 0.8
    # Fewer frames than the model's num_frames: the shared preprocessing pads the one window.
    words = transcribe(stub_classifier(), video((0, 6)), window=12)
    assert [w.gloss for w in words] == ["a"] and iou(words[0], 0, 5) >= 0.5, words


def test_batch_size_does_not_change_the_result():
    frames = video((None, 10), (0, 30), (None, 20), (1, 25))
    clf = stub_classifier()
    assert transcribe(clf, frames, batch_size=1) == transcribe(clf, frames, batch_size=64)


def test_windows_cover_the_whole_video():
    assert window_starts(10, 30, 7) == [0]
    assert window_starts(100, 30, 7)[-1] == 70
    assert window_starts(30, 30, 7) == [0]


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
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
        transcribe(stub_classifier(), video((0, 20)), **kwargs)


def test_invalid_frames():
    with pytest.raises(ValueError, match="frames"):
        transcribe(stub_classifier(), np.zeros((0, 16, 16, 3), np.uint8))


def test_motion_energy_is_zero_on_still_frames_and_high_on_motion():
    frames = video((None, 20), (0, 20), (None, 20))
    energy = motion_energy(frames)
    assert energy[:15].max() == 0 and energy[-15:].max() == 0
    assert energy[24:36].min() > 0


def test_active_segments_hysteresis_gaps_and_minimum_length():
    e = np.zeros(100)  # normalised by its median: make that 1
    e[5:60] = 1.0  # a sign
    e[30:32] = 0.0  # a 2-frame dip inside it: closed
    e[60:61] = 0.35  # above LOW next to the sign: kept with it
    e[70:73] = 1.0  # a 3-frame blip: dropped
    e[80:95] = 0.35  # above LOW but never reaches HIGH: not a sign
    assert active_segments(e, min_len=5, max_gap=3) == [(5, 60)]
    assert active_segments(np.zeros(50), min_len=5, max_gap=3) == []  # a still video


def test_noise_and_jitter_are_not_motion():
    rng = np.random.default_rng(0)
    frames = np.full((40, 64, 64, 3), 90, np.uint8)
    frames += rng.integers(0, 7, frames.shape, dtype=np.uint8)  # compression-like noise
    for i, f in enumerate(frames):  # a resting hand jittering by a pixel
        c = 40 + (i % 2)
        f[c - 6 : c + 6, c - 6 : c + 6] = 220
    assert active_segments(motion_energy(frames), min_len=5, max_gap=3) == []
