"""Around both model.onnx runtimes' forward (model/runtimes/onnx_graph.py): an older export with a
fixed batch and float input is fed scaled clips in chunks of its batch, and the clip logits are
the max over time."""

from __future__ import annotations

import numpy as np
import pytest

from model.runtimes.onnx_graph import clip_logits


def test_a_fixed_batch_float_export_gets_scaled_chunks_and_clip_logits():
    seen = []

    def forward(x):  # per-time logits: class k at time t is clip mean + k + t
        seen.append((x.dtype, len(x)))
        return x.mean(axis=(1, 2, 3, 4))[:, None, None] + np.arange(2)[:, None] + np.arange(3)

    clips = np.stack([np.full((3, 4, 2, 2), v, np.uint8) for v in (0, 255, 0)])
    got = clip_logits(clips, (-1.0, 1.0), 1, forward)
    assert seen == [(np.float32, 1)] * 3  # scaled once, then clip by clip (the recursion's bug)
    np.testing.assert_allclose(got, [[1, 2], [3, 4], [1, 2]], atol=1e-6)
    assert got.dtype == np.float32
    assert clip_logits(clips, None, None, lambda x: forward(x.astype(np.float32))).shape == (3, 2)
    with pytest.raises(TypeError, match="uint8"):
        clip_logits(clips.astype(np.float32), None, None, forward)
