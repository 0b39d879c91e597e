"""`make bench`, runtimes: the I3D forward per runtime and precision, side by side in one run.

(e) forward time of torch eager (no_grad, contiguous), torch fast (inference_mode +
    channels_last_3d: the torch runtime), torch bf16 (torch fast under CPU autocast to
    bfloat16), ONNX Runtime fp32 (the onnx runtime: model.onnx from `sign2text model export`),
    ONNX Runtime int8 (static QDQ quantization, calibrated on training-split clips), OpenVINO f32
    and bf16 (the openvino runtime; bf16 only where the CPU plugin reports BF16), at WLASL's
    64 x 224 px full width (random weights in the published checkpoints' format and scale) and at
    the demo model's 16 x 112 px; the FLOPs of one clip (counted by torch) and the fraction of
    this CPU's measured GEMM rate each reaches (fp32 GEMM for fp32 and int8, bf16 GEMM for bf16).
(f) accuracy on the bundled dataset's test split with the demo-trained model
    (tests/fixtures/sentence_model): top-1 per runtime, agreement with torch eager's top-1, and
    the largest |clip logit - eager's|; for the full-width model (random weights: no labels),
    agreement and difference on 6 clips of the precision gate's synthetic set
    (components/release/precision_gate.py: 2 classes x 2 test-split signers + 2 at rest).
(g) `predict-batch` videos/s over that test split, with model.onnx (auto: OpenVINO) and without.
The CPU's model and vector units (/proc/cpuinfo flags, OpenVINO's OPTIMIZATION_CAPABILITIES) are
printed first. Runs alternate so machine noise hits every runtime alike; medians are printed.
No int8 for OpenVINO: it needs NNCF's post-training quantization, not a dependency here.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from components.release.onnx_export import export_onnx
from components.release.precision_gate import gate_clips
from model.modeldir import read_model_info
from model.network.i3d import I3DConfig, InceptionI3d
from model.runtimes import openvino_runtime as ovr
from model.runtimes.onnx_runtime import OnnxRuntime
from model.runtimes.torch_runtime import fast_inference, normalized
from model.video.clip import load_clip
from tools.bench.bench_model import alternate

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "tests" / "fixtures" / "sentence_model"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_report() -> str:
    """The CPU's model name, its vector-unit flags that matter here, and OpenVINO's view."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln[:5] == "flags"), [])
    have = [f for f in FLAGS if f in flags]
    version = ovr.ov.__version__.split("-")[0]
    return (
        f"CPU: {name or '?'} ({ovr.cpu_name()}), {torch.get_num_threads()} threads; flags: "
        f"{' '.join(have) or 'none of ' + ' '.join(FLAGS)}; OpenVINO {version} "
        f"capabilities: {' '.join(ovr.cpu_capabilities())}"
    )


