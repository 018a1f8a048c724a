"""A small built-in default: target images and an anomaly bank that the package draws itself.

Nothing is downloaded: targets are procedural objects on plain backgrounds and textures; the bank holds
synthetic defects (cracks, scratches, stains, holes, pits) on their own background surfaces, so a new
user can run the whole method with one command (``cai-aug demo``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cai_aug.io.images import write_image, write_mask

DEMO_CLASSES = ("crack", "scratch", "stain", "hole", "pits")


def _smooth_noise(rng: np.random.Generator, size: int, scale: int, channels: int = 1) -> torch.Tensor:
    """Band-limited noise ``(channels, size, size)`` in about [-1, 1]."""
    coarse = torch.from_numpy(rng.standard_normal((1, channels, max(2, size // scale), max(2, size // scale))))
    return F.interpolate(coarse.float(), size=(size, size), mode="bicubic", align_corners=False)[0].clamp(-2, 2) / 2


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.linspace(-1, 1, size)
    return torch.meshgrid(axis, axis, indexing="ij")


def demo_images(n: int = 8, size: int = 256, seed: int = 0) -> torch.Tensor:
    """Normal target images ``(n, 3, size, size)`` float in [0, 1]: objects on plain backgrounds
    (even indices) and textures (odd indices)."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size)
    images = []
    for index in range(n):
        colour = torch.from_numpy(rng.uniform(0.35, 0.85, size=3)).float()[:, None, None]
        if index % 2 == 0:
            # A round or square part, lit from the top left, on a plain dark background.
            cy, cx = rng.uniform(-0.15, 0.15, size=2)
            radius = rng.uniform(0.45, 0.7)
            if rng.random() < 0.5:
                inside = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() < radius
            else:
                inside = torch.maximum((yy - cy).abs(), (xx - cx).abs()) < radius * 0.85
            shade = 0.85 + 0.15 * (-(yy - cy) - (xx - cx)).clamp(-1, 1)
            texture = 0.04 * _smooth_noise(rng, size, 16)
            part = (colour * shade + texture).clamp(0, 1)
            background = torch.full((3, size, size), float(rng.uniform(0.03, 0.12)))
            image = torch.where(inside, part, background)
        else:
            # A fabric- or metal-like texture.
            coarse = _smooth_noise(rng, size, 32, 1)
            fine = _smooth_noise(rng, size, 4, 1)
            stripes = 0.05 * torch.sin(xx * rng.uniform(20, 60) + yy * rng.uniform(-5, 5))
            image = (colour + 0.12 * coarse + 0.06 * fine + stripes).clamp(0, 1)
        images.append(image)
    return torch.stack(images).float()


def _defect(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic source anomaly on its own surface: ``(size, size, 3)`` uint8, ``(size, size)`` bool."""
    yy, xx = _grid(size)
    surface = torch.from_numpy(rng.uniform(0.4, 0.7, size=3)).float()[:, None, None]
    surface = (surface + 0.08 * _smooth_noise(rng, size, 8, 1)).clamp(0, 1)
    if kind in ("crack", "scratch"):
        # A random walk thickened into a line: dark for cracks, bright for scratches.
        points = [rng.uniform(-0.6, -0.3, size=2)]
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(40):
            heading += rng.normal(0, 0.35 if kind == "crack" else 0.05)
            points.append(points[-1] + 0.03 * np.array([math.sin(heading), math.cos(heading)]))
        points = np.clip(np.array(points), -0.9, 0.9)
        start = torch.from_numpy(points[:-1]).float()[:, :, None, None]  # (S, 2, 1, 1)
        delta = torch.from_numpy(points[1:] - points[:-1]).float()[:, :, None, None]
        offset_y, offset_x = yy[None] - start[:, 0], xx[None] - start[:, 1]  # (S, size, size)
        length = (delta**2).sum(dim=1).clamp(min=1e-9)
        t = ((offset_y * delta[:, 0] + offset_x * delta[:, 1]) / length).clamp(0, 1)
        distance = ((offset_y - t * delta[:, 0]) ** 2 + (offset_x - t * delta[:, 1]) ** 2).sqrt().amin(dim=0)
        width = (0.025 if kind == "crack" else 0.012) * (1 + 0.5 * rng.random())
        mask = distance < width
        profile = (1 - distance / width).clamp(0, 1)
        tone = -0.45 if kind == "crack" else 0.35
        image = surface + tone * profile
    elif kind == "stain":
        radius = rng.uniform(0.25, 0.7) * (1 + 0.25 * _smooth_noise(rng, size, 24, 1)[0])
        distance = (yy**2 / rng.uniform(0.5, 1.5) + xx**2).sqrt()
        mask = distance < radius
        tint = torch.from_numpy(rng.uniform(-0.35, 0.1, size=3)).float()[:, None, None]
        image = surface + tint * (1 - distance / radius).clamp(0, 1).pow(0.3) * mask
    elif kind == "hole":
        radius = rng.uniform(0.15, 0.5)
        distance = (yy**2 + xx**2).sqrt()
        mask = distance < radius * 1.15
        image = torch.where(distance < radius, surface * 0.1, surface + 0.25 * (distance < radius * 1.15))
    else:  # pits: a cluster of small dark dots
        mask = torch.zeros(size, size, dtype=torch.bool)
        image = surface.clone()
        for _ in range(int(rng.integers(3, 9))):
            cy, cx = rng.uniform(-0.5, 0.5, size=2)
            r = rng.uniform(0.04, 0.12)
            dot = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() < r
            mask |= dot
            image = torch.where(dot, image * 0.3, image)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array, mask.numpy()


def write_demo_bank(path: str | Path, per_class: int = 6, seed: int = 0) -> Path:
    """Write a small bank of synthetic defects (classes :data:`DEMO_CLASSES`) to ``path``; returns it."""
    root = Path(path)
    rng = np.random.default_rng(seed)
    rows = ["id,class,source_repo,source_path,license_if_known"]
    for kind in DEMO_CLASSES:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            size = int(rng.choice([64, 128, 224, 320]))
            image, mask = _defect(kind, rng, size)
            source_id = f"demo_{kind}_{index:02d}"
            write_image(folder / f"{source_id}.png", image)
            write_mask(folder / f"{source_id}_mask.png", mask)
            rows.append(f"{source_id},{kind},cai_aug/demo,generated,CC0")
    (root / "MANIFEST.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def write_demo_normals(path: str | Path, n: int = 8, size: int = 256, seed: int = 0) -> Path:
    """Write :func:`demo_images` as ``path/<index>.png``; returns ``path``."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(demo_images(n, size, seed)):
        write_image(root / f"normal_{index:03d}.png", image)
    return root
