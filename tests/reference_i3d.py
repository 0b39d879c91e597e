"""The reference InceptionI3d forward, transcribed for tests only.

This restates the pytorch-i3d / WLASL computation as it is written there: every conv and pool
pads explicitly with F.pad (zeros) by TensorFlow's "same" rule computed from the input size at
call time, Unit3D = conv (no padding, no bias) -> BatchNorm(eps=1e-3) -> ReLU, and the head is a
fixed AvgPool3d([2, 7, 7], stride 1) -> dropout -> 1x1x1 conv with bias, squeezed to [B, N, T'].
It shares nothing with model/network/i3d.py, so agreement between the two is evidence, not
tautology.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pad(x, kernel, stride):
    pads = []
    for dim, (k, s) in enumerate(zip(kernel, stride, strict=True)):
        size = x.shape[2 + dim]
        p = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads.append((p // 2, p - p // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class RefUnit3D(nn.Module):
    def __init__(self, cin, cout, k=(1, 1, 1), s=(1, 1, 1), act=True, bn=True, bias=False):
        super().__init__()
        self.k, self.s, self.act = k, s, act
        self.conv3d = nn.Conv3d(cin, cout, k, s, padding=0, bias=bias)
        if bn:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)
        self.use_bn = bn

    def forward(self, x):
        x = self.conv3d(_pad(x, self.k, self.s))
        if self.use_bn:
            x = self.bn(x)
        return F.relu(x) if self.act else x


class RefPool(nn.MaxPool3d):
    def forward(self, x):
        return super().forward(_pad(x, self.kernel_size, self.stride))


class RefInception(nn.Module):
    def __init__(self, cin, c):
        super().__init__()
        self.b0 = RefUnit3D(cin, c[0])
        self.b1a = RefUnit3D(cin, c[1])
        self.b1b = RefUnit3D(c[1], c[2], (3, 3, 3))
        self.b2a = RefUnit3D(cin, c[3])
        self.b2b = RefUnit3D(c[3], c[4], (3, 3, 3))
        self.b3a = RefPool((3, 3, 3), (1, 1, 1), padding=0)
        self.b3b = RefUnit3D(cin, c[5])

    def forward(self, x):
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class RefInceptionI3d(nn.Module):
    def __init__(self, num_classes=400):
        super().__init__()
        self.order = []

        def add(name, module):
            self.add_module(name, module)
            self.order.append(name)

        add("Conv3d_1a_7x7", RefUnit3D(3, 64, (7, 7, 7), (2, 2, 2)))
        add("MaxPool3d_2a_3x3", RefPool((1, 3, 3), (1, 2, 2), padding=0))
        add("Conv3d_2b_1x1", RefUnit3D(64, 64))
        add("Conv3d_2c_3x3", RefUnit3D(64, 192, (3, 3, 3)))
        add("MaxPool3d_3a_3x3", RefPool((1, 3, 3), (1, 2, 2), padding=0))
        add("Mixed_3b", RefInception(192, [64, 96, 128, 16, 32, 32]))
        add("Mixed_3c", RefInception(256, [128, 128, 192, 32, 96, 64]))
        add("MaxPool3d_4a_3x3", RefPool((3, 3, 3), (2, 2, 2), padding=0))
        add("Mixed_4b", RefInception(128 + 192 + 96 + 64, [192, 96, 208, 16, 48, 64]))
        add("Mixed_4c", RefInception(192 + 208 + 48 + 64, [160, 112, 224, 24, 64, 64]))
        add("Mixed_4d", RefInception(160 + 224 + 64 + 64, [128, 128, 256, 24, 64, 64]))
        add("Mixed_4e", RefInception(128 + 256 + 64 + 64, [112, 144, 288, 32, 64, 64]))
        add("Mixed_4f", RefInception(112 + 288 + 64 + 64, [256, 160, 320, 32, 128, 128]))
        add("MaxPool3d_5a_2x2", RefPool((2, 2, 2), (2, 2, 2), padding=0))
        add("Mixed_5b", RefInception(256 + 320 + 128 + 128, [256, 160, 320, 32, 128, 128]))
        add("Mixed_5c", RefInception(256 + 320 + 128 + 128, [384, 192, 384, 48, 128, 128]))
        self.avg_pool = nn.AvgPool3d(kernel_size=[2, 7, 7], stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = RefUnit3D(1024, num_classes, act=False, bn=False, bias=True)

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        x = self.logits(self.dropout(self.avg_pool(x)))
        return x.squeeze(3).squeeze(3)
