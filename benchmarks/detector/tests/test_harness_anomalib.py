"""draem-anomalib (anomalib's own PerlinAnomalyGenerator) and the focal loss against kornia's."""

from __future__ import annotations

import pytest
import torch

from benchmarks.detector.losses import focal_loss
from benchmarks.detector.toydata import make_bank


def _generator_or_skip():
    from benchmarks.detector.anomalib_baseline import perlin_generator_class

    try:
        return perlin_generator_class()
    except ImportError as exc:
        pytest.skip(f"anomalib cannot import here: {exc}")


def test_draem_anomalib_masks_and_reproducibility(tmp_path):
    _generator_or_skip()
    from benchmarks.detector.anomalib_baseline import AnomalibPerlin

    synth = AnomalibPerlin(make_bank(tmp_path / "bank", per_class=2))
    assert all(not p.stem.endswith("_mask") for p in synth.gen.anomaly_source_paths)  # sources, not masks
    x = torch.rand(3, 3, 40, 56)
    keys = torch.tensor([1, 2, 3])
    a, m = synth.generate(x, keys)
    b, n = synth.generate(x, keys)
    assert a.shape == x.shape and m.shape == (3, 1, 40, 56)
    assert set(m.unique().tolist()) <= {0.0, 1.0} and m.flatten(1).any(1).all()
    assert torch.equal(a, b) and torch.equal(m, n)
    assert torch.equal(a * (1 - m), x * (1 - m))  # only the mask changes


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_loss_equals_kornia(alpha):
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 9, 11, generator=g)
    masks = (torch.rand(2, 1, 9, 11, generator=g) > 0.7).float()
    ref = kornia.losses.FocalLoss(alpha=alpha, gamma=2.0, reduction="none")(logits, masks[:, 0].long())
    # kornia's map holds the focal term in the target's channel and 0 elsewhere: summed over channels,
    # averaged over pixels, it is ours (kornia's own 'mean' also divides by the channel count)
    assert focal_loss(logits, masks, alpha=alpha) == pytest.approx(float(ref.sum(1).mean()), rel=1e-6)
