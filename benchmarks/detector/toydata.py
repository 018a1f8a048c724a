"""Tiny synthetic MVTec-layout datasets and anomaly banks, for tests and a quick try of the harness."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def texture(g: np.random.Generator, size: int) -> np.ndarray:
    """A grey-green woven texture with random phase and noise, uint8 HxWx3."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    f = g.uniform(0.25, 0.35)
    base = 0.5 + 0.18 * np.sin(f * x + g.uniform(0, 6)) * np.sin(f * y + g.uniform(0, 6))
    base += g.normal(0, 0.03, (size, size))
    img = np.stack([base * 0.9, base, base * 0.8], axis=-1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _defect(g: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    if g.random() < 0.5:
        cv2.line(
            mask,
            tuple(int(v) for v in g.integers(4, w - 4, 2)),
            tuple(int(v) for v in g.integers(4, w - 4, 2)),
            255,
            int(g.integers(1, 3)),
        )
    else:
        c = tuple(int(v) for v in g.integers(w // 4, 3 * w // 4, 2))
        axes = tuple(int(v) for v in g.integers(2, max(3, w // 8), 2))
        cv2.ellipse(mask, c, axes, float(g.uniform(0, 180)), 0, 360, 255, -1)
    out = img.astype(np.float32)
    shade = g.uniform(-90, -50) if g.random() < 0.7 else g.uniform(50, 90)
    out[mask > 0] += shade
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr)


def make_mvtec(
    root: str | Path,
    n_train: int = 12,
    n_good: int = 4,
    n_defect: int = 6,
    size: int = 64,
    seed: int = 0,
    source_repo: str | None = None,
) -> Path:
    """``train/good``, ``test/good``, ``test/{dark,line}``, ``ground_truth/...`` under ``root``; with
    ``source_repo`` a ``sources.csv`` names where it came from (for the leakage guard)."""
    root = Path(root)
    g = np.random.default_rng(seed)
    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", texture(g, size))
    for i in range(n_good):
        _save(root / "test" / "good" / f"{i:03d}.png", texture(g, size))
    for i in range(n_defect):
        img, mask = _defect(g, texture(g, size))
        kind = "spot" if i % 2 else "mark"
        _save(root / "test" / kind / f"{i:03d}.png", img)
        _save(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    if source_repo:
        with (root / "sources.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "mask", "source_repo", "source_path"])
            w.writerow(["train/good/000.png", "", source_repo, "toy"])
    return root


def make_bank(
    root: str | Path,
    per_class: int = 6,
    size: int = 48,
    seed: int = 1,
    prefix: str | Sequence[str] = "synthbank",
    source_repo: str = "example/synthetic-defects",
) -> Path:
    """A bank ``<class>/<id>.png`` + ``<id>_mask.png`` with ``MANIFEST.csv`` (classes crack, stain); with
    several prefixes (source datasets) the entries of each class take them in turn."""
    prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    root = Path(root)
    g = np.random.default_rng(seed)
    rows = []
    for cls in ("crack", "stain"):
        for i in range(per_class):
            base = (np.clip(0.6 + g.normal(0, 0.05, (size, size)), 0, 1) * 255).astype(np.uint8)
            base = np.stack([base] * 3, -1)
            mask = np.zeros((size, size), np.uint8)
            if cls == "crack":
                pts = np.cumsum(g.integers(-3, 4, (8, 2)), 0) + size // 2
                cv2.polylines(mask, [np.clip(pts, 2, size - 3).astype(np.int32)], False, 255, 2)
            else:
                r = int(g.integers(size // 8, size // 3))
                cv2.circle(mask, (size // 2, size // 2), r, 255, -1)
            img = base.astype(np.float32)
            img[mask > 0] *= 0.35
            ident = f"{prefixes[i % len(prefixes)]}_{cls}_{i:04d}"
            _save(root / cls / f"{ident}.png", img.astype(np.uint8))
            _save(root / cls / f"{ident}_mask.png", mask)
            rows.append([ident, cls, source_repo, f"{cls}/{i}", "test data"])
    with (root / "MANIFEST.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "class", "source_repo", "source_path", "license_if_known"])
        w.writerows(rows)
    return root
