"""The shared preprocessing path: decoding, trimming, sampling, cropping, scaling, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model import video as V
from model.video import PreprocessConfig
from tests.conftest import moving_square, write_video

CFG = PreprocessConfig(num_frames=8, resize=64, crop=56)


def _all_frames(path: Path) -> np.ndarray:
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return np.stack(out)
        out.append(f)


def test_decode_returns_exactly_the_requested_frames(video_file):
    every = _all_frames(video_file)
    idx = [3, 0, 17, 17, 39]
    got = V.decode(video_file, idx)
    assert got.shape == (5, *every.shape[1:]) and got.dtype == np.uint8
    for g, i in zip(got, idx, strict=True):
        assert np.array_equal(g, every[i])


def test_decode_grabs_without_retrieving_unneeded_frames(video_file, monkeypatch):
    calls = {"grab": 0, "retrieve": 0}
    real = cv2.VideoCapture

    class Counting:
        def __init__(self, *a):
            self.cap = real(*a)

        def __getattr__(self, name):
            return getattr(self.cap, name)

        def grab(self):
            calls["grab"] += 1
            return self.cap.grab()

        def retrieve(self):
            calls["retrieve"] += 1
            return self.cap.retrieve()

    monkeypatch.setattr(V.cv2, "VideoCapture", Counting)
    V.decode(video_file, [2, 5, 9])
    assert calls == {"grab": 10, "retrieve": 3}  # stops after frame 9, converts only 3


def test_sample_indices_covers_long_clips_and_pads_short_ones():
    assert V.sample_indices(80, 8).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    assert V.sample_indices(8, 8).tolist() == list(range(8))
    assert V.sample_indices(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    rng = np.random.default_rng(0)
    for _ in range(20):
        jit = V.sample_indices(80, 8, rng=rng)
        assert np.all(np.diff(jit) > 0) and jit.min() >= 0 and jit.max() < 80
        assert np.all(jit // 10 == np.arange(8))  # one frame per segment
        short = V.sample_indices(5, 8, rng=rng)
        assert len(short) == 8 and np.all(np.diff(short) >= 0) and set(short) == set(range(5))


def test_trim_range_is_one_based_inclusive():
    assert V.trim_range(1, -1, 40) == (0, 40)
    assert V.trim_range(5, 10, 40) == (4, 10)
    with pytest.raises(V.FrameRangeError, match="beyond the video's 40 frames"):
        V.trim_range(5, 41, 40)
    with pytest.raises(V.FrameRangeError, match="before frame_start"):
        V.trim_range(10, 5, 40)
    with pytest.raises(V.FrameRangeError, match=">= 1"):
        V.trim_range(0, 5, 40)


def test_load_clip_shape_range_and_channel_order(video_file):
    clip = V.load_clip(video_file, CFG)
    assert clip.shape == (3, 8, 56, 56) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    rgb = V.load_clip(video_file, PreprocessConfig(**{**CFG.to_dict(), "channel_order": "RGB"}))
    assert torch.equal(rgb, clip.flip(0))
    unit = V.load_clip(video_file, PreprocessConfig(**{**CFG.to_dict(), "value_range": (0, 1)}))
    torch.testing.assert_close(unit * 2 - 1, clip)


def test_load_clip_matches_a_direct_computation(video_file):
    """Trim, sample, resize short side, centre crop, BGR, x/255*2-1, written out longhand."""
    every = _all_frames(video_file)[9:30]  # frame_start=10, frame_end=30
    idx = V.sample_indices(len(every), CFG.num_frames)
    frames = []
    for f in every[idx]:
        h, w = f.shape[:2]
        s = 64 / min(h, w)
        r = cv2.resize(f, (round(w * s), round(h * s)))
        y, x = (r.shape[0] - 56) // 2, (r.shape[1] - 56) // 2
        frames.append(r[y : y + 56, x : x + 56].astype(np.float64) / 255 * 2 - 1)
    expected = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float()
    got = V.load_clip(video_file, CFG, frame_start=10, frame_end=30)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_bbox_crop_keeps_only_the_box(tmp_path):
    frames = np.zeros((10, 100, 200, 3), np.uint8)
    frames[:, 20:80, 120:180] = 200  # the "signer"
    path = write_video(tmp_path / "box.mp4", frames)
    cfg = PreprocessConfig(num_frames=4, resize=32, crop=32, bbox_crop=True, bbox_margin=0.0)
    clip = V.load_clip(path, cfg, bbox=[120, 20, 180, 80])
    assert clip.mean() > 0.4  # almost all bright: the dark rest of the frame was cut away
    whole = V.load_clip(path, PreprocessConfig(num_frames=4, resize=32, crop=32))
    assert whole.mean() < clip.mean()


def test_random_crop_and_jitter_are_seeded(video_file):
    a = V.load_clip(video_file, CFG, rng=np.random.default_rng(1))
    b = V.load_clip(video_file, CFG, rng=np.random.default_rng(1))
    c = V.load_clip(video_file, CFG, rng=np.random.default_rng(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_from_frames_equals_from_file(video_file):
    """Serving's frames input and a file give the same tensor for the same pixels."""
    every = _all_frames(video_file)
    assert torch.equal(V.clip_from_frames(every, CFG), V.load_clip(video_file, CFG))


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (None, V.UnreadableVideo, "not found"),
        (b"", V.UnreadableVideo, "empty"),
        (b"hello, this is text and not a video\n" * 20, V.VideoError, "not a readable|no dec"),
        (np.random.default_rng(0).bytes(5000), V.VideoError, "not a readable|no dec"),
    ],
)
def test_bad_files_raise_typed_errors(tmp_path, content, error, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message):
        V.load_clip(path, CFG)


def test_truncated_video_raises_typed_error(tmp_path, video_file):
    data = video_file.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(V.VideoError):
        V.load_clip(path, CFG, frame_start=1, frame_end=40)


def test_frame_end_beyond_video_is_a_frame_range_error(video_file):
    with pytest.raises(V.FrameRangeError, match="beyond the video's 40 frames"):
        V.load_clip(video_file, CFG, frame_start=1, frame_end=60)


def test_frames_with_wrong_shape_are_rejected():
    with pytest.raises(V.VideoError, match="T x H x W x 3"):
        V.clip_from_frames(np.zeros((4, 32, 32, 4), np.uint8), CFG)


def test_config_round_trip_and_validation():
    assert PreprocessConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError, match="channel_order"):
        PreprocessConfig(channel_order="YUV")
    with pytest.raises(ValueError, match=r"model.crop must be <= model.resize \(100\)"):
        PreprocessConfig(resize=100, crop=112)
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"frames": 3})


def test_varied_sizes_produce_same_output_shape(tmp_path):
    for i, (h, w) in enumerate([(120, 160), (126, 224), (160, 160), (90, 60)]):
        path = write_video(tmp_path / f"{i}.mp4", moving_square(12, h, w))
        assert V.load_clip(path, CFG).shape == (3, 8, 56, 56)
