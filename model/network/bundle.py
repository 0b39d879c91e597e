"""The model directory with its torch network: written by import-i3d and training, rebuilt from
config.json alone for serving and evaluation. The layout, and reading it without torch, are in
model/modeldir.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from model.files import hash_file, replace_dir
from model.modeldir import (
    CONFIG,
    FORMAT,
    LABELS,
    ONNX,
    WEIGHTS,
    ModelDirError,
    ModelInfo,
    check_classes,
    read_labels,
    read_model_info,
    write_labels,
)
from model.network.checkpoint import CheckpointError, load_weights, read_state_dict
from model.network.i3d import I3DConfig, InceptionI3d
from model.video.clip import PreprocessConfig

__all__ = [
    "CONFIG",
    "LABELS",
    "ONNX",
    "WEIGHTS",
    "ModelBundle",
    "ModelDirError",
    "read_labels",
    "load_model_dir",
    "write_model_dir",
    "import_i3d",
]


@dataclass
class ModelBundle:
    model: InceptionI3d
    arch: I3DConfig
    info: ModelInfo

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.info.preprocess

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def config(self) -> dict:
        return self.info.config

    @property
    def sentence_window(self) -> int | None:
        return self.info.sentence_window


def write_model_dir(
    out: str | os.PathLike,
    model: InceptionI3d,
    preprocess: PreprocessConfig,
    labels: list[str],
    extras: dict[str, dict] | None = None,
    sentence_window: int | None = None,
) -> Path:
    """Write the directory atomically: a crash leaves the previous version or nothing.

    `sentence_window`: the model has one output past the labels, "no sign", trained on windows
    of this many frames (see components/training/context.py)."""
    out = Path(out)
    no_sign = {"class": len(labels), "window": sentence_window} if sentence_window else None
    check_classes(labels, model.config.num_classes, no_sign, "write_model_dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, tmp / WEIGHTS)
        config = {
            "format": FORMAT,
            "architecture": {"name": "i3d", **model.config.to_dict()},
            "preprocess": preprocess.to_dict(),
            "output": "per-time logits [B, N, T']; clip logits = max over time; softmax",
        }
        if no_sign:
            config["no_sign"] = no_sign
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        write_labels(tmp / LABELS, labels)
        for name, payload in (extras or {}).items():
            (tmp / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_model_dir(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the network from config.json alone (no training code) and load its weights."""
    info = read_model_info(path)
    arch_d = {k: v for k, v in info.config["architecture"].items() if k != "name"}
    try:
        arch = I3DConfig.from_dict(arch_d)
    except (TypeError, ValueError) as e:
        raise ModelDirError(f"{info.path / CONFIG}: {e}") from e
    model = InceptionI3d(arch)
    try:
        load_weights(model, read_state_dict(info.path / WEIGHTS))
    except CheckpointError as e:
        raise ModelDirError(f"{info.path}: {e}") from e
    model.to(device).eval()
    return ModelBundle(model, arch, info)


def import_i3d(
    weights: str | os.PathLike,
    labels_file: str | os.PathLike,
    num_classes: int,
    out: str | os.PathLike,
    preprocess: PreprocessConfig | None = None,
) -> tuple[Path, str]:
    """A published pytorch-i3d / WLASL checkpoint -> model directory. Returns (dir, summary).

    The label list follows WLASL subset semantics: WLASL-N uses the first N glosses. A
    checkpoint whose head has another class count gets a fresh (untrained) head.
    """
    state = read_state_dict(weights)
    all_labels = read_labels(labels_file)
    if num_classes < 1 or num_classes > len(all_labels):
        raise ModelDirError(
            f"--num-classes {num_classes} needs that many labels; {labels_file} has "
            f"{len(all_labels)}"
        )
    model = InceptionI3d(I3DConfig(num_classes=num_classes))
    report = load_weights(model, state, replace_head=True)
    lineage = {
        "source": "import-i3d",
        "weights_file": Path(weights).name,
        "weights_sha256": hash_file(weights),
        "checkpoint_classes": report.checkpoint_classes,
        "head_replaced": report.head_replaced,
    }
    path = write_model_dir(
        out,
        model,
        preprocess or PreprocessConfig(),
        all_labels[:num_classes],
        extras={"lineage.json": lineage},
    )
    return path, report.describe()
