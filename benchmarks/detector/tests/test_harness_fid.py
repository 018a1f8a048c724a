"""FID/KID of the harness with a locally stored feature extractor (no download)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from benchmarks.detector import authenticity as auth


class _TinyFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float() / 255).mean((2, 3))


def test_fid_kid_with_local_extractor(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features.pt"
    torch.jit.script(_TinyFeatures()).save(str(path))
    extractor = auth.load_feature_extractor(path)
    g = np.random.default_rng(0)
    a, b = g.random((24, 32, 32, 3)), g.random((24, 32, 32, 3))
    dark = b * 0.3
    same = auth.fid_kid(extractor, a, b, size=64)
    far = auth.fid_kid(extractor, a, dark, size=64)
    assert all(math.isfinite(v) for v in (*same.values(), *far.values()))
    assert far["fid"] > same["fid"] and far["kid"] > same["kid"]


def test_state_dict_is_a_clear_error(tmp_path):
    import pytest

    path = tmp_path / "sd.pt"
    torch.save(_TinyFeatures().state_dict(), path)
    with pytest.raises(ValueError, match="not a TorchScript file"):
        auth.load_feature_extractor(path)
