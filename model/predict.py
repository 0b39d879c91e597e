"""In-process prediction: a model directory + a video -> top-k glosses (word mode) or the signed
words with their frame spans (sentence mode). `sign2text predict-local` and serving both call
Classifier.word / Classifier.sentence, so a served answer is the in-process answer.

A video is a file path (probed once; word mode then decodes only the frames it samples,
sentence mode decodes every frame once) or T x H x W x 3 uint8 BGR frames already decoded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import sentence as S
from model import video as V
from model.package import ModelBundle, load_model_dir

Video = str | os.PathLike | np.ndarray  # a file, or T x H x W x 3 uint8 BGR frames
Limits = V.Limits
NO_LIMITS = Limits()  # in-process use: the caller trusts its own files
# (path, mode, cfg, limits) -> the mode's resized frames: V.read_video in-process, or
# model/decoder.py's child process when the video is untrusted (serving).
Reader = Callable[[str | os.PathLike, str, V.PreprocessConfig, V.Limits], np.ndarray]
# Called with "decode", "preprocess" or "inference" around each stage (serving times them).
Timer = Callable[[str], AbstractContextManager]


def untimed(stage: str) -> AbstractContextManager:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Prediction:
    glosses: list[str]
    scores: list[float]  # softmax probabilities, descending


def fast_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode with channels_last_3d weights: oneDNN / cuDNN's preferred 3D conv layout."""
    return model.eval().to(memory_format=torch.channels_last_3d)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when this machine has it, else the CPU; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Classifier:
    """Loads a model directory once; answers word mode and sentence mode."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu"):
        self.device = resolve_device(device)
        self.bundle: ModelBundle = load_model_dir(Path(model_dir), str(self.device))
        self.model = fast_inference(self.bundle.model)

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def word(
        self,
        video: Video,
        top_k: int = 5,
        *,
        limits: Limits = NO_LIMITS,
        timer: Timer = untimed,
        reader: Reader = V.read_video,
    ) -> Prediction:
        """The video as one sign: its top_k glosses."""
        self.check_top_k(top_k)
        cfg = self.bundle.preprocess
        if isinstance(video, np.ndarray):
            V.check_frames(video, limits)
            with timer("preprocess"):
                clip = V.clip_from_frames(video, cfg)
        else:
            with timer("decode"):
                frames = reader(video, "word", cfg, limits)  # sampled and resized: load_clip's
            with timer("preprocess"):
                clip = V.to_tensor(frames, cfg)
        with timer("inference"):
            probs = self.probabilities(clip)[0]
        return self.top_k(probs, top_k)

    def sentence(
        self,
        video: Video,
        *,
        window: int | None = None,
        stride: int | None = None,
        threshold: float | None = None,
        limits: Limits = NO_LIMITS,
        timer: Timer = untimed,
        reader: Reader = V.read_video,
        stop: S.Stop = S.never,
        on_probs=None,
    ) -> list[S.Word]:
        """The video as several signs in a row: the words, in order (model/sentence.py).

        Its cost is capped at what the default window and stride cost on the longest video
        the limits allow; `stop` is called between batches of windows (cancellation)."""
        cfg = self.bundle.preprocess
        with timer("decode"):
            if isinstance(video, np.ndarray):
                V.check_frames(video, limits)
                frames = V.resize_frames(video, cfg)  # once, not once per window
            else:
                frames = reader(video, "sentence", cfg, limits)
        # Windowing, preprocessing and the forward passes interleave: one stage for all of it.
        with timer("inference"):
            return S.transcribe(
                self, frames, window=window, stride=stride, threshold=threshold,
                max_windows=S.max_windows(self, limits.max_frames), stop=stop, on_probs=on_probs,
            )  # fmt: skip

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
