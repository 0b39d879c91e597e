"""The torch forward: model.pt rebuilt by model/network/bundle.py (model/runtimes/choice.py's
contract)."""

from __future__ import annotations

import numpy as np
import torch

from model.modeldir import ModelInfo
from model.network.bundle import ModelBundle, load_model_dir
from model.video.clip import value_map


def fast_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode with channels_last_3d weights: oneDNN / cuDNN's preferred 3D conv layout."""
    return model.eval().to(memory_format=torch.channels_last_3d)


def normalized(x: torch.Tensor, value_range) -> torch.Tensor:
    """uint8 clips -> float32 in value_range: model/video/clip.py's normalize, bit for bit, in torch
    (on the clip's device: a GPU gets a quarter of the bytes and scales them itself)."""
    scale, offset = (float(v) for v in value_map(value_range))
    return x.to(torch.float32).mul_(scale).add_(offset)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when this machine has it, else the CPU; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class TorchRuntime:
    name = "torch"

    def __init__(self, bundle: ModelBundle, device: torch.device):
        self.bundle, self.device = bundle, device
        self.model = fast_inference(bundle.model)

    @torch.inference_mode()
    def logits(self, clips: np.ndarray) -> np.ndarray:
        if clips.dtype != np.uint8:
            raise TypeError(f"clips must be uint8 (preprocessing's output), got {clips.dtype}")
        x = torch.as_tensor(clips).to(self.device).contiguous(memory_format=torch.channels_last_3d)
        x = normalized(x, self.bundle.preprocess.value_range)
        return self.model.clip_logits(self.model(x)).float().cpu().numpy()


def load(info: ModelInfo, device: str = "cpu") -> TorchRuntime:
    dev = resolve_device(device)
    return TorchRuntime(load_model_dir(info.path, dev), dev)
