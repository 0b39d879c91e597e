"""In-process prediction: a model directory + a clip -> top-k glosses. Serving wraps this."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from model.package import ModelBundle, load_model_dir
from model.video import load_clip


@dataclass(frozen=True)
class Prediction:
    glosses: list[str]
    scores: list[float]  # softmax probabilities, descending


def fast_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode with channels_last_3d weights: oneDNN / cuDNN's preferred 3D conv layout."""
    return model.eval().to(memory_format=torch.channels_last_3d)


class Classifier:
    """Loads a model directory once; predicts clips or video files."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu"):
        self.bundle: ModelBundle = load_model_dir(Path(model_dir), device)
        self.device = torch.device(device)
        self.model = fast_inference(self.bundle.model)

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def check_top_k(self, top_k: int) -> int:
        if not 1 <= top_k <= len(self.labels):
            raise ValueError(f"top_k must be between 1 and {len(self.labels)}, got {top_k}")
        return top_k

    @torch.inference_mode()
    def probabilities(self, clips: torch.Tensor) -> torch.Tensor:
        """B x C x T x H x W (or one C x T x H x W clip) -> B x N clip probabilities.

        Over the glosses only: a no-sign output (if the model has one) is left out, so this is
        "which sign, given that the clip is one" -- what word mode is asked."""
        logits = self.logits(clips)[:, : len(self.labels)]
        return logits.softmax(dim=1)

    @torch.inference_mode()
    def logits(self, clips: torch.Tensor) -> torch.Tensor:
        """B x C x T x H x W (or one clip) -> B x classes clip logits, float32 on the CPU."""
        if clips.dim() == 4:
            clips = clips.unsqueeze(0)
        x = clips.to(self.device).contiguous(memory_format=torch.channels_last_3d)
        return self.model.clip_logits(self.model(x)).float().cpu()

    def top_k(self, probs: torch.Tensor, top_k: int) -> Prediction:
        values, idx = probs.topk(self.check_top_k(top_k))
        return Prediction([self.labels[i] for i in idx.tolist()], values.tolist())

    def predict_video(self, path: str | os.PathLike, top_k: int = 5) -> Prediction:
        self.check_top_k(top_k)
        clip = load_clip(path, self.bundle.preprocess)
        return self.top_k(self.probabilities(clip)[0], top_k)
