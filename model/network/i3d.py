"""Inflated 3D Inception (I3D), state-dict compatible with pytorch-i3d / the WLASL code.

Module and parameter names mirror `InceptionI3d` so the published Kinetics, Charades and WLASL
checkpoints load with `strict=True`. Padding follows TensorFlow's "same" rule (front gets
pad // 2, back the rest), BatchNorm uses eps 1e-3 / momentum 0.01, and the output is per-time
logits [B, N, T'] whose max over time is the clip prediction.

Two deliberate differences from the reference, both exact on its domain:
- stride-1 layers pad inside the conv / pool (the "same" pad is symmetric there), so only the
  four strided layers pay for an explicit F.pad copy;
- the final pooling covers the whole remaining spatial extent, which is the reference's fixed
  [2, 7, 7] window at 224 px and keeps working at 112 px for CPU runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.config import check_fields, rule, strict_from_dict

# name -> (b0, b1a, b1b, b2a, b2b, b3b) output channels, in forward order.
_INCEPTION = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


@dataclass(frozen=True)
class I3DConfig:
    """Everything needed to rebuild the network; stored in checkpoints and config.json."""

    num_classes: int = field(default=400, metadata=rule(ge=1))
    in_channels: int = field(default=3, metadata=rule(ge=1))
    # Channel multiplier. 1.0 is the published architecture (the only width that loads public
    # weights); smaller widths make CPU-sized models with the same topology.
    width: float = field(default=1.0, metadata=rule(gt=0))
    dropout: float = field(default=0.5, metadata=rule(ge=0, lt=1))  # 1 would drop everything
    # Subtract each clip's mean frame (per channel and pixel) before the first layer, so the
    # network sees what moves and not who signs where. From scratch on few signers, appearance
    # (background, clothes, body) dominates the input and training sits at chance for epochs
    # before it finds the hand (docs/training.md, "Training from scratch, and what
    # reproduces"). Published weights were trained on raw frames: False keeps them exact.
    centre_over_time: bool = False

    def __post_init__(self):
        check_fields(self, "model")  # width and dropout come from params.yaml's model section

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> I3DConfig:
        return strict_from_dict(cls, d, "model")


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding for one dimension: (front, back)."""
    if size % stride == 0:
        pad = max(kernel - stride, 0)
    else:
        pad = max(kernel - size % stride, 0)
    return pad // 2, pad - pad // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    t, h, w = x.shape[-3:]
    pt, ph, pw = (same_pad(s, k, st) for s, k, st in zip((t, h, w), kernel, stride, strict=True))
    if not any(pt + ph + pw):
        return x
    return F.pad(x, (*pw, *ph, *pt))


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


class Unit3D(nn.Module):
    """Conv3d + BatchNorm + ReLU with "same" padding (pytorch-i3d's Unit3D)."""

    def __init__(self, cin, cout, kernel=1, stride=1, *, bn=True, relu=True, bias=False):
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)
        # With stride 1 and an odd kernel the "same" pad is k // 2 on both sides: let the conv
        # do it instead of materialising a padded copy of the activation.
        self.dynamic = any(s != 1 for s in self.stride)
        static = 0 if self.dynamic else tuple(k // 2 for k in self.kernel)
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=static, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            x = _pad_same(x, self.kernel, self.stride)
        x = self.conv3d(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pooling with "same" padding.

    The reference pads with zeros; every pool here sees post-ReLU (>= 0) activations, where a
    zero pad and max-pool's implicit -inf pad give the same result, so stride-1 pools pad inside
    the kernel call.
    """

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)
        self.dynamic = any(s != 1 for s in self.stride)
        self.static = 0 if self.dynamic else tuple(k // 2 for k in self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            x = _pad_same(x, self.kernel, self.stride)
        return F.max_pool3d(x, self.kernel, self.stride, padding=self.static)


class InceptionModule(nn.Module):
    def __init__(self, cin: int, c: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a = Unit3D(cin, c[1])
        self.b1b = Unit3D(c[1], c[2], 3)
        self.b2a = Unit3D(cin, c[3])
        self.b2b = Unit3D(c[3], c[4], 3)
        self.b3a = MaxPool3dSame(3, 1)
        self.b3b = Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1
        )


class InceptionI3d(nn.Module):
    """I3D. Input B x C x T x H x W; output per-time logits B x num_classes x T'."""

    def __init__(self, config: I3DConfig | None = None):
        super().__init__()
        self.config = config or I3DConfig()

        def ch(n: int) -> int:
            # Multiples of 8 keep width=1.0 exact (all published widths are multiples of 8).
            return max(8, round(n * self.config.width / 8) * 8)

        self.Conv3d_1a_7x7 = Unit3D(self.config.in_channels, ch(64), 7, 2)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(ch(64), ch(64))
        self.Conv3d_2c_3x3 = Unit3D(ch(64), ch(192), 3)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        cin = ch(192)
        pools = {"Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}
        pool_names = {"Mixed_4b": "MaxPool3d_4a_3x3", "Mixed_5b": "MaxPool3d_5a_2x2"}
        self._order = [
            "Conv3d_1a_7x7",
            "MaxPool3d_2a_3x3",
            "Conv3d_2b_1x1",
            "Conv3d_2c_3x3",
            "MaxPool3d_3a_3x3",
        ]
        for name, channels in _INCEPTION.items():
            if name in pools:
                self.add_module(pool_names[name], MaxPool3dSame(*pools[name]))
                self._order.append(pool_names[name])
            module = InceptionModule(cin, tuple(ch(c) for c in channels))
            self.add_module(name, module)
            self._order.append(name)
            cin = module.out_channels
        self.feature_channels = cin
        self.dropout = nn.Dropout(self.config.dropout)
        self.logits = self._head(self.config.num_classes)

    def _head(self, num_classes: int) -> Unit3D:
        return Unit3D(self.feature_channels, num_classes, bn=False, relu=False, bias=True)

    def replace_logits(self, num_classes: int) -> None:
        """Fresh classification head for num_classes (transfer learning)."""
        head = self._head(num_classes)
        self.logits = head.to(self.logits.conv3d.weight.device)
        self.config = I3DConfig(**{**self.config.to_dict(), "num_classes": num_classes})

    def backbone_parameters(self):
        return (p for n, p in self.named_parameters() if not n.startswith("logits."))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.centre_over_time:
            x = x - x.mean(dim=2, keepdim=True)
        x = self.features(x)
        t, h, w = x.shape[-3:]
        x = F.avg_pool3d(x, (min(2, t), h, w), stride=1)
        x = self.logits(self.dropout(x))
        return x.flatten(2)  # B x N x T' (spatial dims are 1)

    @staticmethod
    def clip_logits(per_time: torch.Tensor) -> torch.Tensor:
        """Clip-level logits: max over time, as the WLASL evaluation does."""
        return per_time.max(dim=2).values
