"""The shared preprocessing path: decoding, trimming, sampling, cropping, scaling, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.runtimes.torch_runtime import normalized
from model.video.clip import (
    PreprocessConfig,
    _crop_origin,
    _frame_resizer,
    _top_left,
    _window,
    bbox_window,
    clip_from_frames,
    frame_resizer,
    load_clip,
    normalize,
    resize_frames,
    resized_size,
    to_clip,
)
from model.video.decode import (
    FrameRangeError,
    UnreadableVideo,
    VideoError,
    decode,
    sample_indices,
    trim_range,
)
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
    got = decode(video_file, idx)
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

    monkeypatch.setattr(cv2, "VideoCapture", Counting)
    decode(video_file, [2, 5, 9])
    assert calls == {"grab": 10, "retrieve": 3}  # stops after frame 9, converts only 3


def test_sample_indices_covers_long_clips_and_pads_short_ones():
    assert sample_indices(80, 8).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    assert sample_indices(8, 8).tolist() == list(range(8))
    assert sample_indices(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    rng = np.random.default_rng(0)
    for _ in range(20):
        jit = sample_indices(80, 8, rng=rng)
        assert np.all(np.diff(jit) > 0) and jit.min() >= 0 and jit.max() < 80
        assert np.all(jit // 10 == np.arange(8))  # one frame per segment
        short = sample_indices(5, 8, rng=rng)
        assert len(short) == 8 and np.all(np.diff(short) >= 0) and set(short) == set(range(5))


def test_trim_range_is_one_based_inclusive():
    assert trim_range(1, -1, 40) == (0, 40)
    assert trim_range(5, 10, 40) == (4, 10)
    with pytest.raises(FrameRangeError, match="beyond the video's 40 frames"):
        trim_range(5, 41, 40)
    with pytest.raises(FrameRangeError, match="before frame_start"):
        trim_range(10, 5, 40)
    with pytest.raises(FrameRangeError, match=">= 1"):
        trim_range(0, 5, 40)


def test_load_clip_shape_range_and_channel_order(video_file):
    """Clips stay uint8 (a quarter of float32's bytes); the value range is the network's first
    step (normalize), so it does not change the clip."""
    clip = load_clip(video_file, CFG)
    assert clip.shape == (3, 8, 56, 56) and clip.dtype == np.uint8 and clip.max() > clip.min()
    rgb = load_clip(video_file, PreprocessConfig(**{**CFG.to_dict(), "channel_order": "RGB"}))
    assert np.array_equal(rgb, clip[::-1])
    unit = load_clip(video_file, PreprocessConfig(**{**CFG.to_dict(), "value_range": (0, 1)}))
    assert np.array_equal(unit, clip)
    scaled = normalize(clip, CFG.value_range)
    assert scaled.dtype == np.float32 and scaled.min() >= -1 and scaled.max() <= 1
    np.testing.assert_allclose(normalize(clip, (0, 1)) * 2 - 1, scaled, rtol=1.3e-6, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        normalize(scaled, CFG.value_range)


def test_load_clip_matches_a_direct_computation(video_file):
    """Trim, sample, resize short side, centre crop, BGR, x/255*2-1, written out longhand."""
    every = _all_frames(video_file)[9:30]  # frame_start=10, frame_end=30
    idx = sample_indices(len(every), CFG.num_frames)
    frames = []
    for f in every[idx]:
        h, w = f.shape[:2]
        s = 64 / min(h, w)
        r = cv2.resize(f, (round(w * s), round(h * s)))
        y, x = (r.shape[0] - 56) // 2, (r.shape[1] - 56) // 2
        frames.append(r[y : y + 56, x : x + 56].astype(np.float64) / 255 * 2 - 1)
    expected = np.stack(frames).transpose(3, 0, 1, 2).astype(np.float32)
    got = normalize(load_clip(video_file, CFG, frame_start=10, frame_end=30), CFG.value_range)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_bbox_crop_keeps_only_the_box(tmp_path):
    frames = np.zeros((10, 100, 200, 3), np.uint8)
    frames[:, 20:80, 120:180] = 200  # the "signer"
    path = write_video(tmp_path / "box.mp4", frames)
    cfg = PreprocessConfig(num_frames=4, resize=32, crop=32, bbox_crop=True, bbox_margin=0.0)
    clip = load_clip(path, cfg, bbox=[120, 20, 180, 80])
    assert clip.mean() > 178  # almost all bright: the dark rest of the frame was cut away
    whole = load_clip(path, PreprocessConfig(num_frames=4, resize=32, crop=32))
    assert whole.mean() < clip.mean()


def test_random_crop_and_jitter_are_seeded(video_file):
    a = load_clip(video_file, CFG, rng=np.random.default_rng(1))
    b = load_clip(video_file, CFG, rng=np.random.default_rng(1))
    c = load_clip(video_file, CFG, rng=np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_from_frames_equals_from_file(video_file):
    """Serving's frames input and a file give the same tensor for the same pixels."""
    every = _all_frames(video_file)
    assert np.array_equal(clip_from_frames(every, CFG), load_clip(video_file, CFG))


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (None, UnreadableVideo, "not found"),
        (b"", UnreadableVideo, "empty"),
        (b"hello, this is text and not a video\n" * 20, VideoError, "not a readable|no dec"),
        (np.random.default_rng(0).bytes(5000), VideoError, "not a readable|no dec"),
    ],
)
def test_bad_files_raise_typed_errors(tmp_path, content, error, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message):
        load_clip(path, CFG)


