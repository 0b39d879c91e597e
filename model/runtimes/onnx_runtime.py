"""The ONNX Runtime forward: model.onnx on the CPU (model/runtimes/choice.py's contract)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from model.modeldir import ModelDirError, ModelInfo
from model.runtimes.onnx_graph import clip_logits


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path: str | os.PathLike, value_range=None, threads: int = 0):
        """value_range: where model.onnx takes float32 clips (an export from before the graph
        scaled them itself), their range, and they are scaled here; None: it takes uint8."""
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads  # 0: one per core, as torch
        # No spinning between forwards: a spinning pool holds the cores that the requests'
        # decoding needs, as serving decodes while the forward thread waits for the next batch.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input = inp.name
        # An export with a fixed batch of 1 (older ones) runs clip by clip.
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        want = "tensor(uint8)" if value_range is None else "tensor(float)"
        if inp.type != want:
            raise ModelDirError(f"{path} takes {inp.type} clips, its record says {want}")
        self.value_range = value_range

    def logits(self, clips: np.ndarray) -> np.ndarray:
        return clip_logits(clips, self.value_range, self.batch, self._forward)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]  # B x N x T'


def load(info: ModelInfo, device: str = "cpu") -> OnnxRuntime:
    if device != "cpu":
        raise ValueError(f"the onnx runtime runs on the CPU only, not {device!r}")
    value_range = None if info.onnx_takes_uint8 else info.preprocess.value_range
    return OnnxRuntime(info.onnx_file, value_range)
