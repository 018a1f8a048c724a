"""Metrics of the UNet benchmark harness: PRO against a hand-computed case and a brute-force sweep."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from benchmarks.detector.metrics import compute_all, image_auroc, pixel_ap, pixel_auroc, pro_curve, pro_score


def test_pro_hand_computed():
    # one 1x10 image: region A = pixels 0-1, region B = pixel 5, seven normal pixels
    mask = np.array([[1, 1, 0, 0, 0, 1, 0, 0, 0, 0]])
    score = np.array([[0.9, 0.3, 0.7, 0.2, 0.1, 0.8, 0.05, 0.04, 0.03, 0.02]])
    # thresholds: .9 -> PRO (1/2 + 0)/2 = .25, FPR 0; .8 -> .75, 0; .7 -> .75, 1/7; .3 -> 1, 1/7;
    # .2 -> 1, 2/7; .1 -> 1, 3/7 (past the 0.3 limit)
    # area to FPR 0.3: 0.75 * 1/7 + 1 * (0.3 - 1/7) = 0.2642857; normalised: / 0.3
    expected = (0.75 / 7 + (0.3 - 1 / 7)) / 0.3
    assert pro_score([score], [mask]) == pytest.approx(expected, abs=1e-12)
    fpr, pro = pro_curve([score], [mask])
    assert fpr[:4].tolist() == pytest.approx([0, 0, 0, 1 / 7])
    assert pro[:4].tolist() == pytest.approx([0, 0.25, 0.75, 0.75])


def test_pro_interpolates_at_the_limit():
    # one region of 1 pixel scored below two of four normal pixels: the curve reaches PRO 1 at FPR .5
    mask = np.array([[0, 0, 1, 0, 0]])
    score = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
    # (0,0) -> (.25,0) -> (.5,0) -> (.5,1): PRO is 0 up to FPR .3
    assert pro_score([score], [mask]) == pytest.approx(0.0)
    score = np.array([[0.9, 0.1, 0.8, 0.05, 0.0]])
    # (0,0) -> (.25,0) -> (.25,1): area to .3 = 1 * .05
    assert pro_score([score], [mask]) == pytest.approx(0.05 / 0.3)


def _brute_pro(maps, masks, limit=0.3, steps=4000):
    regions = []
    neg = []
    for a, m in zip(maps, masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(a, lab == i) for i in range(1, n + 1)]
        neg.append(a[~m.astype(bool)])
    neg = np.concatenate(neg)
    ths = np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]
    pts = [(0.0, 0.0)]
    for t in ths:
        fpr = (neg >= t).mean()
        pro = np.mean([(a[r] >= t).mean() for a, r in regions])
        pts.append((fpr, pro))
    x, y = np.array(pts).T
    grid = np.linspace(0, limit, steps)
    # step-free interpolation of a monotone curve (take the upper envelope at repeated x)
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    return np.trapezoid(np.interp(grid, x, y), grid) / limit


def test_pro_matches_threshold_sweep():
    g = np.random.default_rng(0)
    masks = []
    for _ in range(3):
        m = np.zeros((24, 24), bool)
        for _ in range(2):
            y, x = g.integers(0, 20, 2)
            m[y : y + g.integers(1, 5), x : x + g.integers(1, 5)] = True
        masks.append(m)
    maps = [np.round(g.random((24, 24)) + 0.7 * m, 3) for m in masks]
    assert pro_score(maps, masks) == pytest.approx(_brute_pro(maps, masks), abs=2e-3)


def test_pixel_and_image_metrics():
    g = np.random.default_rng(1)
    masks = [np.zeros((8, 8), bool), None, np.zeros((8, 8), bool)]
    masks[0][2:4, 2:4] = True
    masks[2][5:7, 1:3] = True
    maps = [g.random((8, 8)) + (m if m is not None else 0) * 0.5 for m in masks]
    labels = np.concatenate([(m if m is not None else np.zeros((8, 8), bool)).ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(labels, scores))
    assert 0 < pixel_ap(maps, masks) <= 1
    # image AUROC: max of each map; good image scored lowest -> 1.0
    maps2 = [np.full((8, 8), 0.9), np.full((8, 8), 0.1), np.full((8, 8), 0.8)]
    assert image_auroc(maps2, masks) == 1.0
    allm = compute_all(maps, masks)
    assert set(allm) == {"pixel_auroc", "pixel_ap", "pro", "image_auroc"}
    assert all(0 <= v <= 100 for v in allm.values())
    perfect = compute_all([m.astype(float) if m is not None else np.zeros((8, 8)) for m in masks], masks)
    assert perfect["pixel_auroc"] == pytest.approx(100) and perfect["pro"] == pytest.approx(100)
