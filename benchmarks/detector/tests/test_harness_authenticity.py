"""Authenticity statistics of the harness on cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.detector import authenticity as auth
from benchmarks.detector.toydata import texture


def _square_mask(size, g):
    m = np.zeros((size, size), bool)
    s = int(g.integers(size // 5, size // 3))
    y, x = g.integers(4, size - s - 4, 2)
    m[y : y + s, x : x + s] = True
    return m


def _pasted(g, size=64):
    """A flat grey square pasted on a texture (a crude, seamed pseudo anomaly)."""
    img = texture(g, size).astype(np.float32) / 255
    m = _square_mask(size, g)
    img[m] = g.uniform(0.1, 0.3)
    return img, m


def _untouched(g, size=64):
    img = texture(g, size).astype(np.float32) / 255
    return img, _square_mask(size, g)


def test_seam_ratio_pasted_squares_vs_untouched():
    g = np.random.default_rng(0)
    pasted = [_pasted(g) for _ in range(20)]
    plain = [_untouched(g) for _ in range(20)]
    r_pasted = auth.seam_ratio([i for i, _ in pasted], [m for _, m in pasted])
    r_plain = auth.seam_ratio([i for i, _ in plain], [m for _, m in plain])
    assert r_pasted > 2.0
    assert 0.75 < r_plain < 1.3


def test_seam_ratio_edge_cases():
    img = np.zeros((16, 16, 3), np.float32)
    assert math.isnan(auth.seam_ratio_one(img, np.zeros((16, 16), bool)))
    assert math.isnan(auth.seam_ratio([], []))


def test_detectability_same_distribution_is_chance():
    g = np.random.default_rng(1)
    a = [_untouched(g) for _ in range(40)]
    b = [_untouched(g) for _ in range(40)]
    ca = auth.crops([i for i, _ in a], [m for _, m in a])
    cb = auth.crops([i for i, _ in b], [m for _, m in b])
    d = auth.detectability(ca, cb, k=4, epochs=10, seed=0)
    assert 0.25 < d < 0.75


def test_detectability_pasted_squares_are_found():
    g = np.random.default_rng(2)
    real = [_untouched(g) for _ in range(40)]
    fake = [_pasted(g) for _ in range(40)]
    cr = auth.crops([i for i, _ in real], [m for _, m in real])
    cf = auth.crops([i for i, _ in fake], [m for _, m in fake])
    assert auth.detectability(cr, cf, k=4, epochs=10, seed=0) > 0.9


def test_crop_geometry():
    img = np.zeros((64, 64, 3), np.float32)
    m = np.zeros((64, 64), bool)
    m[60:64, 0:4] = True  # at the corner: reflected padding keeps the crop square
    c = auth.anomaly_crop(img, m, size=16)
    assert c.shape == (16, 16, 3)
    assert auth.anomaly_crop(img, np.zeros((64, 64), bool)) is None


def test_fid_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="fid-weights"):
        auth.load_feature_extractor(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        auth.load_feature_extractor(bad)
