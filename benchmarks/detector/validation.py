"""Choosing nothing on the test set: pseudo-anomaly validation splits and selection quality.

A share of the normal training images is held out of training. Pseudo anomalies are made on them
from bank sources that training never sees (the bank split by source dataset,
``cai_aug.frontends.validation.split_sources``): once with the library's CAI defaults (split ``val``),
once with DRAEM's Perlin-noise generator (split ``val-perlin``), so that a selection that favoured
CAI-trained detectors by construction would show as a difference between the two. Each synthesiser's
detector is evaluated on both splits every epoch; the epoch with the best pseudo-validation pixel AP
is "selected", and the threshold maximising pixel F1 on the split at that epoch is reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import precision_recall_curve

VAL_SEED = 7919  # the validation pseudo anomalies are the same whatever the training seed
#: Engine options of the CAI-made split on top of the library's defaults: the defaults it was first made
#: with, so that the split stays the same measuring instrument when a default changes (runs made before
#: and after select on the same images).
VAL_OPTIONS = {"overlap": "apart"}
KINDS = ("val", "val-perlin")  # row kinds of the two selections, beside "last" and "best" (the oracle)


def holdout(keys: Sequence[str], fraction: float) -> list[int]:
    """Indices of the normal images held out for validation: the ``round(fraction * n)`` (at least one,
    and at most ``n - 2``) whose SHA-1 of the key is smallest, so the split depends on the image names
    only (the same for every synthesiser and seed). Empty when ``fraction`` is 0."""
    n = len(keys)
    if fraction <= 0:
        return []
    if not fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")
    k = min(max(1, round(fraction * n)), n - 2)
    if k < 1:
        return []
    order = sorted(range(n), key=lambda i: hashlib.sha1(keys[i].encode()).hexdigest())
    return sorted(order[:k])


def f1_threshold(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> tuple[float, float]:
    """``(threshold, F1)``: the score threshold with the highest pixel F1 (a pixel is anomalous when its
    score is ``>= threshold``), over all pixels of ``maps`` pooled; ``(nan, nan)`` without a positive."""
    scores = np.concatenate([np.asarray(m, np.float64).ravel() for m in maps])
    labels = np.concatenate(
        [(np.zeros(np.shape(a), bool) if m is None else np.asarray(m) > 0).ravel() for a, m in zip(maps, masks)]
    )
    if not labels.any():
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    p, r = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def pixel_f1(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], threshold: float) -> float:
    """Pixel F1 of ``map >= threshold`` against the masks, all pixels pooled (nan without a positive)."""
    tp = fp = fn = 0
    for amap, mask in zip(maps, masks):
        pred = np.asarray(amap, np.float64) >= threshold
        truth = np.zeros(pred.shape, bool) if mask is None else np.asarray(mask) > 0
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
    if tp + fn == 0:
        return float("nan")
    return 2 * tp / max(2 * tp + fp + fn, 1)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of the finite pairs (nan with fewer than 3 or a constant side)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


@dataclass
class Selection:
    """One epoch chosen on a validation split: the test maps and the split's maps at that epoch."""

    epoch: int
    score: float
    maps: np.ndarray  # (N,H,W) test maps at the working resolution
    val_maps: np.ndarray  # (M,H,W) validation maps


def selection_quality(history: Sequence[dict], split: str, epoch: int) -> dict[str, float]:
    """From a training history (rows with ``low_pixel_ap`` and ``<split>_pixel_ap`` per evaluated epoch):
    the Spearman correlation of pseudo-validation and test pixel AP across the evaluated epochs, and the
    test AP (working resolution) lost against the oracle epoch by selecting ``epoch``."""
    rows = [r for r in history if f"{split}_pixel_ap" in r and "low_pixel_ap" in r]
    val = [r[f"{split}_pixel_ap"] for r in rows]
    test = [r["low_pixel_ap"] for r in rows]
    chosen = next((r["low_pixel_ap"] for r in rows if r["epoch"] == epoch), float("nan"))
    return {
        "sel_spearman": spearman(val, test),
        "ap_lost": float(np.nanmax(test) - chosen) if rows else float("nan"),
        "n_evaluated": len(rows),
    }
