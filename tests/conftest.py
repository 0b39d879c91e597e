"""Shared fixtures: published-format I3D state dicts and small real video files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.synth import moving_square, write_video  # noqa: F401 (tests import them here)
from components.params import TrainConfig, load_params

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def demo_recipe(**changes) -> TrainConfig:
    """params.yaml's training recipe with `changes`: TrainConfig has no defaults of its own."""
    return TrainConfig.from_dict({**load_params(ROOT / "params.yaml")["train"], **changes})


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


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", moving_square())


@pytest.fixture(scope="session")
def onnx_sentence_model(tmp_path_factory) -> Path:
    """The demo-trained fixture model with the model.onnx `sign2text model export` made of it
    (tests/fixtures/sentence_model_onnx: model.onnx and the config.json that records it; see
    SOURCES.md). Shipped, not exported per run: the export is 15 s of tracing, and
    tests/test_export.py exports other models through the CLI."""
    import shutil

    model_dir = tmp_path_factory.mktemp("onnx") / "sentence_model"
    shutil.copytree(FIXTURES / "sentence_model", model_dir)
    for name in ("model.onnx", "config.json"):
        shutil.copy(FIXTURES / "sentence_model_onnx" / name, model_dir / name)
    return model_dir
