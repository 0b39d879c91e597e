"""Shared fixtures: published-format I3D state dicts and small real video files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
CLASS_LIST = FIXTURES / "wlasl" / "wlasl_class_list.txt"


def reference_keys() -> list[tuple[str, list[int], str]]:
    return json.loads((FIXTURES / "i3d_state_dict.json").read_text())["keys"]


def published_state_dict(num_classes: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    """Exactly the published key set and shapes, random but well-scaled values; head resized."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in reference_keys():
        if key.startswith("logits."):
            shape = [num_classes, *shape[1:]]
        if dtype == "int64":
            state[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith(".weight") and len(shape) == 5:
            fan_in = int(np.prod(shape[1:]))  # He init keeps the activation scale layer to layer
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith("running_var"):
            state[key] = 1 + 0.1 * torch.rand(shape, generator=g)
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # biases and running means: small, so the input, not the biases, drives the output
            state[key] = 0.01 * torch.randn(shape, generator=g)
    return state


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """T x H x W x 3 uint8 BGR -> mp4 (MPEG-4 part 2, which OpenCV's wheel can encode)."""
    h, w = frames.shape[1:3]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        out.write(np.ascontiguousarray(f))
    out.release()
    return path


def moving_square(n: int = 40, h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """A square moving left to right over a textured background; every frame is distinct."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 90, (h, w, 3), dtype=np.uint8)
    frames = np.repeat(bg[None], n, axis=0)
    for i in range(n):
        x = 5 + i * (w - 30) // max(n - 1, 1)
        cv2.rectangle(frames[i], (x, h // 3), (x + 20, h // 3 + 20), (30, 200, 240), -1)
        cv2.putText(frames[i], str(i), (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255,) * 3)
    return frames


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", moving_square())
