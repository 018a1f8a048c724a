"""``python -m benchmarks.masks``: the shares it reports, on a hand-made result."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from benchmarks.masks.__main__ import measure


def test_visible_change_outside_the_mask_and_unchanged_mask_pixels():
    images = torch.zeros(1, 3, 10, 10)
    out = images.clone()
    out[:, :, 0:4, 0:4] = 0.5  # 16 clearly visible pixels
    masks = torch.zeros(1, 1, 10, 10)
    masks[:, :, 0:4, 0:2] = 1  # covers 8 of them
    masks[:, :, 8:10, 8:10] = 1  # and 4 unchanged pixels

    def fake_cai(batch, keys):
        return SimpleNamespace(images=out, masks=masks, labels=torch.ones(1))

    row = measure(fake_cai, images, ["a.png"], seed=0, visible=24, unchanged=2)
    assert row["outside"] == pytest.approx(8 / 16) and row["unchanged"] == pytest.approx(4 / 12)
    assert row["mask_share"] == pytest.approx(12 / 100) and row["visible_px"] == 16
