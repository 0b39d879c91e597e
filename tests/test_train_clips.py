"""The clips training reads from shards (components/training/clips.py) and its schedule: context
windows only in the last epochs and the same ones every time for evaluation, the clips precise
batch norm sees capped and spread over the split, and the learning-rate phases of sign and
context epochs."""

from __future__ import annotations

import pytest
import torch

from components.training.clips import ShardClips
from model.video.clip import PreprocessConfig
from tests.conftest import demo_recipe
from tests.test_train import shards_fixture  # noqa: F401


def test_context_windows_come_in_the_last_epochs(shards):
    """Sign clips every epoch; context windows (labels incl. no-sign = 4) only when switched on,
    as many as context_fraction x signs, the same ones every time for evaluation."""
    _, shard_dir = shards
    pre = PreprocessConfig(num_frames=8, resize=64, crop=56)
    kw = {"context_fraction": 0.5, "context_window": 12, "no_sign": 4}
    clips = ShardClips(shard_dir, "val", pre, train=False, cache=True, **kw)
    clips.set_epoch(0, context=False)
    plain = list(clips)
    assert not any(c for _, _, c in plain) and all(0 <= y < 4 for _, y, _ in plain)
    clips.set_epoch(0, context=True)
    mixed = list(clips)
    windows = [(x, y) for x, y, c in mixed if c]
    assert len(windows) == round(0.5 * len(plain)) and all(0 <= y <= 4 for _, y in windows)
    clips.set_epoch(1, context=True)
    again = [(x, y) for x, y, c in clips if c]
    assert all(
        torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(windows, again, strict=True)
    )
    cfg = demo_recipe(epochs=3, context_fraction=0.5, context_epochs=2)
    assert cfg.total_epochs == 5
    assert [cfg.context_in(e) for e in range(5)] == [False, False, False, True, True]
    plain = demo_recipe(epochs=3, context_fraction=0.0, context_epochs=0)
    assert not any(plain.context_in(e) for e in range(3))
    for bad in ({"context_fraction": 1.0}, {"context_epochs": 2}, {"context_fraction": -1.0}):
        with pytest.raises(ValueError, match="context_"):
            demo_recipe(**{"epochs": 2, "context_fraction": 0.0, "context_epochs": 0, **bad})


def test_batchnorm_clips_are_capped_and_spread_over_the_split(shards):
    """bn_clips: the clips precise BN sees are at most that many, spread over the whole split
    (shards hold samples in metadata order) and, in a context epoch, signs and windows both."""
    _, shard_dir = shards
    pre = PreprocessConfig(num_frames=8, resize=64, crop=56)
    kw = {"context_fraction": 1.0, "context_window": 12, "no_sign": 4}
    full = ShardClips(shard_dir, "val", pre, train=False, **kw)
    capped = ShardClips(shard_dir, "val", pre, train=False, max_items=4, **kw)
    for ds in (full, capped):
        ds.set_epoch(0, context=True)
    everything = full.epoch_items(8)  # 8 signs and 8 windows, interleaved
    picked = capped.epoch_items(8)
    assert len(everything) == 16 and len(picked) == 4
    assert picked[0] == everything[0] and picked[-1] == everything[-1]  # first and last
    assert {ctx for ctx, _ in picked} == {True, False}
    assert len(list(capped)) == 4
    shuffled = ShardClips(shard_dir, "val", pre, train=True, max_items=3, **kw)
    shuffled.set_epoch(0, context=True)
    assert len(shuffled.epoch_items(8)) == 3
    # Training's view decodes the split once for both; the clips are the same as on its own.
    source = ShardClips(shard_dir, "val", pre, train=True, cache=True, **kw)
    shared = ShardClips(
        shard_dir, "val", pre, train=False, cache=True, max_items=4, decoded_by=source, **kw
    )
    shared.set_epoch(0, context=True)
    own = list(capped)
    assert all(torch.equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(own, shared, strict=True))
    assert source._cache is not None and shared._cache is None
    with pytest.raises(ValueError, match="same split"):
        ShardClips(shard_dir, "train", pre, train=False, cache=True, decoded_by=source, **kw)
    with pytest.raises(ValueError, match="bn_clips"):
        demo_recipe(bn_clips=0)


def test_learning_rate_phases():
    """Sign epochs warm up and decay from lr; context epochs restart from context_lr."""
    from components.training.train import _optimizer

    cfg = demo_recipe(
        epochs=2, warmup_epochs=1, lr=0.01, context_fraction=1.0, context_epochs=2, context_lr=0.001
    )
    opt, sched = _optimizer(cfg, torch.nn.Linear(1, 1), [4, 4, 8, 8])
    lrs = []
    for _ in range(24):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs[:8]) == pytest.approx(0.01) and lrs[7] < 0.002  # phase 1 decays to ~0
    assert lrs[8] < lrs[15] < lrs[16] == pytest.approx(0.001)  # phase 2: warm-up to context_lr
    assert lrs[23] < 1e-4 and max(lrs[8:]) == pytest.approx(0.001)
