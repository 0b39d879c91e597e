"""Which network runs a forward, and at what precision: torch (model.pt), ONNX Runtime or OpenVINO
(model.onnx).

Every runtime answers one call, `logits(clips)`: B x C x T x H x W uint8 clips, as preprocessing
makes them -> B x classes float32 clip logits (the max over time of the per-time logits, as
InceptionI3d.clip_logits). Scaling the clips to the model's value range is the network's first
step, in every runtime (model/video/clip.py's normalize; inside the ONNX graph).
All sit behind model/predict.py's Classifier, so word and sentence mode, serving, batch scoring
and evaluation are the same code whichever network runs. Each opened runtime also says what it
is (`name`), at what precision it runs (`precision`: "f32" or "bf16") and why (`reason`).

"auto" on the CPU, for a model directory with a verified model.onnx: OpenVINO (faster than ONNX
Runtime at f32 on every CPU measured: docs/benchmarks.md), at bf16 only where all of these hold,
else at f32 -- the CPU reports BF16 (`cpu_precisions`), the model's package-time gate
(components/release/precision_gate.py, config.json "precision") passed for this very model.onnx
(top-1 agreement 1.000 with f32, logits within the stated tolerance), and bf16 measured at least
MIN_SPEEDUP times as fast as f32 there (a narrow network, like the demo model's, runs slower at
bf16). ONNX Runtime where OpenVINO is not installed; torch without model.onnx or on a GPU.

The runtimes' modules are imported by name (RUNTIMES), only when chosen: the ONNX serving image
has no torch, and nothing on its path may import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from model.files import hash_file
from model.modeldir import WEIGHTS, ModelDirError, ModelInfo

# "triton": the network runs elsewhere, on a KServe v2 predictor (Triton) this process fronts as
# a KServe transformer; its options say where (model/runtimes/triton_runtime.py).
RUNTIMES = {
    "torch": "model.runtimes.torch_runtime",
    "onnx": "model.runtimes.onnx_runtime",
    "openvino": "model.runtimes.openvino_runtime",
    "triton": "model.runtimes.triton_runtime",
}
CHOICES = ("auto", *RUNTIMES)
MIN_SPEEDUP = 1.1  # bf16 must have run this many times as fast as f32 where it was gated


class Runtime(Protocol):
    name: str
    precision: str
    reason: str

    def logits(self, clips: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Choice:
    runtime: str
    precision: str
    reason: str


def cpu_precisions() -> frozenset[str]:
    """The precisions this CPU runs OpenVINO at: {"f32"}, plus "bf16" where OpenVINO's CPU plugin
    reports BF16; empty where OpenVINO is not installed. Tests replace it (a CPU with or
    without bf16)."""
    try:
        from model.runtimes.openvino_runtime import cpu_precisions as ov_precisions
    except ModuleNotFoundError:
        return frozenset()
    return ov_precisions()


def openvino_precision(info: ModelInfo, precisions: frozenset[str]) -> tuple[str, str]:
    """OpenVINO's precision for this model on this CPU, and why (the module's rule)."""
    if "bf16" not in precisions:
        return "f32", "this CPU reports no BF16"
    record = (info.config.get("precision") or {}).get("bf16")
    if not record:
        return "f32", "the CPU reports BF16, but no package-time bf16 gate is recorded"
    if record.get("onnx_sha256") != (info.config.get("onnx") or {}).get("sha256"):
        return "f32", "the CPU reports BF16, but the bf16 gate measured another model.onnx"
    if not record.get("measured"):
        return "f32", f"the CPU reports BF16, but bf16 was not measured: {record.get('reason')}"
    figures = (
        f"top-1 agreement {record['top1_agreement']:.3f}, max |logit diff| "
        f"{record['max_abs_diff']:.3g} vs tolerance {record['tolerance']:.3g}, "
        f"{record['clips']} clips"
    )
    if not record.get("passed"):
        return "f32", f"the CPU reports BF16, but bf16 failed the package-time gate ({figures})"
    speedup = float(record.get("speedup") or 0)
    if speedup < MIN_SPEEDUP:
        return "f32", (
            f"the CPU reports BF16 and bf16 passed the gate ({figures}), but ran {speedup:.2f}x "
            f"as fast as f32 on {record.get('cpu')} (needs {MIN_SPEEDUP:g}x)"
        )
    return "bf16", (
        f"the CPU reports BF16, bf16 passed the package-time gate ({figures}) and ran "
        f"{speedup:.2f}x as fast as f32 on {record.get('cpu')}"
    )


def choose(
    info: ModelInfo,
    runtime: str = "auto",
    device: str = "cpu",
    precisions: frozenset[str] | None = None,
) -> Choice:
    """The runtime and precision to open, and why (the module's rule for "auto").
    precisions: what this CPU runs OpenVINO at (default: cpu_precisions())."""
    if runtime not in CHOICES:
        raise ValueError(f"runtime must be one of {', '.join(CHOICES)}, got {runtime!r}")
    if runtime in ("onnx", "openvino") and info.onnx_file is None:
        raise ModelDirError(
            f"{info.path} has no model.onnx: run `sign2text model export {info.path} --format onnx`"
        )
    if runtime == "torch":
        return Choice("torch", "f32", "asked for (--runtime torch)")
    if runtime == "onnx":
        return Choice("onnx", "f32", "asked for (--runtime onnx)")
    if runtime == "triton":
        return Choice("triton", "f32", "the network runs on the KServe v2 predictor")
    if runtime == "auto" and device != "cpu":
        return Choice("torch", "f32", f"device {device}: only torch runs there")
    if runtime == "auto" and info.onnx_file is None:
        return Choice("torch", "f32", "the model directory has no model.onnx")
    precisions = cpu_precisions() if precisions is None else precisions
    if not precisions:
        if runtime == "openvino":
            raise ModelDirError("the openvino runtime needs openvino, not installed here")
        return Choice("onnx", "f32", "OpenVINO is not installed: ONNX Runtime")
    precision, why = openvino_precision(info, precisions)
    return Choice("openvino", precision, f"{why}: {precision}")


def open_runtime(
    info: ModelInfo,
    runtime: str = "auto",
    device: str = "cpu",
    precisions: frozenset[str] | None = None,
    **options,
) -> Runtime:
    """The chosen runtime's module.load(info, device, **options), with its precision and the
    reason for the choice as `runtime.precision` and `runtime.reason`."""
    choice = choose(info, runtime, device, precisions)
    try:
        module = importlib.import_module(RUNTIMES[choice.runtime])
    except ModuleNotFoundError as e:
        name = choice.runtime
        hint = " (the ONNX serving image has none: export the model to ONNX)" * (name == "torch")
        raise ModelDirError(f"the {name} runtime needs {e.name}, not installed here{hint}") from e
    if choice.runtime in ("onnx", "openvino"):
        check_onnx(info)
    if choice.runtime == "openvino":
        options = {"precision": choice.precision, "reason": choice.reason} | options
    opened = module.load(info, device, **options)
    opened.precision, opened.reason = choice.precision, choice.reason
    return opened


def check_onnx(info: ModelInfo) -> None:
    """model.onnx is the file its record hashed, exported from the model.pt beside it (when
    there is one): a retrained model.pt with a stale model.onnx beside it must not serve."""
    record = info.config["onnx"]
    if hash_file(info.onnx_file) != record.get("sha256"):
        raise ModelDirError(f"{info.onnx_file}: its sha256 is not config.json's onnx.sha256")
    weights = info.path / WEIGHTS
    if weights.is_file() and hash_file(weights) != record.get("weights_sha256"):
        raise ModelDirError(
            f"{info.onnx_file} was exported from other weights than {weights}: export again"
        )


def stack(clips: list[np.ndarray]) -> np.ndarray:
    """C x T x H x W clips -> B x C x T x H x W, channels last in memory like each clip (to_clip's
    layout), so the torch runtime's channels_last_3d forward takes it without a copy."""
    thwc = np.stack([c.transpose(1, 2, 3, 0) for c in clips])
    return thwc.transpose(0, 4, 1, 2, 3)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (the max subtracted first: no overflow)."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float32)
    return z / z.sum(axis=1, keepdims=True)
