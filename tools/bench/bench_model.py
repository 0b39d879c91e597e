"""`make bench`: preprocessing and sentence mode, measured side by side in one run.

(a) our preprocessing (to the uint8 clip every runtime takes) vs the naive path (decode every
    frame, normalise each in float64, as the original WLASL / gesto code does), (b) ours vs
    decoding alone, on a 320x240 (the benchmark clip), a 256x256 and a 640x360 clip: against
    reading every frame, and against the floor --
    decoding exactly the frames ours decodes (grab up to the last sampled frame, convert the
    sampled ones to BGR; no resize, crop or conversion). FFmpeg decodes on threads of its own
    (ours and the floor alike), so CPU time, all threads together, is shown beside wall time:
    the cost, where wall time also depends on what else the machine runs. (c) the forward per
    runtime: tools/bench/bench_runtime.py. (d) sentence mode on a 10 s video with the
    demo-sized model: our batched windows vs one window per forward, and the real-time factor.
Runs alternate A/B so machine noise hits both; medians and their ratios are printed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from components.data.synth import moving_square, write_video
from model.network.i3d import InceptionI3d
from model.runtimes.torch_runtime import TorchRuntime
from model.video.clip import PreprocessConfig, load_clip, normalize
from model.video.decode import sample_indices

WLASL = PreprocessConfig(num_frames=64, resize=256, crop=224)


def naive_preprocess(path: Path, cfg: PreprocessConfig) -> torch.Tensor:
    """Every frame decoded, resized and normalised in float64, then sampled and cropped."""
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        h, w = img.shape[:2]
        s = cfg.resize / min(h, w)
        img = cv2.resize(img, (round(w * s), round(h * s)))
        frames.append((img / 255.0) * 2 - 1)
    n = len(frames)
    idx = np.linspace(0, n - 1, cfg.num_frames).astype(int)
    clip = np.asarray([frames[i] for i in idx], dtype=np.float32)
    y, x = (clip.shape[1] - cfg.crop) // 2, (clip.shape[2] - cfg.crop) // 2
    clip = clip[:, y : y + cfg.crop, x : x + cfg.crop]
    return torch.from_numpy(clip.transpose(3, 0, 1, 2).copy())


def decode_only(path: Path) -> int:
    """Every frame decoded and converted to BGR (what the naive path decodes)."""
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    return n


def decode_floor(path: Path, cfg: PreprocessConfig) -> int:
    """The frames ours decodes, and nothing else: one open, grab every frame up to the last
    sampled one (the codec must), convert only the sampled ones to BGR, into one reused array
    (as ours does: no allocation per frame)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    wanted = set(sample_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cfg.num_frames).tolist())
    frame = None
    for i in range(max(wanted) + 1):
        cap.grab()
        if i in wanted:
            frame = cap.retrieve(frame)[1]
    cap.release()
    return len(wanted)


