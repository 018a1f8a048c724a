"""Authenticity of pseudo anomalies without pretrained weights (and FID/KID with local weights).

- ``detectability``: a small CNN, trained with a fixed budget and seed, tells crops around pseudo
  anomalies from crops around real anomalies of the same domain; its out-of-fold AUROC over a
  stratified k-fold split is the score (0.5 = indistinguishable; lower is more authentic).
- ``seam_ratio``: mean gradient magnitude on the border of the anomaly region (the pixels at
  chessboard distance 1 on either side of the mask edge) divided by the mean of the gradient
  magnitudes in the rings at distance 3-4 just inside and just outside it. Pasting leaves a step at
  the border (ratio well above 1); seamless blending leaves the border like its surroundings.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from torch import nn


def _hwc(img: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
        if img.ndim == 3 and img.shape[0] in (1, 3):
            img = np.transpose(img, (1, 2, 0))
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img


def _mask2d(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    while mask.ndim > 2:
        mask = mask[0]
    return mask > 0


def anomaly_crop(img, mask, size: int = 32, context: float = 0.5, min_side: int = 8) -> np.ndarray | None:
    """Square crop around the mask's bbox, each side grown by ``context`` x its longer side, resized
    to ``size`` (HWC float); None for an empty mask."""
    img, mask = _hwc(img), _mask2d(mask)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    h, w = mask.shape
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    side = int(np.clip(round(side * (1 + 2 * context)), min_side, max(h, w)))
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    pad = side
    padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    crop = padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def crops(images: Sequence, masks: Sequence, size: int = 32, context: float = 0.5) -> np.ndarray:
    out = [anomaly_crop(i, m, size, context) for i, m in zip(images, masks)]
    out = [c for c in out if c is not None]
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 1),
        )

    def forward(self, x):
        return self.net(x)[:, 0]


@contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch CPU threads, then restore (small models on a shared box: 1 is fastest)."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def detectability(
    real: np.ndarray,
    pseudo: np.ndarray,
    k: int = 5,
    epochs: int = 30,
    seed: int = 0,
    balance: bool = True,
    threads: int = 1,
) -> float:
    """Out-of-fold AUROC of a small CNN telling ``pseudo`` (label 1) from ``real`` (label 0) crops
    (``(N,S,S,3)`` float in [0,1]). With ``balance`` the larger set is subsampled (seeded) to the
    size of the smaller. NaN when either set has fewer than ``k`` crops."""
    g = np.random.default_rng(seed)
    if balance:
        n = min(len(real), len(pseudo))
        real = real[np.sort(g.permutation(len(real))[:n])]
        pseudo = pseudo[np.sort(g.permutation(len(pseudo))[:n])]
    if min(len(real), len(pseudo)) < k:
        return float("nan")
    with torch_threads(threads):
        return _fit_score(real, pseudo, k, epochs, seed)


def _fit_score(real: np.ndarray, pseudo: np.ndarray, k: int, epochs: int, seed: int) -> float:
    x = torch.from_numpy(np.concatenate([real, pseudo]).astype(np.float32)).permute(0, 3, 1, 2)
    y = np.r_[np.zeros(len(real)), np.ones(len(pseudo))]
    scores = np.zeros(len(y))
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y)):
        torch.manual_seed(seed * 1000 + fold)
        model = _SmallCNN()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        xt, yt = x[tr], torch.from_numpy(y[tr]).float()
        gen = torch.Generator().manual_seed(seed * 1000 + fold)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(tr), generator=gen)
            for i in range(0, len(tr), 32):
                idx = order[i : i + 32]
                xb = xt[idx]
                flip = torch.rand(len(idx), generator=gen) < 0.5  # flips: a discriminator of content
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                loss = nn.functional.binary_cross_entropy_with_logits(model(xb), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            scores[te] = model(x[te]).numpy()
    return float(roc_auc_score(y, scores))


def _grad_mag(img: np.ndarray) -> np.ndarray:
    grey = _hwc(img).mean(axis=2)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def seam_ratio_one(img, mask, eps: float = 1e-6) -> float:
    """Border gradient / mean of inner and outer ring gradients; NaN when the rings are empty."""
    mask = _mask2d(mask)
    if not mask.any() or mask.all():
        return float("nan")
    mag = _grad_mag(img)
    d_in = ndimage.distance_transform_cdt(mask, metric="chessboard")
    d_out = ndimage.distance_transform_cdt(~mask, metric="chessboard")
    border = (d_in == 1) | (d_out == 1)
    inner = (d_in >= 3) & (d_in <= 4)
    outer = (d_out >= 3) & (d_out <= 4)
    rings = [mag[r].mean() for r in (inner, outer) if r.any()]
    if not rings or not border.any():
        return float("nan")
    return float(mag[border].mean() / (np.mean(rings) + eps))


def seam_ratio(images: Sequence, masks: Sequence) -> float:
    """Median of the per-sample seam ratios (NaN when none can be computed)."""
    vals = [seam_ratio_one(i, m) for i, m in zip(images, masks)]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


# ----------------------------------------------------------------------------- FID / KID (local weights)


def load_feature_extractor(path: str | Path) -> nn.Module:
    """A feature extractor from a local TorchScript file (``torch.jit.save``) mapping ``(B,3,H,W)``
    uint8 images to ``(B,D)`` features, e.g. torch-fidelity's Inception-v3 ``FeatureExtractorInceptionV3``
    scripted with its weights. A pickled module is refused: unpickling runs arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--fid-weights {path}: no such file (FID needs locally stored Inception weights)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - anything but TorchScript is refused, never unpickled
        raise ValueError(
            f"--fid-weights {path}: not a TorchScript file ({type(exc).__name__}); save the feature extractor "
            "with torch.jit.save(torch.jit.script(model)) - pickled modules are never loaded"
        ) from exc


class _Wrapped(nn.Module):
    def __init__(self, net: nn.Module, dim: int) -> None:
        super().__init__()
        self.net, self.num_features = net, dim

    def forward(self, x):
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1).float()


def fid_kid(extractor: nn.Module, real: np.ndarray, pseudo: np.ndarray, size: int = 299) -> dict[str, float]:
    """FID and KID (torchmetrics) between real and pseudo crops ``(N,S,S,3)`` in [0,1]."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    def prep(a):
        t = torch.from_numpy((np.clip(a, 0, 1) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)
        return nn.functional.interpolate(t.float(), size=(size, size), mode="bilinear").round().to(torch.uint8)

    r, p = prep(real), prep(pseudo)
    with torch.no_grad():
        dim = _Wrapped(extractor, 0)(r[:2]).shape[1]
    feat = _Wrapped(extractor, dim)
    fid = FrechetInceptionDistance(feature=feat, normalize=False)
    subset = max(2, min(len(r), len(p), 50))
    kid = KernelInceptionDistance(feature=feat, subset_size=subset, normalize=False)
    for metric in (fid, kid):
        metric.update(r, real=True)
        metric.update(p, real=False)
    kid_mean, _ = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean)}
