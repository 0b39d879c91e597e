"""The model directory: the one format that import-i3d and training write and serving loads.

model.pt      state dict (tensors only; read with weights_only=True)
config.json   {"format": ..., "architecture": I3DConfig, "preprocess": PreprocessConfig, ...}
              and, for a model trained on context windows, "no_sign": {"class": N, "window": W}:
              output N (one past the last gloss) means "no sign at this window's centre", and
              W is the window (frames at preprocess.fps) it was trained on; sentence mode needs it
labels.txt    index<TAB>gloss, one per gloss (WLASL class list format)
model.onnx    optional: the same network as ONNX (`sign2text model export DIR --format onnx`),
              recorded in config.json's "onnx" (file, sha256, input/output shapes, the model.pt
              sha256 it was exported from, its measured max |diff| to torch); see
              sign2text/release/export.py. Directories without it load as before.
*.json        optional extras (metrics.json, lineage.json)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import CheckpointError, load_weights, read_state_dict
from model.i3d import I3DConfig, InceptionI3d
from model.storage import hash_file, replace_dir
from model.video import PreprocessConfig

FORMAT = "sign2text-model/1"
WEIGHTS, CONFIG, LABELS, ONNX = "model.pt", "config.json", "labels.txt", "model.onnx"


class ModelDirError(ValueError):
    """A model directory that is missing files or inconsistent."""


@dataclass
class ModelBundle:
    model: InceptionI3d
    arch: I3DConfig
    preprocess: PreprocessConfig
    labels: list[str]
    config: dict

    @property
    def sentence_window(self) -> int | None:
        """Frames per context window for a model with a no-sign output, else None."""
        no_sign = self.config.get("no_sign")
        return int(no_sign["window"]) if no_sign else None


def _check_classes(labels: list[str], num_classes: int, no_sign: dict | None, where) -> None:
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
    of this many frames (see sign2text/learning/context.py)."""
    out = Path(out)
    no_sign = {"class": len(labels), "window": sentence_window} if sentence_window else None
    _check_classes(labels, model.config.num_classes, no_sign, "write_model_dir")
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
    path = Path(path)
    for name in (WEIGHTS, CONFIG, LABELS):
        if not (path / name).is_file():
            raise ModelDirError(f"{path} is not a model directory: {name} is missing")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path / CONFIG}: invalid JSON ({e})") from e
    if config.get("format") != FORMAT:
        raise ModelDirError(f"{path / CONFIG}: format {config.get('format')!r}, want {FORMAT!r}")
    arch_d = dict(config["architecture"])
    if arch_d.pop("name", None) != "i3d":
        raise ModelDirError(f"{path / CONFIG}: unsupported architecture")
    try:
        arch = I3DConfig.from_dict(arch_d)
        preprocess = PreprocessConfig.from_dict(config["preprocess"])
    except (TypeError, ValueError, KeyError) as e:
        raise ModelDirError(f"{path / CONFIG}: {e}") from e
    onnx = config.get("onnx")
    if onnx is not None and not (
        isinstance(onnx, dict) and (path / str(onnx.get("file", ""))).is_file()
    ):
        raise ModelDirError(f"{path / CONFIG}: its onnx record names no file in {path}")
    labels = read_labels(path / LABELS)
    _check_classes(labels, arch.num_classes, config.get("no_sign"), path)
    model = InceptionI3d(arch)
    try:
        load_weights(model, read_state_dict(path / WEIGHTS))
    except CheckpointError as e:
        raise ModelDirError(f"{path}: {e}") from e
    model.to(device).eval()
    return ModelBundle(model, arch, preprocess, labels, config)


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
