"""Localisation and detection metrics on the real test set.

Pixel AUROC and AP come from scikit-learn over all test pixels pooled; image AUROC scores each image
by the maximum of its anomaly map. PRO (Bergmann et al. 2020, MVTec AD's protocol) is computed here,
exactly rather than on a threshold grid: every distinct score is a threshold; the curve of the mean
per-region overlap against the pixel false-positive rate is integrated up to FPR 0.3 (the last
segment interpolated linearly) and divided by 0.3. Regions are the 8-connected components of each
ground-truth mask; false positives are counted over all normal pixels of all test images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

METRICS = ("pixel_auroc", "pixel_ap", "pro", "image_auroc")
_EIGHT = np.ones((3, 3), dtype=bool)


def _stack(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    scores, labels = [], []
    for amap, mask in zip(maps, masks):
        amap = np.asarray(amap, dtype=np.float64)
        mask = np.zeros(amap.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
        if mask.shape != amap.shape:
            raise ValueError(f"map {amap.shape} and mask {mask.shape} differ in shape")
        scores.append(amap.ravel())
        labels.append(mask.ravel())
    return np.concatenate(scores), np.concatenate(labels)


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> float:
    scores, labels = _stack(maps, masks)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def pixel_ap(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> float:
    scores, labels = _stack(maps, masks)
    if not labels.any():
        return float("nan")
    return float(average_precision_score(labels, scores))


def image_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> float:
    labels = np.array([m is not None and bool(np.any(np.asarray(m) > 0)) for m in masks])
    if labels.all() or not labels.any():
        return float("nan")
    scores = np.array([float(np.max(m)) for m in maps])
    return float(roc_auc_score(labels, scores))


def pro_curve(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` at every distinct threshold, descending thresholds, starting at (0, 0)."""
    scores, weights_pos, weights_neg = [], [], []
    n_regions = 0
    per_image = []
    for amap, mask in zip(maps, masks):
        amap = np.asarray(amap, dtype=np.float64)
        mask = np.zeros(amap.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
        if mask.shape != amap.shape:
            raise ValueError(f"map {amap.shape} and mask {mask.shape} differ in shape")
        labels, count = ndimage.label(mask, structure=_EIGHT)
        per_image.append((amap, mask, labels, count))
        n_regions += count
    n_neg = sum(int((~m).sum()) for _, m, _, _ in per_image)
    if n_regions == 0 or n_neg == 0:
        return np.array([0.0]), np.array([0.0])
    for amap, mask, labels, count in per_image:
        scores.append(amap.ravel())
        wpos = np.zeros(amap.size)
        if count:
            sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
            flat = labels.ravel()
            wpos[flat > 0] = 1.0 / (sizes[flat[flat > 0]] * n_regions)
        weights_pos.append(wpos)
        weights_neg.append((~mask).ravel().astype(np.float64) / n_neg)
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="stable")
    s = s[order]
    pro = np.cumsum(np.concatenate(weights_pos)[order])
    fpr = np.cumsum(np.concatenate(weights_neg)[order])
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    return np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]


def pro_score(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve for FPR in ``[0, fpr_limit]``, divided by ``fpr_limit``."""
    fpr, pro = pro_curve(maps, masks)
    if len(fpr) == 1:
        return float("nan")
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    nxt = int(keep.sum())
    if nxt < len(fpr) and x[-1] < fpr_limit:
        x0, x1, y0, y1 = fpr[nxt - 1], fpr[nxt], pro[nxt - 1], pro[nxt]
        # a vertical step (x1 == x0) cannot occur here because x0 < fpr_limit < x1
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    return float(np.trapezoid(y, x) / fpr_limit)


def compute_all(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> dict[str, float]:
    """All four metrics, in percent as the paper reports them."""
    return {
        "pixel_auroc": 100 * pixel_auroc(maps, masks),
        "pixel_ap": 100 * pixel_ap(maps, masks),
        "pro": 100 * pro_score(maps, masks),
        "image_auroc": 100 * image_auroc(maps, masks),
    }
