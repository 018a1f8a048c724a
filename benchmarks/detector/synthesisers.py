"""Pseudo-anomaly synthesisers behind one interface.

``Synthesiser.generate(images (B,3,H,W) float [0,1], keys (B,) int64, ids=None) -> (images, masks)``
with ``masks (B,1,H,W)`` in {0,1}; a sample whose mask comes out empty is a normal image, never an
anomaly. Every random decision is a pure function of the sample's key (``cai_aug.engine.rng``): a synthesiser
makes the same pseudo anomaly for the same ``(seed, image, anomaly index)`` whatever the batch.

The baselines are re-implemented from their papers (no code taken from their repositories):
- CutPaste (Li et al., CVPR 2021): a rectangle of 2-15 % of the image area and aspect ratio in
  [0.3, 3.3] (log-uniform) is cut from the same image, colour-jittered and pasted at a random place;
  the mask is the pasted rectangle.
- NSA (Schlüter et al., ECCV 2022), normal and mixed: a rectangle from another normal image of the
  same domain, rescaled, blended by Poisson image editing (OpenCV ``seamlessClone``, NORMAL_CLONE or
  MIXED_CLONE) at a random place; the mask is where the blend changed the image (grey difference
  > ``threshold`` inside the patch, 5x5 median filtered), as a binary label for segmentation.
- DRAEM (Zavrtanik et al., ICCV 2021): a thresholded, rotated Perlin-noise mask; the texture is an
  arbitrary image of an anomaly-source folder with three random augmentations;
  ``I' = (1 - M) I + (1 - b) M A + b M I`` with ``b ~ U(0, 0.8)``.
- CAI-N / CAI-M and their ablations come from the ``cai_aug`` engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cai_aug.engine import rng

# streams of the baselines (rng.Stream values are the engine's; these stay clear of them)
S_ATTEMPT_BULK = 101
S_SOURCE = 102


def _gen(key: int, stream: int) -> np.random.Generator:
    """A numpy generator that is a pure function of (key, stream), for bulk draws."""
    word = int(rng.bits(torch.tensor([key], dtype=torch.int64), stream, 1)[0, 0])
    return np.random.default_rng(word & ((1 << 63) - 1))


def _to_u8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def _from_u8(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)


class Synthesiser:
    """Base class: subclasses implement ``_one(image_u8 HxWx3, key, id) -> (image_u8, mask bool)``."""

    name = "base"
    min_pixels = 10
    attempts = 8

    def prepare(self, normals: torch.Tensor, image_keys: Sequence[str]) -> None:  # noqa: B027
        """Called once with every normal training image (resized) before generating."""

    def generate(
        self, images: torch.Tensor, keys: torch.Tensor, ids: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out_imgs, out_masks = [], []
        for b in range(images.shape[0]):
            img = _to_u8(images[b])
            key = int(keys[b])
            res_img, res_mask = img, np.zeros(img.shape[:2], dtype=bool)
            for attempt in range(self.attempts):
                sub = int(rng.derive(torch.tensor([key]), attempt)[0])
                cand_img, cand_mask = self._one(img, sub, None if ids is None else ids[b])
                if cand_mask.sum() >= self.min_pixels:
                    res_img, res_mask = cand_img, cand_mask
                    break
            # a failed sample is returned unchanged with an empty mask: a normal image
            out_imgs.append(_from_u8(res_img) if res_mask.any() else images[b].detach().cpu().float())
            out_masks.append(torch.from_numpy(res_mask.astype(np.float32))[None])
        return torch.stack(out_imgs).to(images.device), torch.stack(out_masks).to(images.device)

    def _one(self, img: np.ndarray, key: int, image_id: int | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ CutPaste


def _color_jitter(patch: np.ndarray, g: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    x = patch.astype(np.float32) / 255.0
    x = x * g.uniform(1 - strength, 1 + strength)  # brightness
    mean = x.mean()
    x = (x - mean) * g.uniform(1 - strength, 1 + strength) + mean  # contrast
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * g.uniform(1 - strength, 1 + strength) + grey  # saturation
    hsv = cv2.cvtColor(np.clip(x, 0, 1), cv2.COLOR_RGB2HSV)  # hue: H in degrees [0, 360)
    hsv[..., 0] = (hsv[..., 0] + g.uniform(-strength, strength) * 360.0) % 360.0
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)


class CutPaste(Synthesiser):
    name = "cutpaste"

    def __init__(self, area=(0.02, 0.15), aspect=(0.3, 3.3), jitter=0.1) -> None:
        self.area, self.aspect, self.jitter = area, aspect, jitter

    def _one(self, img, key, image_id):
        g = _gen(key, S_ATTEMPT_BULK)
        h, w = img.shape[:2]
        area = g.uniform(*self.area) * h * w
        ratio = math.exp(g.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
        ph = int(np.clip(round(math.sqrt(area / ratio)), 2, h - 1))
        pw = int(np.clip(round(math.sqrt(area * ratio)), 2, w - 1))
        sy, sx = g.integers(0, h - ph + 1), g.integers(0, w - pw + 1)
        dy, dx = g.integers(0, h - ph + 1), g.integers(0, w - pw + 1)
        patch = _color_jitter(img[sy : sy + ph, sx : sx + pw], g, self.jitter)
        out = img.copy()
        out[dy : dy + ph, dx : dx + pw] = patch
        mask = np.zeros((h, w), dtype=bool)
        mask[dy : dy + ph, dx : dx + pw] = True
        return out, mask


# ----------------------------------------------------------------------------------------------- NSA


def difference_mask(
    before: np.ndarray, after: np.ndarray, region: np.ndarray, threshold: float, median: int = 5
) -> np.ndarray:
    """Grey absolute difference ``> threshold`` (0-255 units) inside ``region``, median filtered."""
    diff = np.abs(after.astype(np.float32) - before.astype(np.float32)).mean(axis=2)
    mask = ((diff > threshold) & region).astype(np.uint8) * 255
    if median > 1:
        mask = cv2.medianBlur(mask, median)
    return (mask > 0) & region


class NSA(Synthesiser):
    """Natural Synthetic Anomalies: a patch of another normal image, Poisson-blended."""

    def __init__(self, mixed: bool = False, size=(0.1, 0.4), scale=(0.7, 1.3), threshold: float = 7.0):
        self.mixed = mixed
        self.name = "nsa-m" if mixed else "nsa-n"
        self.size, self.scale, self.threshold = size, scale, threshold
        self.pool: np.ndarray | None = None

    def prepare(self, normals, image_keys):
        self.pool = np.stack([_to_u8(x) for x in normals])

    def _one(self, img, key, image_id):
        if self.pool is None:
            raise RuntimeError("NSA.prepare(normals, keys) must be called before generate()")
        g = _gen(key, S_ATTEMPT_BULK)
        h, w = img.shape[:2]
        n = len(self.pool)
        src_idx = int(g.integers(0, n))
        if image_id is not None and n > 1 and src_idx == image_id:
            src_idx = (src_idx + 1 + int(g.integers(0, n - 1))) % n
        src = self.pool[src_idx]
        if src.shape != img.shape:
            src = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
        ph = max(3, int(round(g.uniform(*self.size) * h)))
        pw = max(3, int(round(g.uniform(*self.size) * w)))
        sy, sx = g.integers(0, h - ph + 1), g.integers(0, w - pw + 1)
        patch = src[sy : sy + ph, sx : sx + pw]
        s = g.uniform(*self.scale)
        th = int(np.clip(round(ph * s), 3, h - 4))
        tw = int(np.clip(round(pw * s), 3, w - 4))
        patch = cv2.resize(patch, (tw, th), interpolation=cv2.INTER_LINEAR)
        # keep a 2-px frame: seamlessClone needs the region inside the image
        dy, dx = int(g.integers(2, h - th - 1)), int(g.integers(2, w - tw - 1))
        canvas = img.copy()
        canvas[dy : dy + th, dx : dx + tw] = patch
        region = np.zeros((h, w), dtype=bool)
        region[dy : dy + th, dx : dx + tw] = True
        clone_mask = region.astype(np.uint8) * 255
        x, y, bw, bh = cv2.boundingRect(clone_mask)
        centre = (x + bw // 2, y + bh // 2)  # OpenCV places the mask's bbox at centre - size // 2
        flag = cv2.MIXED_CLONE if self.mixed else cv2.NORMAL_CLONE
        out = cv2.seamlessClone(canvas, img.copy(), clone_mask.copy(), centre, flag)  # OpenCV 5 writes the mask
        return out, difference_mask(img, out, region, self.threshold)


# --------------------------------------------------------------------------------------------- DRAEM


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], g: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise with ``res`` lattice cells per axis, values about in [-1, 1]."""
    h, w = shape
    angles = 2 * np.pi * g.random((res[0] + 1, res[1] + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.arange(h) * res[0] / h
    xs = np.arange(w) * res[1] / w
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]
    Y, X = np.meshgrid(yi, xi, indexing="ij")

    def dot(oy: int, ox: int) -> np.ndarray:
        gr = grads[Y + oy, X + ox]
        return gr[..., 0] * (yf - oy) + gr[..., 1] * (xf - ox)

    u, v = _fade(yf), _fade(xf)
    n0 = dot(0, 0) * (1 - v) + dot(0, 1) * v
    n1 = dot(1, 0) * (1 - v) + dot(1, 1) * v
    return math.sqrt(2) * (n0 * (1 - u) + n1 * u)


def _augment(img: np.ndarray, g: np.random.Generator, count: int = 3) -> np.ndarray:
    """Three of DRAEM's ten source augmentations, chosen at random."""
    x = img.astype(np.float32)

    def gamma(a):
        return 255.0 * (a / 255.0) ** g.uniform(0.5, 2.0)

    def brightness(a):
        return a * g.uniform(0.8, 1.2) + g.uniform(-30, 30)

    def sharpen(a):
        blur = cv2.GaussianBlur(a, (0, 0), 1.0)
        return a + g.uniform(0.5, 1.5) * (a - blur)

    def hue_sat(a):
        hsv = cv2.cvtColor(np.clip(a / 255.0, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + g.uniform(-50, 50)) % 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] * g.uniform(0.7, 1.3), 0, 1)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0

    def solarize(a):
        t = g.uniform(32, 128)
        return np.where(a >= t, 255.0 - a, a)

    def posterize(a):
        bits = int(g.integers(4, 9))
        step = 2 ** (8 - bits)
        return np.floor(np.clip(a, 0, 255) / step) * step

    def invert(a):
        return 255.0 - a

    def autocontrast(a):
        lo, hi = a.min(axis=(0, 1)), a.max(axis=(0, 1))
        return (a - lo) * 255.0 / np.maximum(hi - lo, 1.0)

    def equalize(a):
        u8 = np.clip(a, 0, 255).astype(np.uint8)
        return np.stack([cv2.equalizeHist(np.ascontiguousarray(u8[..., c])) for c in range(3)], -1).astype(np.float32)

    def rotate(a):
        h, w = a.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), g.uniform(-45, 45), 1.0)
        return cv2.warpAffine(a, m, (w, h), borderMode=cv2.BORDER_REFLECT)

    ops: list[Callable[[np.ndarray], np.ndarray]] = [
        gamma,
        brightness,
        sharpen,
        hue_sat,
        solarize,
        posterize,
        invert,
        autocontrast,
        equalize,
        rotate,
    ]
    for i in g.choice(len(ops), size=count, replace=False):
        x = np.clip(ops[int(i)](x), 0, 255).astype(np.float32)
    return x


