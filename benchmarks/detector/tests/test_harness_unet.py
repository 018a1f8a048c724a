"""The detector of the UNet benchmark: DRAEM's discriminative UNet and the focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.detector.losses import focal_loss
from benchmarks.detector.unet import DiscriminativeUNet


def test_unet_shapes_and_width():
    for width in (4, 8):
        net = DiscriminativeUNet(3, 2, width)
        out = net(torch.rand(2, 3, 64, 64))
        assert out.shape == (2, 2, 64, 64)
    small = sum(p.numel() for p in DiscriminativeUNet(width=4).parameters())
    big = sum(p.numel() for p in DiscriminativeUNet(width=8).parameters())
    assert 3.5 < big / small < 4.5  # parameters grow with the square of the width


def test_unet_rejects_bad_size():
    import pytest

    with pytest.raises(ValueError, match="divisible by 32"):
        DiscriminativeUNet(width=4)(torch.rand(1, 3, 48, 48))


def test_focal_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 5, generator=g)
    masks = (torch.rand(2, 1, 5, 5, generator=g) > 0.5).float()
    ce = F.cross_entropy(logits, masks[:, 0].long())
    assert torch.allclose(focal_loss(logits, masks, gamma=0.0), ce, atol=1e-6)
    assert focal_loss(logits, masks, gamma=2.0) < ce
    # an easy, confident pixel costs far less than under cross-entropy
    easy = torch.tensor([[[[0.0]], [[4.0]]]])
    one = torch.ones(1, 1, 1, 1)
    assert focal_loss(easy, one) < 1e-3 * F.cross_entropy(easy, one[:, 0].long())
