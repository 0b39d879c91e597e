"""Reading a model directory without torch: its config, preprocessing and labels.

The layout (model/network/bundle.py writes it and rebuilds the torch network from it):

model.pt      state dict (tensors only; read with weights_only=True)
config.json   {"format": ..., "architecture": I3DConfig, "preprocess": PreprocessConfig, ...}
              and, for a model trained on context windows, "no_sign": {"class": N, "window": W}:
              output N (one past the last gloss) means "no sign at this window's centre", and
              W is the window (frames at preprocess.fps) it was trained on; sentence mode needs it
labels.txt    index<TAB>gloss, one per gloss (WLASL class list format)
model.onnx    optional: the same network as ONNX (`sign2text model export DIR --format onnx`),
              recorded in config.json's "onnx" (file, sha256, input/output shapes, the input's
              dtype (uint8: the graph scales clips itself; exports without one take float32
              clips already scaled), the model.pt
              sha256 it was exported from, its measured max |diff| to torch); see
              components/release/onnx_export.py. Directories without it load as before.
*.json        optional extras (metrics.json, lineage.json)

Everything here is what a runtime needs besides the network, so the ONNX serving image (no
torch) reads a directory with the same checks as the torch one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from model.video.clip import PreprocessConfig

FORMAT = "sign2text-model/1"
WEIGHTS, CONFIG, LABELS, ONNX = "model.pt", "config.json", "labels.txt", "model.onnx"


class ModelDirError(ValueError):
    """A model directory that is missing files or inconsistent."""


@dataclass
class ModelInfo:
    """A model directory's config.json and labels.txt, checked against each other."""

    path: Path
    preprocess: PreprocessConfig
    labels: list[str]
    config: dict

    @property
    def num_classes(self) -> int:
        return int(self.config["architecture"]["num_classes"])

    @property
    def sentence_window(self) -> int | None:
        """Frames per context window for a model with a no-sign output, else None."""
        no_sign = self.config.get("no_sign")
        return int(no_sign["window"]) if no_sign else None

    @property
    def onnx_file(self) -> Path | None:
        """The exported network, where config.json records one."""
        onnx = self.config.get("onnx")
        return self.path / onnx["file"] if onnx else None

    @property
    def onnx_takes_uint8(self) -> bool:
        """Whether model.onnx takes preprocessing's uint8 clips and scales them in its graph.
        Exports from before clips stayed uint8 take float32 ones, which their runtime scales."""
        onnx = self.config.get("onnx") or {}
        return (onnx.get("input") or {}).get("dtype") == "uint8"


def check_classes(labels: list[str], num_classes: int, no_sign: dict | None, where) -> None:
    want = len(labels) + (1 if no_sign else 0)
    if num_classes != want:
        extra = " + the no-sign output" if no_sign else ""
        raise ModelDirError(f"{where}: {len(labels)} labels{extra} for a {num_classes}-class model")
    if no_sign and (no_sign.get("class") != len(labels) or int(no_sign.get("window", 0)) < 1):
        raise ModelDirError(f"{where}: no_sign must be {{class: {len(labels)}, window: >= 1}}")


def read_labels(path: str | os.PathLike) -> list[str]:
    """WLASL class list (`index<TAB>gloss`) -> glosses by index; indices must be 0..N-1."""
    labels: dict[int, str] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ModelDirError(f"{path}:{lineno}: expected 'index<TAB>gloss', got {line!r}")
        idx = int(parts[0])
        if idx in labels:
            raise ModelDirError(f"{path}:{lineno}: duplicate index {idx}")
        labels[idx] = parts[1].strip()
    if sorted(labels) != list(range(len(labels))):
        raise ModelDirError(f"{path}: indices must be 0..{len(labels) - 1} without gaps")
    return [labels[i] for i in range(len(labels))]


def write_labels(path: str | os.PathLike, labels: list[str]) -> None:
    Path(path).write_text("".join(f"{i}\t{g}\n" for i, g in enumerate(labels)), encoding="utf-8")


def read_model_info(path: str | os.PathLike, network: str = WEIGHTS) -> ModelInfo:
    """config.json + labels.txt, checked; `network` (model.pt or model.onnx) must be there too."""
    path = Path(path)
    for name in (network, CONFIG, LABELS):
        if not (path / name).is_file():
            raise ModelDirError(f"{path} is not a model directory: {name} is missing")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path / CONFIG}: invalid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else None
        raise ModelDirError(f"{path / CONFIG}: format {got!r}, want {FORMAT!r}")
    arch = config.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") != "i3d":
        raise ModelDirError(f"{path / CONFIG}: unsupported architecture")
    num_classes = arch.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelDirError(f"{path / CONFIG}: architecture.num_classes must be an integer >= 1")
    try:
        preprocess = PreprocessConfig.from_dict(config["preprocess"])
    except (TypeError, ValueError, KeyError) as e:
        raise ModelDirError(f"{path / CONFIG}: {e}") from e
    onnx = config.get("onnx")
    if onnx is not None and not (
        isinstance(onnx, dict)
        and isinstance(onnx.get("file"), str)
        and Path(onnx["file"]).name == onnx["file"]  # a file in the directory, nowhere else
        and (path / onnx["file"]).is_file()
    ):
        raise ModelDirError(f"{path / CONFIG}: its onnx record names no file in {path}")
    labels = read_labels(path / LABELS)
    check_classes(labels, num_classes, config.get("no_sign"), path)
    return ModelInfo(path, preprocess, labels, config)