def alternate(fns: dict, repeats: int) -> dict[str, float]:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def alternate_cpu(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU (this process, all threads) seconds of each fn, run in turns."""
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c, t = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    median = statistics.median
    return {k: median(v) for k, v in times.items()}, {k: median(v) for k, v in cpu.items()}


def row(name: str, seconds: float, ref: float | None = None) -> str:
    ratio = f"{seconds / ref:8.2f}x" if ref else ""
    return f"  {name:<44} {seconds * 1000:9.1f} ms {ratio}"


# (height, width): the benchmark clip first, then a square and a 16:9 one, 125 frames each (5 s
# at 25 fps, a typical WLASL clip length), all preprocessed to WLASL's 64 x 224 x 224.
CLIPS = ((240, 320), (256, 256), (360, 640))


def bench_preprocess(repeats: int = 7) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        videos = {
            f"{w}x{h}": write_video(Path(tmp) / f"{w}x{h}.mp4", moving_square(125, h, w))
            for h, w in CLIPS
        }
        fns = {}
        for name, video in videos.items():
            fns |= {
                (name, "ours"): lambda v=video: load_clip(v, WLASL),
                (name, "scaled"): lambda v=video: normalize(load_clip(v, WLASL), WLASL.value_range),
                (name, "naive"): lambda v=video: naive_preprocess(v, WLASL),
                (name, "read"): lambda v=video: decode_only(v),
                (name, "floor"): lambda v=video: decode_floor(v, WLASL),
            }
        med, cpu = alternate_cpu(fns, repeats)
    print(
        f"(a)/(b) preprocessing, 125-frame mp4v clips -> {WLASL.num_frames}x{WLASL.crop}px, "
        f"median of {repeats} (ms)"
    )
    print(
        f"  {'clip':<8} {'naive':>8} {'read all':>9} {'floor':>8} {'ours':>8} {'+scale':>8}   "
        f"{'naive/ours':>10} {'ours/read':>9} {'ours/floor':>10} {'+scale/floor':>12}   "
        f"{'CPU: floor':>10} {'ours':>6} {'ours/floor':>10}"
    )
    for name in videos:
        m = {k: med[name, k] for k in ("naive", "read", "floor", "ours", "scaled")}
        c = {k: cpu[name, k] for k in ("floor", "ours")}
        print(
            f"  {name:<8} {m['naive'] * 1e3:8.1f} {m['read'] * 1e3:9.1f} "
            f"{m['floor'] * 1e3:8.1f} {m['ours'] * 1e3:8.1f} {m['scaled'] * 1e3:8.1f}   "
            f"{m['naive'] / m['ours']:9.2f}x {m['ours'] / m['read']:8.2f}x "
            f"{m['ours'] / m['floor']:9.2f}x {m['scaled'] / m['floor']:11.2f}x   "
            f"{c['floor'] * 1e3:10.1f} {c['ours'] * 1e3:6.1f} "
            f"{c['ours'] / c['floor']:9.2f}x"
        )
    print(
        "  read all: decode every frame to BGR; floor: decode only what ours decodes;\n"
        "  ours: the uint8 clip every runtime takes; +scale: ours, then scaled to float32 in\n"
        "  numpy (normalize), the work the network's first step now does"
    )
    sys.stdout.flush()


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    bench_preprocess()
    if "--preprocess" in sys.argv[1:]:  # (a)/(b) only
        return

    bench_sentence()


def bench_sentence() -> None:
    """Sentence mode's cost: one window per `stride` frames over the whole video."""
    from types import SimpleNamespace

    from model.network.i3d import I3DConfig
    from model.predict import Classifier
    from model.sentence import transcribe

    class Bench(Classifier):
        def __init__(self):  # the demo model's size, random weights: timing only
            pre = PreprocessConfig(num_frames=16, resize=128, crop=112)
            net = InceptionI3d(I3DConfig(num_classes=11, width=0.25))
            self.info = SimpleNamespace(
                preprocess=pre, sentence_window=30, labels=[f"g{i}" for i in range(10)]
            )
            self.runtime = TorchRuntime(SimpleNamespace(model=net), torch.device("cpu"))

    clf = Bench()
    frames = moving_square(250)  # 10 s at 25 fps, 160x120
    windows = len(range(0, len(frames), 2)) + 1
    med = alternate(
        {
            "batched": lambda: transcribe(clf, frames, batch_size=8),
            "one": lambda: transcribe(clf, frames, batch_size=1),
        },
        repeats=3,
    )
    print(
        f"(d) sentence mode, 250 frames (10 s), {windows} windows of 30 frames -> 16x112x112, "
        "demo-sized I3D, median of 3"
    )
    print(row("one window per forward", med["one"]))
    print(row("ours: 8 windows per forward", med["batched"], med["one"]))
    per_window = med["batched"] / windows * 1000
    print(
        f"  one / batched = {med['one'] / med['batched']:.2f}x; real-time factor "
        f"{10.0 / med['batched']:.1f}x ({per_window:.1f} ms per window)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