def test_truncated_video_raises_typed_error(tmp_path, video_file):
    data = video_file.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError):
        load_clip(path, CFG, frame_start=1, frame_end=40)


def test_frame_end_beyond_video_is_a_frame_range_error(video_file):
    with pytest.raises(FrameRangeError, match="beyond the video's 40 frames"):
        load_clip(video_file, CFG, frame_start=1, frame_end=60)


def test_frames_with_wrong_shape_are_rejected():
    with pytest.raises(VideoError, match="T x H x W x 3"):
        clip_from_frames(np.zeros((4, 32, 32, 4), np.uint8), CFG)


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
        assert load_clip(path, CFG).shape == (3, 8, 56, 56)


def _reference_clip(
    frames: np.ndarray, cfg: PreprocessConfig, bbox=None, rng=None, idx=None
) -> torch.Tensor:
    """load_clip before it wrote its output in one pass per frame (commit 993ba86's resize_frames
    + to_clip, copied here): sample, [bbox crop], resize, crop, uint8 -> float32 in torch."""
    frames = frames[sample_indices(len(frames), cfg.num_frames, rng=rng) if idx is None else idx]
    if cfg.bbox_crop and bbox is not None:
        x0, y0, x1, y1 = bbox_window(bbox, cfg.bbox_margin, frames.shape[2], frames.shape[1])
        frames = frames[:, y0:y1, x0:x1]
    h, w = frames.shape[1:3]
    size = resized_size(w, h, cfg)
    if size != (w, h):
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])
    h, w, c = *frames.shape[1:3], cfg.crop
    y, x = (h - c) // 2, (w - c) // 2
    if rng is not None:
        j = (cfg.resize - c) // 2
        y = int(np.clip(y + rng.integers(-j, j + 1), 0, h - c))
        x = int(np.clip(x + rng.integers(-j, j + 1), 0, w - c))
    clip = torch.from_numpy(np.ascontiguousarray(frames))[:, y : y + c, x : x + c]
    if cfg.channel_order == "RGB":
        clip = clip.flip(-1)
    lo, hi = cfg.value_range
    return clip.to(torch.float32).mul_((hi - lo) / 255.0).add_(lo).permute(3, 0, 1, 2)


def _same(clip: np.ndarray, b: torch.Tensor, cfg: PreprocessConfig) -> bool:
    """The uint8 clip, as the network sees it (normalize), is b bit for bit (not just ==: -0.0
    and 0.0 differ here), in the same memory layout."""
    a = torch.from_numpy(normalize(clip, cfg.value_range))
    return a.stride() == b.stride() and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0), (-0.5, 2.0), (-123.7, 151.1)])
def test_value_map_is_bit_identical_for_every_uint8_value(value_range):
    every = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (256, 1, 3))[None]  # 1x256x256x3
    for order in ("BGR", "RGB"):
        cfg = PreprocessConfig(
            num_frames=1, resize=256, crop=256, value_range=value_range, channel_order=order
        )
        want = _reference_clip(every, cfg, idx=[0])
        clip = to_clip(every, cfg)
        assert _same(clip, want, cfg)
        scaled = normalized(torch.from_numpy(clip), value_range)  # the torch runtime's
        assert scaled.stride() == want.stride() and torch.equal(
            scaled.view(torch.int32), want.view(torch.int32)
        )


