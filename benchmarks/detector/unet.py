"""DRAEM's discriminative sub-network (Zavrtanik et al. 2021), used alone as the detector, as the
AnomalyDiffusion and CAI benchmarks do: an encoder of six conv blocks (widths w, 2w, 4w, 8w, 8w, 8w,
max-pooling between them) and a decoder that upsamples, concatenates the skip connection and applies
conv blocks (widths 8w, 4w, 2w, w, w), then a 3x3 conv to two logits (normal, anomaly) per pixel.
Written from the paper's description; ``width`` is DRAEM's base width (64 in the paper).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(cin: int, cout: int, mid: int | None = None) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers (DRAEM's building block); ``mid`` channels in between."""
    mid = cout if mid is None else mid
    return nn.Sequential(
        nn.Conv2d(cin, mid, 3, padding=1),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DiscriminativeUNet(nn.Module):
    """``forward(x (B,in,H,W)) -> logits (B,out,H,W)``; H and W must be divisible by 32."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, width: int = 64) -> None:
        super().__init__()
        w = width
        enc = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList()
        cin = in_channels
        for cout in enc:
            self.encoder.append(conv_block(cin, cout))
            cin = cout
        self.pool = nn.MaxPool2d(2)
        # decoder level i goes from encoder level i+1 up to level i
        self.ups = nn.ModuleList()
        self.decs = nn.ModuleList()
        cur = enc[-1]
        for level in range(len(enc) - 2, -1, -1):
            out = enc[level - 1] if level else w  # DRAEM's decoder is one level narrower
            self.ups.append(_up(cur, out))
            self.decs.append(conv_block(out + enc[level], out))
            cur = out
        self.head = nn.Conv2d(cur, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"image size must be divisible by 32, got {tuple(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.encoder):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for up, dec, skip in zip(self.ups, self.decs, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
