"""Which network runs a forward: torch (model.pt) or ONNX Runtime (model.onnx).

Every runtime answers one call, `logits(clips)`: B x C x T x H x W uint8 clips, as preprocessing
makes them -> B x classes float32 clip logits (the max over time of the per-time logits, as
InceptionI3d.clip_logits). Scaling the clips to the model's value range is the network's first
step, in every runtime (model/video/clip.py's normalize; inside the ONNX graph).
Both sit behind model/predict.py's Classifier, so word and sentence mode, serving, batch scoring
and evaluation are the same code whichever network runs.

The runtimes' modules are imported by name (RUNTIMES), only when chosen: the ONNX serving image
has no torch, and nothing on its path may import it.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from model.files import hash_file
from model.modeldir import WEIGHTS, ModelDirError, ModelInfo

# "triton": the network runs elsewhere, on a KServe v2 predictor (Triton) this process fronts as
# a KServe transformer; its options say where (model/runtimes/triton_runtime.py).
RUNTIMES = {
    "torch": "model.runtimes.torch_runtime",
    "onnx": "model.runtimes.onnx_runtime",
    "triton": "model.runtimes.triton_runtime",
}
CHOICES = ("auto", *RUNTIMES)


class Runtime(Protocol):
    name: str

    def logits(self, clips: np.ndarray) -> np.ndarray: ...


def choose(info: ModelInfo, runtime: str = "auto", device: str = "cpu") -> str:
    """ "auto": ONNX Runtime when the directory has model.onnx and the device is the CPU (the
    ONNX Runtime installed is its CPU build), torch otherwise."""
    if runtime not in CHOICES:
        raise ValueError(f"runtime must be one of {', '.join(CHOICES)}, got {runtime!r}")
    if runtime == "auto":
        return "onnx" if info.onnx_file is not None and device == "cpu" else "torch"
    if runtime == "onnx" and info.onnx_file is None:
        raise ModelDirError(
            f"{info.path} has no model.onnx: run `sign2text model export {info.path} --format onnx`"
        )
    return runtime


def open_runtime(info: ModelInfo, runtime: str = "auto", device: str = "cpu", **options) -> Runtime:
    """The chosen runtime's module.load(info, device, **options)."""
    name = choose(info, runtime, device)
    try:
        module = importlib.import_module(RUNTIMES[name])
    except ModuleNotFoundError as e:
        hint = " (the ONNX serving image has none: export the model to ONNX)" * (name == "torch")
        raise ModelDirError(f"the {name} runtime needs {e.name}, not installed here{hint}") from e
    if name == "onnx":
        check_onnx(info)
    return module.load(info, device, **options)


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