class DRAEM(Synthesiser):
    """Perlin-noise masks filled with an augmented texture from an anomaly-source folder."""

    name = "draem"

    def __init__(
        self,
        source_images: Sequence[str | Path],
        beta=(0.0, 0.8),
        threshold: float = 0.5,
        max_scale_exp: int = 6,
    ) -> None:
        if not source_images:
            raise ValueError("DRAEM needs at least one anomaly-source image (--draem-source)")
        self.sources = [Path(p) for p in source_images]
        self.beta, self.threshold, self.max_scale_exp = beta, threshold, max_scale_exp
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def _source(self, idx: int, h: int, w: int) -> np.ndarray:
        k = (idx, h, w)
        if k not in self._cache:
            from PIL import Image

            with Image.open(self.sources[idx]) as im:
                im = im.convert("RGB").resize((w, h), Image.BILINEAR)
                self._cache[k] = np.asarray(im).copy()
        return self._cache[k]

    def perlin_mask(self, h: int, w: int, g: np.random.Generator) -> np.ndarray:
        res = (2 ** int(g.integers(0, self.max_scale_exp)), 2 ** int(g.integers(0, self.max_scale_exp)))
        noise = perlin_noise((h, w), res, g).astype(np.float32)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), g.uniform(-90, 90), 1.0)
        noise = cv2.warpAffine(noise, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        return noise > self.threshold

    def _one(self, img, key, image_id):
        g = _gen(key, S_ATTEMPT_BULK)
        h, w = img.shape[:2]
        mask = self.perlin_mask(h, w, g)
        src = _augment(self._source(int(g.integers(0, len(self.sources))), h, w), g)
        beta = g.uniform(*self.beta)
        m = mask[..., None].astype(np.float32)
        x = img.astype(np.float32)
        out = (1 - m) * x + (1 - beta) * m * src + beta * m * x
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


# ----------------------------------------------------------------------------------------------- CAI


class CAISynth(Synthesiser):
    """CAI from the engine; ``switches`` are the ablation flags (use_poisson, use_stm, use_ils);
    ``anomalies`` per image, ``paste_weight``, ``mask_rule`` and ``preset`` are the engine's options of those
    names."""

    def __init__(
        self,
        name: str,
        bank_dir: str | Path,
        mode: str = "normal",
        quotas=(4, 3, 3),
        classes: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        seed: int = 0,
        device: str | None = None,
        foreground: str = "auto",
        preset: str = "default",
        anomalies: int = 1,
        paste_weight: float = 0.0,
        mask_rule: str | None = None,
        **switches: bool,
    ) -> None:
        from cai_aug import CAI, AnomalyBank

        self.name = name
        bank = AnomalyBank.from_folder(
            bank_dir, classes=list(classes) if classes else None, exclude=list(exclude) if exclude else None
        )
        off = {k: v for k, v in switches.items() if v is False}  # pass only the switches turned off
        if mask_rule is not None:  # None: the engine's default
            off["mask_rule"] = mask_rule
        try:
            self.cai = CAI(
                bank,
                preset=preset,
                mode=mode,
                quotas=tuple(quotas),
                anomalies=anomalies,
                paste_weight=paste_weight,
                foreground=foreground,
                seed=seed,
                device=device,
                **off,
            )
        except TypeError as exc:
            if off:
                raise RuntimeError(f"the installed cai_aug CAI does not accept {sorted(off)}: {exc}") from exc
            raise

    def generate(self, images, keys, ids=None):
        res = self.cai(images, keys=keys.to(torch.int64))
        masks = (res.masks > 0).float()
        # a sample the engine labels normal must not carry a mask
        if res.labels is not None:
            masks = masks * res.labels.reshape(-1, 1, 1, 1).to(masks.dtype).to(masks.device)
        return res.images.clamp(0, 1).to(images.device), masks.to(images.device)


class LibraryCAI(CAISynth):
    """``CAI(bank)`` with the library's defaults (the bank's ``exclude`` sources left out), ``options`` on top."""

    def __init__(
        self,
        bank_dir: str | Path,
        exclude: Sequence[str] | None = None,
        seed: int = 0,
        device: str | None = None,
        foreground: str = "auto",
        **options: Any,
    ) -> None:
        from cai_aug import CAI, AnomalyBank

        self.name = "cai-default"
        bank = AnomalyBank.from_folder(bank_dir, exclude=list(exclude) if exclude else None)
        self.cai = CAI(bank, seed=seed, device=device, foreground=foreground, **options)


class CDMSynth(Synthesiser):
    """Pseudo anomalies of the CAI-guided diffusion mechanism (``cai_aug.cdm.CDMSampler``)."""

    name = "cdm"

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def generate(self, images, keys, ids=None):
        out_images, out_masks, labels = self.sampler(images, masks=None, keys=keys)
        masks = (out_masks > 0).float() * labels.reshape(-1, 1, 1, 1).float().to(out_masks.device)
        return out_images.clamp(0, 1).to(images.device), masks.to(images.device)
