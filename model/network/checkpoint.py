"""Reading published I3D state dicts and loading them strictly, with errors that name the key."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from model.network.i3d import InceptionI3d

HEAD_KEYS = ("logits.conv3d.weight", "logits.conv3d.bias")
_WRAPPERS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the network."""


@dataclass(frozen=True)
class LoadReport:
    checkpoint_classes: int
    model_classes: int
    head_replaced: bool
    filled_batch_counters: int

    def describe(self) -> str:
        if self.head_replaced:
            return (
                f"loaded backbone; head replaced: {self.checkpoint_classes} -> "
                f"{self.model_classes} classes (new head is untrained)"
            )
        return f"loaded all weights ({self.model_classes} classes)"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file as a flat state dict. Never unpickles arbitrary objects.

    `path` may also be a storage URI (s3://bucket/i3d/rgb_imagenet.pt, gs://, https://): it is
    downloaded to a temp dir first (model.storage.fetch; failures raise StorageError).
    """
    from model.files import display_uri
    from model.storage import fetch, is_uri

    if is_uri(path):
        source = display_uri(path)
        with tempfile.TemporaryDirectory(prefix="sign2text-ckpt-") as tmp:
            local = fetch(path, tmp)
            if local.is_dir():
                raise CheckpointError(f"checkpoint {source} is a prefix/directory, not one object")
            return _read_local_state_dict(local, source=source)
    path = Path(path)
    return _read_local_state_dict(path, source=str(path))


def _read_local_state_dict(path: Path, source: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {source}: {first}") from e
    return normalize_state_dict(obj, source=source)


def normalize_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict': ...}-style containers and strip wrapper prefixes."""
    while isinstance(obj, Mapping) and not _looks_like_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPERS if k in obj), None)
        if inner is None:
            raise CheckpointError(
                f"{source}: not a state dict (top-level keys: {sorted(map(str, obj))[:8]})"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: value of '{key}' is {type(value).__name__}, not a tensor"
            )
        out[key] = value
    return out


def _looks_like_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_weights(
    model: InceptionI3d, state: Mapping[str, torch.Tensor], *, replace_head: bool = False
) -> LoadReport:
    """Load `state` into `model` strictly.

    `num_batches_tracked` counters may be absent (older exports drop them); they are the only
    keys filled from the model. With `replace_head`, a checkpoint head of another class count is
    dropped and the model's fresh head kept; every other key must still match exactly.
    """
    state = dict(state)
    expected = model.state_dict()
    ckpt_classes = _head_classes(state)
    model_classes = model.config.num_classes
    head_replaced = False
    if ckpt_classes is not None and ckpt_classes != model_classes:
        if not replace_head:
            raise CheckpointError(
                f"checkpoint head has {ckpt_classes} classes but the model has {model_classes}; "
                f"use --num-classes {ckpt_classes}, or allow head replacement"
            )
        for k in HEAD_KEYS:
            state.pop(k)
        head_replaced = True

    filled = 0
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
            filled += 1
        if head_replaced and key in HEAD_KEYS:
            state[key] = expected[key]

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(
            f"checkpoint is missing key '{missing[0]}'"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if unexpected:
        raise CheckpointError(
            f"checkpoint has unexpected key '{unexpected[0]}'"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"shape mismatch for '{key}': checkpoint {list(state[key].shape)}, "
                f"model {list(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)
    return LoadReport(ckpt_classes or model_classes, model_classes, head_replaced, filled)


def _head_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    w = state.get(HEAD_KEYS[0])
    return int(w.shape[0]) if w is not None and w.dim() >= 1 else None


def infer_num_classes(state: Mapping[str, torch.Tensor]) -> int:
    n = _head_classes(state)
    if n is None:
        raise CheckpointError(f"checkpoint has no classification head ('{HEAD_KEYS[0]}')")
    return n
