"""The OpenVINO forward: model.onnx compiled for the CPU at f32 or bf16 (model/runtimes/choice.py's
contract).

The same verified model.onnx the onnx runtime runs (`core.read_model` reads ONNX itself), its batch
dimension left dynamic, compiled by OpenVINO's CPU plugin with INFERENCE_PRECISION_HINT "f32" or
"bf16" (bf16 only where the CPU plugin reports BF16 among its OPTIMIZATION_CAPABILITIES: AVX-512
BF16 or AMX; which precision a model may serve at is model/runtimes/choice.py's to decide, from the
package-time accuracy gate components/release/precision_gate.py records). No torch here: the ONNX
serving image has none.
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np
import openvino as ov

from model.modeldir import ModelDirError, ModelInfo
from model.runtimes.onnx_graph import clip_logits

PRECISIONS = ("f32", "bf16")  # INFERENCE_PRECISION_HINT values, as OpenVINO names them


@functools.cache
def core() -> ov.Core:
    """One OpenVINO Core per process (it holds the plugins and their caches)."""
    return ov.Core()


@functools.cache
def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES on this machine, e.g. ("BF16", "FP32", ...)."""
    return tuple(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_name() -> str:
    return str(core().get_property("CPU", "FULL_DEVICE_NAME"))


def cpu_precisions() -> frozenset[str]:
    """What this CPU runs OpenVINO at: f32 always, bf16 where the CPU plugin reports BF16."""
    return frozenset({"f32"} | ({"bf16"} if "BF16" in cpu_capabilities() else set()))


class OpenVinoRuntime:
    name = "openvino"

    def __init__(
        self,
        path: str | os.PathLike,
        precision: str = "f32",
        value_range=None,
        threads: int = 0,
        reason: str = "",
    ):
        """value_range: where model.onnx takes float32 clips (an export from before the graph
        scaled them itself), their range, and they are scaled here; None: it takes uint8.
        threads: 0, one per core (as torch and ONNX Runtime). reason: why this precision."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision not in cpu_precisions():
            raise ValueError(f"this CPU ({cpu_name()}) reports no BF16: it cannot run {precision}")
        model = core().read_model(str(path))
        inp = model.input(0)
        want = ov.Type.u8 if value_range is None else ov.Type.f32
        if inp.get_element_type() != want:
            got, exp = inp.get_element_type().get_type_name(), want.get_type_name()
            raise ModelDirError(f"{path} takes {got} clips, its record says {exp}")
        # An export with a fixed batch of 1 (older ones) runs clip by clip.
        first = inp.get_partial_shape()[0]
        self.batch = first.get_length() if first.is_static else None
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core().compile_model(model, "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.reason = reason
        self.value_range = value_range
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def logits(self, clips: np.ndarray) -> np.ndarray:
        return clip_logits(clips, self.value_range, self.batch, self._forward)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        with self._lock:  # one infer request: one forward at a time
            return self._request.infer({0: x}).to_tuple()[0]  # B x N x T'


def load(info: ModelInfo, device: str = "cpu", precision: str = "f32", reason: str = ""):
    if device != "cpu":
        raise ValueError(f"the openvino runtime runs on the CPU only, not {device!r}")
    value_range = None if info.onnx_takes_uint8 else info.preprocess.value_range
    return OpenVinoRuntime(info.onnx_file, precision, value_range, reason=reason)
