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

from model import sentence as S
from model.modeldir import CONFIG, ModelInfo, read_model_info
from model.runtimes.choice import open_runtime, softmax
from model.video.clip import PreprocessConfig, clip_from_frames, resize_frames, to_clip
from model.video.limits import Limits, check_frames, read_video

Video = str | os.PathLike | np.ndarray  # a file, or T x H x W x 3 uint8 BGR frames
NO_LIMITS = Limits()  # in-process use: the caller trusts its own files
# (path, mode, cfg, limits) -> the mode's resized frames: read_video in-process, or
# model/serving/decoder.py's child process when the video is untrusted (serving).
Reader = Callable[[str | os.PathLike, str, PreprocessConfig, Limits], np.ndarray]
# Called with "decode", "preprocess" or "inference" around each stage (serving times them).
Timer = Callable[[str], AbstractContextManager]


def untimed(stage: str) -> AbstractContextManager:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Prediction:
    glosses: list[str]
    scores: list[float]  # softmax probabilities, descending


class Classifier:
    """Loads a model directory once; answers word mode and sentence mode.

    `runtime`: which network runs the forward (model/runtimes/choice.py): "torch" (model.pt), "onnx"
    (model.onnx, ONNX Runtime on the CPU), "openvino" (model.onnx, OpenVINO on the CPU, f32 or
    bf16) or "auto" (OpenVINO when the directory has model.onnx and the device is the CPU), or
    "triton" (a KServe v2 predictor elsewhere; `options` say where). `self.runtime.precision`
    and `.reason` say at what precision it runs and why."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str = "cpu",
        runtime: str = "auto",
        **options,
    ):
        # config.json and labels.txt here; the network file is the chosen runtime's to find
        # (model.pt, model.onnx, or none for a predictor elsewhere).
        self.info: ModelInfo = read_model_info(Path(model_dir), CONFIG)
        self.runtime = open_runtime(self.info, runtime, device, **options)

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def word(
        self,
        video: Video,
        top_k: int = 5,
        *,
        limits: Limits = NO_LIMITS,
        timer: Timer = untimed,
        reader: Reader = read_video,
    ) -> Prediction:
        """The video as one sign: its top_k glosses."""
        self.check_top_k(top_k)
        cfg = self.info.preprocess
        if isinstance(video, np.ndarray):
            check_frames(video, limits)
            with timer("preprocess"):
                clip = clip_from_frames(video, cfg)
        else:
            with timer("decode"):
                frames = reader(video, "word", cfg, limits)  # sampled and resized: load_clip's
            with timer("preprocess"):
                clip = to_clip(frames, cfg)
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
        reader: Reader = read_video,
        stop: S.Stop = S.never,
        on_probs=None,
    ) -> list[S.Word]:
        """The video as several signs in a row: the words, in order (model/sentence.py).

        Its cost is capped at what the default window and stride cost on the longest video
        the limits allow; `stop` is called between batches of windows (cancellation)."""
        frames = self._stream_frames(video, limits, timer, reader)
        # Windowing, preprocessing and the forward passes interleave: one stage for all of it.
        with timer("inference"):
            return S.transcribe(
                self,
                frames,
                window=window,
                stride=stride,
                threshold=threshold,
                max_windows=S.max_windows(self, limits.max_frames),
                stop=stop,
                on_probs=on_probs,
            )

    def windows(
        self,
        video: Video,
        *,
        window: int | None = None,
        stride: int | None = None,
        start: int = 0,
        limits: Limits = NO_LIMITS,
        timer: Timer = untimed,
        reader: Reader = read_video,
        stop: S.Stop = S.never,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """A stream's next windows (live mode): sentence mode's windows centred on start,
        start + stride, ... that end within the frames -> (centres, probabilities, window)
        (model/sentence.py's score_windows), capped as sentence mode is."""
        frames = self._stream_frames(video, limits, timer, reader)
        with timer("inference"):
            return S.score_windows(
                self,
                frames,
                window=window,
                stride=stride,
                start=start,
                max_windows=S.max_windows(self, limits.max_frames),
                stop=stop,
            )

    def _stream_frames(self, video: Video, limits: Limits, timer: Timer, reader: Reader):
        """Sentence and windows mode's input: every frame, resized once (not once per window)."""
        cfg = self.info.preprocess
        with timer("decode"):
            if isinstance(video, np.ndarray):
                check_frames(video, limits)
                return resize_frames(video, cfg)
            return reader(video, "sentence", cfg, limits)

    def check_top_k(self, top_k: int) -> int:
        if not 1 <= top_k <= len(self.labels):
            raise ValueError(f"top_k must be between 1 and {len(self.labels)}, got {top_k}")
        return top_k

    def probabilities(self, clips: np.ndarray) -> np.ndarray:
        """B x C x T x H x W (or one C x T x H x W clip) -> B x N clip probabilities.

        Over the glosses only: a no-sign output (if the model has one) is left out, so this is
        "which sign, given that the clip is one" -- what word mode is asked."""
        return softmax(self.logits(clips)[:, : len(self.labels)])

    def logits(self, clips: np.ndarray) -> np.ndarray:
        """B x C x T x H x W (or one clip) -> B x classes float32 clip logits."""
        return self.runtime.logits(clips[None] if clips.ndim == 4 else clips)

    def top_k(self, probs: np.ndarray, top_k: int) -> Prediction:
        idx = np.argsort(-probs, kind="stable")[: self.check_top_k(top_k)]
        return Prediction([self.labels[i] for i in idx], [float(probs[i]) for i in idx])
