"""I3D: published key layout, strict loading, and agreement with the reference computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.network.checkpoint import (
    CheckpointError,
    load_weights,
    normalize_state_dict,
    read_state_dict,
)
from model.network.i3d import I3DConfig, InceptionI3d, same_pad
from tests.conftest import published_state_dict, reference_keys
from tests.reference_i3d import RefInceptionI3d


def test_state_dict_has_exactly_the_published_keys_and_shapes():
    ours = InceptionI3d().state_dict()
    ref = {k: tuple(shape) for k, shape, _ in reference_keys()}
    assert len(ref) == 344
    assert set(ours) == set(ref)
    assert {k: tuple(v.shape) for k, v in ours.items()} == ref
    assert sum(not k.endswith("num_batches_tracked") for k in ours) == 287


def test_batchnorm_hyperparameters_match_reference():
    bns = [m for m in InceptionI3d().modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 7, 2, (2, 3)),
        (225, 7, 2, (3, 3)),
        (7, 2, 2, (0, 1)),
        (8, 2, 2, (0, 0)),
        (56, 3, 1, (1, 1)),
        (5, 3, 2, (1, 1)),
        (4, 3, 2, (0, 1)),
    ],
)
def test_same_padding_is_tensorflow_rule(size, kernel, stride, expected):
    assert same_pad(size, kernel, stride) == expected
    # "same" means ceil(size / stride) outputs
    front, back = expected
    assert (size + front + back - kernel) // stride + 1 == -(-size // stride)


@pytest.mark.slow
@pytest.mark.parametrize(("frames", "size"), [(24, 224), (17, 200)])
def test_forward_matches_reference_implementation(frames, size):
    state = published_state_dict(num_classes=100, seed=1)
    ours, ref = InceptionI3d(I3DConfig(num_classes=100)), RefInceptionI3d(num_classes=100)
    load_weights(ours, state)
    ref.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        a, b = ours.eval()(x), ref.eval()(x)
        fast = ours.to(memory_format=torch.channels_last_3d)(
            x.contiguous(memory_format=torch.channels_last_3d)
        )
    assert a.shape == b.shape and a.shape[:2] == (1, 100) and a.shape[2] >= 1
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast, b, rtol=1e-4, atol=1e-4)
    assert torch.equal(InceptionI3d.clip_logits(a), a.max(dim=2).values)


def test_small_inputs_and_width_multiplier_run():
    model = InceptionI3d(I3DConfig(num_classes=7, width=0.25)).eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 16, 112, 112))
    assert out.shape[:2] == (2, 7)
    assert sum(p.numel() for p in model.parameters()) < 1e6


def test_replace_logits_keeps_backbone_and_changes_head():
    model = InceptionI3d()
    before = model.Mixed_5c.b0.conv3d.weight.clone()
    model.replace_logits(10)
    assert model.logits.conv3d.weight.shape == (10, 1024, 1, 1, 1)
    assert model.config.num_classes == 10
    assert torch.equal(model.Mixed_5c.b0.conv3d.weight, before)


def _save(state, path, legacy=False):
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("drop_counters", [False, True])
def test_published_checkpoint_loads_strictly(tmp_path, legacy, prefix, drop_counters):
    state = published_state_dict(num_classes=100)
    saved = {
        prefix + k: v
        for k, v in state.items()
        if not (drop_counters and k.endswith("num_batches_tracked"))
    }
    path = _save(saved, tmp_path / "ckpt.pt", legacy=legacy)
    model = InceptionI3d(I3DConfig(num_classes=100))
    report = load_weights(model, read_state_dict(path))
    assert not report.head_replaced
    assert report.filled_batch_counters == (344 - 287 if drop_counters else 0)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, state[k]), k


def test_wrapped_checkpoint_is_unwrapped(tmp_path):
    state = published_state_dict(num_classes=5)
    path = _save({"epoch": torch.tensor(3), "state_dict": state}, tmp_path / "wrapped.pt")
    path2 = _save({"state_dict": state, "meta": "x"}, tmp_path / "w2.pt")
    assert set(read_state_dict(path)) == set(state)
    assert set(read_state_dict(path2)) == set(state)


def test_head_replacement_for_kinetics_checkpoint():
    state = published_state_dict(num_classes=400)
    model = InceptionI3d(I3DConfig(num_classes=100))
    with pytest.raises(CheckpointError, match="400 classes but the model has 100"):
        load_weights(model, state)
    report = load_weights(model, state, replace_head=True)
    assert report.head_replaced and report.checkpoint_classes == 400
    assert torch.equal(model.Conv3d_1a_7x7.conv3d.weight, state["Conv3d_1a_7x7.conv3d.weight"])
    assert model.logits.conv3d.weight.shape[0] == 100


def test_missing_key_is_named():
    state = published_state_dict(num_classes=10)
    del state["Mixed_4b.b1b.bn.running_mean"]
    with pytest.raises(CheckpointError, match=r"missing key 'Mixed_4b\.b1b\.bn\.running_mean'"):
        load_weights(InceptionI3d(I3DConfig(num_classes=10)), state)


def test_wrong_shape_is_named():
    state = published_state_dict(num_classes=10)
    state["Mixed_3c.b2b.conv3d.weight"] = torch.zeros(96, 32, 3, 3, 1)
    with pytest.raises(
        CheckpointError, match=r"shape mismatch for 'Mixed_3c\.b2b\.conv3d\.weight'"
    ):
        load_weights(InceptionI3d(I3DConfig(num_classes=10)), state)


def test_unexpected_key_is_named():
    state = published_state_dict(num_classes=10)
    state["Mixed_6a.b0.conv3d.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected key 'Mixed_6a\.b0\.conv3d\.weight'"):
        load_weights(InceptionI3d(I3DConfig(num_classes=10)), state)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(path)


def test_not_a_state_dict_is_refused():
    with pytest.raises(CheckpointError, match="not a state dict"):
        normalize_state_dict({"epoch": 3, "lr": 0.1})


def test_training_gradients_flow():
    model = InceptionI3d(I3DConfig(num_classes=3, width=0.25))
    x = torch.randn(2, 3, 8, 64, 64)
    loss = F.cross_entropy(InceptionI3d.clip_logits(model(x)), torch.tensor([0, 2]))
    loss.backward()
    assert model.Conv3d_1a_7x7.conv3d.weight.grad.abs().sum() > 0
