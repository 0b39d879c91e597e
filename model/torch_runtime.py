"""The torch forward: model.pt rebuilt by model/package.py (model/runtime.py's contract)."""

from __future__ import annotations

import numpy as np
import torch

from model.modeldir import ModelInfo
from model.package import ModelBundle, load_model_dir


def fast_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode with channels_last_3d weights: oneDNN / cuDNN's preferred 3D conv layout."""
    return model.eval().to(memory_format=torch.channels_last_3d)


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
        x = torch.as_tensor(clips).to(self.device).contiguous(memory_format=torch.channels_last_3d)
        return self.model.clip_logits(self.model(x)).float().cpu().numpy()


def load(info: ModelInfo, device: str = "cpu") -> TorchRuntime:
    dev = resolve_device(device)
    return TorchRuntime(load_model_dir(info.path, dev), dev)
