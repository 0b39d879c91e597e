"""A model directory's network as ONNX: `sign2text model export DIR --format onnx`.

The network is the one `load_model_dir` rebuilds from config.json and model.pt, in eval mode, and
what is exported is its `forward` behind the value map (`Uint8Clips`): preprocessing's uint8 clips
in, scaled to the model's value range inside the graph (Cast, Mul, Add: what the torch runtime
does), per-time logits B x N x T' out (clip logits, the max over time, and the softmax stay
outside, as in torch). A client -- the server, Triton's transformer, an edge device -- sends a
quarter of the bytes float32 clips would take. `centre_over_time` and every other config switch
are part of that forward, so they are in the graph. Exporter: torch's dynamo exporter, opset 18 (the
legacy TorchScript exporter fails on the final pooling, whose kernel comes from the input shape).

The batch dimension is dynamic ("batch"): serving batches concurrent requests and sentence mode's
windows into one forward, and Triton's dynamic batcher needs it. The rest is static, 3 x T x H x
W uint8, exactly the input the model's preprocessing makes (T = num_frames, H = W = crop).

Before anything is written, ONNX Runtime runs the exported bytes on a seeded random input and on
a real clip (a given video through model/video/clip.py's `load_clip`, else a rendered clip of the
bundled dataset's signer through `clip_from_frames`, the same preprocessing), each alone and the
two as one batch, and the per-time
logits must match torch's within `tol` (1e-4). A mismatch, or bytes ONNX Runtime cannot load, is
an `ExportError` (the CLI's exit 2) and leaves the directory untouched. Then `model.onnx` is
written atomically and config.json gains an "onnx" record (file, sha256, opset, input and output
shapes, the input's dtype, the model.pt it came from, the measured max |diff|); older model
directories without it still load, and older exports (float32 input, no dtype) still serve.

A release step, not part of model/: exporting needs torch.onnx's exporter (onnx, onnxscript), which
the serving image has no use for, and the default clip comes from components/data/synth.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from model.files import hash_file, write_atomic
from model.network.bundle import CONFIG, ONNX, WEIGHTS, load_model_dir
from model.network.i3d import InceptionI3d
from model.runtimes.torch_runtime import normalized
from model.video.clip import PreprocessConfig, clip_from_frames, load_clip

OPSET = 18
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "clip", "per_time_logits"


class ExportError(ValueError):
    """An export that ONNX Runtime cannot load or that disagrees with torch."""


class Uint8Clips(torch.nn.Module):
    """The network as every runtime runs it: uint8 clips, scaled to value_range, then forward."""

    def __init__(self, net: InceptionI3d, value_range):
        super().__init__()
        self.net, self.value_range = net, tuple(value_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(normalized(x, self.value_range))


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor, opset: int = OPSET) -> bytes:
    """The eval-mode forward traced on `example` (B x C x T x H x W), its batch dimension dynamic
    -> a serialized ONNX model."""
    import warnings

    model.eval()
    # no_grad: an inference graph traces in ~20% less time than a training one.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def synthetic_clip(pre: PreprocessConfig) -> np.ndarray:
    """A rendered clip of the bundled dataset (class 0, signer 0), preprocessed for `pre`."""
    from components.data.synth_render import class_spec, render_clip, signer_look

    frames, _ = render_clip(class_spec(0), signer_look(0, 0), (160, 120), 40, 4, 4)
    return clip_from_frames(np.stack(frames), pre)


def verify_onnx(
    model: torch.nn.Module, data: bytes, inputs: dict[str, torch.Tensor], tol: float = TOLERANCE
) -> tuple[dict[str, float], list[int]]:
    """Run ONNX Runtime on `data` for every named input (C x T x H x W) and compare with torch.

    Returns ({name: max |diff|}, the output's shape); raises ExportError when a diff exceeds
    `tol`, a shape differs or ONNX Runtime refuses the bytes."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        in_name = session.get_inputs()[0].name
    except Exception as e:  # ORT raises its own exception types (InvalidGraph, Fail, ...)
        raise ExportError(f"ONNX Runtime cannot load the export: {e}") from e
    diffs = {}
    model.eval()
    batches = {name: clip.unsqueeze(0) for name, clip in inputs.items()}
    batches[" + ".join(inputs)] = torch.stack(list(inputs.values()))  # the batch dimension
    for name, x in batches.items():
        x = x.contiguous()
        with torch.inference_mode():
            want = model(x).numpy()
        try:
            got = session.run(None, {in_name: x.numpy()})[0]
        except Exception as e:
            raise ExportError(f"ONNX Runtime failed on the {name} input: {e}") from e
        if got.shape != want.shape:
            raise ExportError(
                f"{name} input: ONNX output {list(got.shape)}, torch {list(want.shape)}"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - want)))
        if not diff <= tol:  # NaN fails too
            raise ExportError(f"{name} input: ONNX differs from torch by {diff:.3g} > {tol:g}")
        diffs[name] = diff
    return diffs, list(want.shape)


def export_onnx(
    model_dir: str | Path,
    *,
    video: str | Path | None = None,
    tol: float = TOLERANCE,
    opset: int = OPSET,
) -> dict:
    """Export, verify, then write DIR/model.onnx and its record in DIR/config.json. Returns the
    record. `video`: the real clip to verify on (default: a rendered clip, see synthetic_clip)."""
    import onnxruntime

    if not tol > 0:
        raise ExportError(f"--tolerance must be > 0, got {tol}")
    model_dir = Path(model_dir)
    bundle = load_model_dir(model_dir)
    pre, arch = bundle.preprocess, bundle.arch
    if arch.in_channels != 3:
        raise ExportError(f"in_channels {arch.in_channels}: clips have 3 channels")
    shape = [1, arch.in_channels, pre.num_frames, pre.crop, pre.crop]
    g = torch.Generator().manual_seed(0)
    random = torch.randint(0, 256, shape[1:], generator=g, dtype=torch.uint8)
    real = torch.from_numpy(load_clip(video, pre) if video is not None else synthetic_clip(pre))
    if list(real.shape) != shape[1:]:
        raise ExportError(f"clip shape {list(real.shape)}, the model wants {shape[1:]}")

    net = Uint8Clips(bundle.model, pre.value_range)
    t0 = time.monotonic()
    data = onnx_bytes(net, torch.stack([random, real]), opset)
    export_s = time.monotonic() - t0
    t0 = time.monotonic()
    diffs, (_, *out_shape) = verify_onnx(net, data, {"random": random, "clip": real}, tol)
    verify_s = time.monotonic() - t0

    write_atomic(model_dir / ONNX, data, durable=True)
    record = {
        "file": ONNX,
        "sha256": hash_file(model_dir / ONNX),
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", *shape[1:]], "dtype": "uint8"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", *out_shape]},
        "weights_sha256": hash_file(model_dir / WEIGHTS),
        "max_abs_diff": diffs,
        "tolerance": tol,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "clip": Path(video).name if video is not None else "synthetic",
    }
    config = json.loads((model_dir / CONFIG).read_text())
    config["onnx"] = record
    config.pop("precision", None)  # gated on the old model.onnx (precision_gate.py gates again)
    write_atomic(model_dir / CONFIG, (json.dumps(config, indent=2) + "\n").encode(), durable=True)
    return record | {"export_s": round(export_s, 2), "verify_s": round(verify_s, 2)}