def test_load_clip_is_bit_identical_to_the_reference(tmp_path):
    """Every step of the fast path (resize as it decodes, one crop pass per frame, uint8 until
    the network's normalize) gives exactly the tensor of the plain sample -> resize -> crop ->
    torch conversion."""
    for i, (h, w, n) in enumerate([(120, 160, 40), (72, 128, 9), (96, 96, 30)]):
        path = write_video(tmp_path / f"{i}.mp4", moving_square(n, h, w, seed=i))
        every = _all_frames(path)
        bbox = [w * 0.2, h * 0.1, w * 0.7, h * 0.9]
        for cfg in (
            CFG,  # clips of 40, 9 and 30 frames: long, short (padded), short
            PreprocessConfig(num_frames=16, resize=80, crop=64, channel_order="RGB"),
            PreprocessConfig(num_frames=8, resize=56, crop=56, value_range=(0.0, 1.0)),
            PreprocessConfig(num_frames=6, resize=48, crop=40, bbox_crop=True),
        ):
            want = _reference_clip(every, cfg, bbox)
            assert _same(load_clip(path, cfg, bbox=bbox), want, cfg)
            assert _same(clip_from_frames(every, cfg, bbox=bbox), want, cfg)
            got = load_clip(path, cfg, bbox=bbox, rng=np.random.default_rng(i))
            assert _same(got, _reference_clip(every, cfg, bbox, rng=np.random.default_rng(i)), cfg)
            trimmed = load_clip(path, cfg, frame_start=3, frame_end=8, bbox=bbox)
            assert _same(trimmed, _reference_clip(every[2:8], cfg, bbox), cfg)


def test_one_pass_paths_keep_the_reference_and_its_random_draws(tmp_path):
    """load_clip converts each frame as it decodes and draws the crop's jitter at the first one;
    clip_from_frames converts each sampled frame in place. Both give the reference's tensor and
    leave rng where the reference leaves it: also when the container claims more frames than
    decode (load_clip's retry), for frames given as a strided view, and for frames already
    resized (what training passes)."""
    path = write_video(tmp_path / "a.mp4", moving_square(30, 120, 160, seed=3))
    every = _all_frames(path)
    for cfg in (
        PreprocessConfig(num_frames=16, resize=80, crop=64),
        PreprocessConfig(num_frames=40, resize=72, crop=56, channel_order="RGB"),  # padded
    ):
        rng, ref = np.random.default_rng(5), np.random.default_rng(5)
        got = load_clip(path, cfg, rng=rng, total=37)  # 37 claimed, 30 decode: retried
        sample_indices(37, cfg.num_frames, rng=ref)  # the failed attempt's pick
        assert _same(got, _reference_clip(every, cfg, rng=ref), cfg)
        assert rng.integers(1 << 30) == ref.integers(1 << 30)

        strided = np.ascontiguousarray(every[..., ::-1])[..., ::-1]  # == every, negative strides
        resized = resize_frames(every, cfg)
        for frames in (strided, resized):
            rng, ref = np.random.default_rng(6), np.random.default_rng(6)
            got = clip_from_frames(frames, cfg, rng=rng)
            assert _same(got, _reference_clip(np.ascontiguousarray(frames), cfg, rng=ref), cfg)
            assert rng.integers(1 << 30) == ref.integers(1 << 30)


def test_load_clip_opens_the_video_once(video_file, monkeypatch):
    """The frame count comes from the capture that decodes: no separate probe."""
    opened = []
    real = cv2.VideoCapture

    def counting(*a):
        opened.append(a[0])
        return real(*a)

    monkeypatch.setattr(cv2, "VideoCapture", counting)
    load_clip(video_file, CFG)
    assert len(opened) == 1


def test_resizing_only_the_part_the_crop_keeps_is_bit_identical():
    """load_clip and clip_from_frames resize only the top left part of a frame that the crop
    reaches (with the full resize's own scale): the crop must come out exactly as from a resize
    of the whole frame, for any frame size, bbox window, crop size and jittered position."""
    rng = np.random.default_rng(0)
    sizes = [(320, 240), (640, 360), (256, 256), (1280, 720), (640, 480), (1920, 1080), (101, 203)]
    sizes += [(int(rng.integers(8, 1000)), int(rng.integers(8, 700))) for _ in range(150)]
    parts = 0
    for i, (w, h) in enumerate(sizes):
        crop = int(rng.integers(4, 240))
        cfg = PreprocessConfig(
            num_frames=1, resize=crop + int(rng.integers(0, 50)), crop=crop, bbox_crop=i % 3 == 0
        )
        x, y = rng.uniform(0, w * 0.5), rng.uniform(0, h * 0.5)
        bbox = [x, y, x + rng.uniform(2, w * 0.5 + 2), y + rng.uniform(2, h * 0.5 + 2)]
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        full = frame_resizer(w, h, cfg, bbox)(frame)
        x0, y0, x1, y1 = _window(w, h, cfg, bbox)
        for jitter in (None, np.random.default_rng(i)):
            y, x = _crop_origin(*full.shape[:2], cfg, jitter)
            upto = x + crop, y + crop
            parts += _top_left(x1 - x0, y1 - y0, full.shape[1::-1], upto) is not None
            part = _frame_resizer(w, h, cfg, bbox, reuse=True, upto=upto)(frame)
            window = np.s_[y : y + crop, x : x + crop]
            assert np.array_equal(part[window], full[window])
    assert parts > len(sizes)  # most cases took the partial resize
