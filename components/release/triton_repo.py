"""A Triton model repository from a model directory: `sign2text model triton-repo DIR OUT`.

    OUT/sign2text/config.pbtxt     platform onnxruntime_onnx, dims from config.json's onnx record
    OUT/sign2text/1/model.onnx     the exported network, byte for byte

Triton serves it with dynamic batching: requests that arrive within max_queue_delay_microseconds
of each other run as one forward of up to max_batch_size clips (the export's batch dimension is
dynamic). KServe's `kserve-tritonserver` runtime loads OUT (manifests/overlays/triton); the
project's server runs in front of it as the transformer (model/runtimes/triton_runtime.py).

Only a model directory whose model.onnx is the file its onnx record hashed, exported from the
model.pt beside it, is written: what Triton serves is then what `model export` verified.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from model.files import write_atomic
from model.modeldir import CONFIG, ModelDirError, read_model_info
from model.runtimes.choice import check_onnx
from model.runtimes.triton_runtime import DATATYPES, INPUT, MAX_BATCH_SIZE, MODEL, OUTPUT

MAX_QUEUE_DELAY_US = 2000
# The export's batch dimension allows 1..1024 (components/release/onnx_export.py).
MAX_EXPORTED_BATCH = 1024


def _dims(record: dict, key: str, name: str, path: Path) -> list[int]:
    """An input or output's shape without its batch dimension, which must be the dynamic one."""
    entry = record.get(key) or {}
    shape = entry.get("shape")
    if entry.get("name") != name or not isinstance(shape, list) or len(shape) < 2:
        raise ModelDirError(f"{path / CONFIG}: the onnx record has no {key} {name!r} with a shape")
    if shape[0] != "batch":
        raise ModelDirError(
            f"{path}: model.onnx has a fixed batch of {shape[0]}, which Triton cannot batch: "
            f"export again (`sign2text model export {path} --format onnx`)"
        )
    if not all(isinstance(d, int) and d >= 1 for d in shape[1:]):
        raise ModelDirError(f"{path / CONFIG}: onnx {key} shape {shape} is not static past batch")
    return shape[1:]


def model_config(
    input_dims: list[int],
    output_dims: list[int],
    *,
    input_dtype: str = "uint8",
    max_batch_size: int = MAX_BATCH_SIZE,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
    name: str = MODEL,
    source: str = "",
) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig)."""

    def dims(d: list[int]) -> str:
        return ", ".join(map(str, d))

    return f"""\
# Written by `sign2text model triton-repo`{f" from {source}" if source else ""}.
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_{DATATYPES[input_dtype]}
    dims: [ {dims(input_dims)} ]
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {dims(output_dims)} ]
  }}
]
# Requests arriving within the delay run as one batch (the transformer's clips included).
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
# One instance on each GPU the pod gets. CPU fleets: kind: KIND_CPU.
instance_group [
  {{
    count: 1
    kind: KIND_GPU
  }}
]
"""


def write_repository(
    model_dir: str | Path,
    out: str | Path,
    *,
    max_batch_size: int = MAX_BATCH_SIZE,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
    overwrite: bool = False,
) -> Path:
    """Write OUT/sign2text/{config.pbtxt,1/model.onnx} from model_dir; returns OUT/sign2text."""
    model_dir, out = Path(model_dir), Path(out)
    if not 1 <= max_batch_size <= MAX_EXPORTED_BATCH:
        raise ValueError(f"--max-batch-size must be 1..{MAX_EXPORTED_BATCH}, got {max_batch_size}")
    if max_queue_delay_us < 0:
        raise ValueError(f"--max-queue-delay-us must be >= 0, got {max_queue_delay_us}")
    info = read_model_info(model_dir, CONFIG)
    if info.onnx_file is None:
        raise ModelDirError(
            f"{model_dir} has no exported model.onnx: run "
            f"`sign2text model export {model_dir} --format onnx` first"
        )
    check_onnx(info)  # the bytes its record hashed, from the weights beside it
    record = info.config["onnx"]
    input_dims = _dims(record, "input", INPUT, model_dir)
    output_dims = _dims(record, "output", OUTPUT, model_dir)
    if output_dims[0] != info.num_classes:
        raise ModelDirError(
            f"{model_dir}: model.onnx outputs {output_dims[0]} classes, config.json has "
            f"{info.num_classes}"
        )
    config = model_config(
        input_dims,
        output_dims,
        input_dtype="uint8" if info.onnx_takes_uint8 else "float32",
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        source=f"{model_dir.resolve().name} (model.onnx sha256 {record['sha256'][:12]})",
    )
    target = out / MODEL
    if target.exists():
        if not overwrite:
            raise ValueError(f"{target} exists: pass --overwrite to replace it")
        shutil.rmtree(target)  # a version directory left from before would be served too
    (target / "1").mkdir(parents=True)
    write_atomic(target / "1" / "model.onnx", info.onnx_file.read_bytes(), durable=True)
    write_atomic(target / "config.pbtxt", config.encode(), durable=True)
    return target