def gemm_gflops(dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """This CPU's attainable rate at `dtype`: the best of `repeats` n x n matrix products."""
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def clip_gflops(net: InceptionI3d, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / 1e9


def published_like(net: InceptionI3d, seed: int = 0) -> InceptionI3d:
    """Random weights at the published checkpoints' scale (tests/conftest.py's
    published_state_dict): He-initialised convolutions, batch norm near identity, small biases,
    so activations keep their scale through the network as a trained one's do."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, v in net.state_dict().items():
        if v.dtype == torch.int64:
            state[key] = v
        elif key.endswith(".weight") and v.dim() == 5:
            state[key] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif key.endswith("running_var"):
            state[key] = 1 + 0.1 * torch.rand(v.shape, generator=g)
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            state[key] = 0.01 * torch.randn(v.shape, generator=g)
    net.load_state_dict(state)
    return net.eval()


def quantized(model_dir: Path, clips: list[np.ndarray], out: Path) -> Path:
    """model.onnx -> int8 QDQ (per-channel weights, uint8 activations) calibrated on `clips`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = list(clips)

        def get_next(self):
            return {"clip": self.left.pop()[None]} if self.left else None

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(model_dir / "model.onnx"), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


class Runtimes:
    """One network every way; each `fns(x)[name]()` -> per-time logits as float32 numpy."""

    def __init__(self, model_dir: Path, calibration: list[np.ndarray], tmp: Path):
        from model.network.bundle import load_model_dir

        self.value_range = read_model_info(model_dir).preprocess.value_range
        self.eager = load_model_dir(model_dir).model.eval()
        self.fast = fast_inference(load_model_dir(model_dir).model)
        self.ort = OnnxRuntime(model_dir / "model.onnx").session
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        int8 = quantized(model_dir, calibration, tmp / f"{model_dir.name}.int8.onnx")
        self.int8 = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
        self.ov = {  # compiled models (per-time logits), each with an infer request
            p: ovr.OpenVinoRuntime(model_dir / "model.onnx", p).compiled.create_infer_request()
            for p in ovr.PRECISIONS
            if p in ovr.cpu_precisions()
        }

    def fns(self, x: np.ndarray) -> dict:
        """x: uint8 clips. Every runtime scales them in its forward (ONNX: inside the graph)."""
        vr = self.value_range
        t = torch.from_numpy(np.ascontiguousarray(x))
        t_cl = t.contiguous(memory_format=torch.channels_last_3d)
        c = np.ascontiguousarray(x)

        def eager():
            with torch.no_grad():
                return self.eager(normalized(t, vr)).numpy()

        def fast():
            with torch.inference_mode():
                return self.fast(normalized(t_cl, vr)).numpy()

        def autocast():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return self.fast(normalized(t_cl, vr)).float().numpy()

        fns = {
            "torch eager": eager,
            "torch fast": fast,
            "torch bf16": autocast,
            "ORT fp32": lambda: self.ort.run(None, {"clip": c})[0],
            "ORT int8": lambda: self.int8.run(None, {"clip": c})[0],
        }
        for p, req in self.ov.items():
            fns[f"OpenVINO {p}"] = lambda req=req: req.infer({0: c}).to_tuple()[0].copy()
        return fns


def bench_forward(name: str, model_dir: Path, calibration, x: np.ndarray, peaks, tmp: Path):
    rt = Runtimes(model_dir, calibration, tmp)
    gflops = clip_gflops(rt.eager, normalized(torch.from_numpy(np.ascontiguousarray(x)), (0, 1)))
    fns = rt.fns(x)
    ref = fns["torch eager"]()
    for fn in fns.values():  # warm-up: first calls build kernels and caches
        fn()
    med = alternate(fns, repeats=3)
    print(
        f"(e) {name}: {gflops:.1f} GFLOPs per clip, median of 3 alternating runs "
        f"({torch.get_num_threads()} threads); % of the measured GEMM rate (bf16 rows: of the "
        "bf16 rate); max |per-time logit - eager|"
    )
    for k, s in med.items():
        diff = float(np.abs(fns[k]() - ref).max())
        peak = peaks["bf16" if "bf16" in k else "fp32"]
        print(
            f"  {k:<14} {s * 1000:9.1f} ms  {s / med['torch eager']:5.2f}x eager  "
            f"{gflops / s:6.1f} GFLOP/s = {gflops / s / peak * 100:4.0f}%  diff {diff:.1e}"
        )
    sys.stdout.flush()
    return rt


def test_clips(tmp: Path) -> tuple[list[np.ndarray], list[int], list[np.ndarray], list[Path]]:
    """The bundled dataset's test split as the demo model's clips and label indices, a few
    training clips for calibration, and the test videos' files."""
    from components.data.dataset import load_samples
    from components.data.synth import synthesize

    data = tmp / "data"
    synthesize(data, progress=False, only_splits=("train", "test"))
    info = read_model_info(DEMO)
    index = {g: i for i, g in enumerate(info.labels)}

    def clips(split: str):
        samples = [s for s in load_samples(data, (split,)) if s.gloss in index]
        return samples, [
            load_clip(
                s.video_path(data),
                info.preprocess,
                frame_start=s.frame_start,
                frame_end=s.frame_end,
            )
            for s in samples
        ]

    samples, test = clips("test")
    _, train = clips("train")
    videos = tmp / "videos"
    videos.mkdir()
    for s in samples:
        shutil.copy(s.video_path(data), videos / s.video_path(data).name)
    return test, [index[s.gloss] for s in samples], train[:: max(1, len(train) // 16)], [videos]


def bench_accuracy(
    rt: Runtimes, clips: list[np.ndarray], labels: list[int] | None, n: int, what: str, step: int
) -> None:
    """Top-1 (where `labels`), agreement with torch eager's top-1 and the largest |clip logit -
    eager's| over the first n outputs (the glosses), `step` clips per forward."""
    x = np.stack(clips)
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), step):
        for k, fn in rt.fns(x[i : i + step]).items():
            outs.setdefault(k, []).append(fn().max(axis=2)[:, :n])
    ref = np.concatenate(outs["torch eager"])
    print(
        f"(f) {what}, {len(clips)} clips, {n} glosses: top-1, agreement with torch eager "
        "(fp32), max |clip logit - eager|"
    )
    for k, v in outs.items():
        logits = np.concatenate(v)
        top1 = f"top-1 {(logits.argmax(1) == np.array(labels)).mean():.3f}  " if labels else ""
        agree = float((logits.argmax(1) == ref.argmax(1)).mean())
        diff = float(np.abs(logits - ref).max())
        print(f"  {k:<14} {top1}agrees {agree:.3f}  max diff {diff:.1e}")
    sys.stdout.flush()


def bench_predict_batch(model_dir: Path, videos: Path, tmp: Path) -> None:
    from components.scoring.predict_batch import predict_batch

    torch_only = tmp / "torch-only"
    shutil.copytree(model_dir, torch_only)
    (torch_only / "model.onnx").unlink()
    cfg = torch_only / "config.json"
    config = json.loads(cfg.read_text())
    del config["onnx"]
    cfg.write_text(json.dumps(config))
    print("(g) predict-batch over the test split's videos (word mode, default workers)")
    for name, m in (("model.onnx (auto: OpenVINO)", model_dir), ("torch", torch_only)):
        out = tmp / f"{name.split()[0]}.jsonl"
        summary = predict_batch(m, videos, out)
        print(
            f"  {name:<27} {summary['videos']} videos, {summary['videos_per_s']:.1f} videos/s, "
            f"{summary['errors']} errors"
        )


def main() -> None:
    print(cpu_report())
    peaks = {"fp32": gemm_gflops(), "bf16": gemm_gflops(torch.bfloat16)}
    print(
        f"measured GEMM rate (torch, 2048^2): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 "
        f"{peaks['bf16']:.0f} GFLOP/s ({torch.get_num_threads()} threads)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips, labels, calibration, (videos,) = test_clips(tmp)
        demo = tmp / "demo"
        shutil.copytree(DEMO, demo)
        export_onnx(demo)
        rt = bench_forward(
            "demo model 16x112x112, width 0.25", demo, calibration, clips[0][None], peaks, tmp
        )
        n = len(read_model_info(DEMO).labels)  # glosses only, not no-sign
        bench_accuracy(rt, clips, labels, n, "demo model, the bundled dataset's test split", 40)
        bench_predict_batch(demo, videos, tmp)
        if "--demo" in sys.argv[1:]:
            return
        full = tmp / "i3d"
        from model.network.bundle import write_model_dir
        from model.video.clip import PreprocessConfig

        write_model_dir(
            full,
            published_like(InceptionI3d(I3DConfig(num_classes=400))),
            PreprocessConfig(),
            [f"g{i}" for i in range(400)],
        )
        export_onnx(full)
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (1, 3, 64, 224, 224), dtype=np.uint8)
        calib = [rng.integers(0, 256, (3, 64, 224, 224), dtype=np.uint8) for _ in range(2)]
        rt = bench_forward(
            "full I3D 64x224x224, width 1.0, 400 classes (random published-format weights)",
            full,
            calib,
            x,
            peaks,
            tmp,
        )
        gate, what = gate_clips(PreprocessConfig(), 400, signers=2, max_clips=6)
        bench_accuracy(rt, list(gate), None, 400, f"full I3D, the precision gate's {what}", 1)


if __name__ == "__main__":
    main()
