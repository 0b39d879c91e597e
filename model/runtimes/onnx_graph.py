"""What both runtimes of model.onnx (ONNX Runtime, OpenVINO) do around their forward: the
graph's input made from preprocessing's uint8 clips, an export with a fixed batch fed in chunks
of that batch, and per-time logits turned into clip logits (choice.py's contract)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model.video.clip import normalize


def clip_logits(
    clips: np.ndarray,
    value_range: tuple[float, float] | None,
    batch: int | None,
    forward: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """B x C x T x H x W uint8 clips -> B x classes float32 clip logits (max over time).

    value_range: where the graph takes float32 clips (an export from before the graph scaled
    them itself), their range, and they are scaled here; None: it takes uint8. batch: the
    graph's fixed batch (older exports: 1), None where it is dynamic. forward: the runtime's
    call, graph input -> B x classes x T' per-time logits."""
    if clips.dtype != np.uint8:
        raise TypeError(f"clips must be uint8 (preprocessing's output), got {clips.dtype}")
    x = np.ascontiguousarray(clips if value_range is None else normalize(clips, value_range))
    step = len(x) if batch is None else batch
    chunks = [x] if len(x) == step else [x[i : i + step] for i in range(0, len(x), step)]
    # The max over time is a new array: nothing returned aliases a runtime's output buffer.
    return np.concatenate([forward(c).max(axis=2) for c in chunks]).astype(np.float32, copy=False)
