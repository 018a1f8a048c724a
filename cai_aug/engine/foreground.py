"""Foreground estimation ``yn = m(In)``: where on the target an anomaly may go.

Modes: ``"none"`` (all ones, for textures), ``"auto"`` (an embedded border-colour background model,
falling back to all ones when unsure), ``"rembg"`` (rembg matting with a local model, loaded as a plugin
so that the engine never imports rembg), or any callable ``(B, C, H, W) -> (B, 1, H, W)``.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ForegroundFn = Callable[[torch.Tensor], torch.Tensor]


def all_foreground(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 1, H, W)`` bool, all True."""
    return torch.ones_like(images[:, :1], dtype=torch.bool)


def box_count(mask: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Number of set pixels of ``(B, 1, H, W)`` in the window ``[i - before, i + after]`` of each pixel
    (both axes; zero padded), by running sums: O(1) per pixel whatever the window size (CPU pooling
    with stride 1 is O(k) per pixel and slow)."""
    counts = mask.float()
    for dim in (-1, -2):
        size = counts.shape[dim]
        pad = [0, 0, 0, 0]
        pad[0 if dim == -1 else 2] = before + 1
        pad[1 if dim == -1 else 3] = after
        running = F.pad(counts, pad).cumsum(dim=dim)
        counts = running.narrow(dim, before + after + 1, size) - running.narrow(dim, 0, size)
    return counts


def dilate(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary dilation of ``(B, 1, H, W)`` bool by a ``size x size`` square (even sizes allowed)."""
    if size <= 1:
        return mask
    return box_count(mask, (size - 1) // 2, size // 2) > 0.5


def erode(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary erosion of ``(B, 1, H, W)`` bool by a ``size x size`` square; outside counts as set."""
    return ~dilate(~mask, size)


def close(mask: torch.Tensor, size: int) -> torch.Tensor:
    return erode(dilate(mask, size), size)


def open_(mask: torch.Tensor, size: int) -> torch.Tensor:
    return dilate(erode(mask, size), size)


def border_background(
    images: torch.Tensor,
    *,
    border: int | None = None,
    min_contrast: float = 0.1,
    max_border_spread: float = 0.08,
    min_fraction: float = 0.02,
    max_fraction: float = 0.97,
) -> torch.Tensor:
    """Estimate the foreground of objects on plain backgrounds, batched.

    The background colour is the median of a frame of border pixels; pixels further from it than a
    threshold (robust spread of the frame, at least ``min_contrast``) are foreground, cleaned by an
    opening and a closing. A sample falls back to all ones when unsure: a busy border (a texture), or a
    foreground fraction outside ``[min_fraction, max_fraction]``.

    Args:
        images: ``(B, C, H, W)`` float in [0, 1].
    Returns:
        ``(B, 1, H, W)`` bool.
    """
    batch, channels, height, width = images.shape
    border = border or max(2, min(height, width) // 32)
    frame = torch.ones(height, width, dtype=torch.bool, device=images.device)
    frame[border:-border, border:-border] = False
    pixels = images[:, :, frame]  # (B, C, P)
    colour = pixels.median(dim=2).values  # (B, C)
    frame_distance = (pixels - colour[..., None]).square().sum(dim=1).sqrt()  # (B, P)
    spread = 1.4826 * frame_distance.median(dim=1).values
    threshold = torch.maximum(4 * spread, torch.full_like(spread, min_contrast))
    distance = (images - colour[..., None, None]).square().sum(dim=1, keepdim=True).sqrt()
    foreground = distance > threshold[:, None, None, None]
    size = max(3, min(height, width) // 64)
    foreground = close(open_(foreground, size), 2 * size + 1)
    fraction = foreground.float().mean(dim=(1, 2, 3))
    unsure = (spread > max_border_spread) | (fraction < min_fraction) | (fraction > max_fraction)
    return foreground | unsure[:, None, None, None]


def resolve(foreground: str | ForegroundFn) -> ForegroundFn:
    """Turn a foreground mode into a callable ``(B, C, H, W) -> (B, 1, H, W)`` bool."""
    if callable(foreground):
        return foreground
    if foreground == "none":
        return all_foreground
    if foreground == "auto":
        return border_background
    if foreground == "rembg":
        # A plugin outside the engine layer: rembg is optional and heavy.
        return importlib.import_module("cai_aug.frontends.rembg").RembgForeground()
    raise ValueError(f"foreground must be 'auto', 'none', 'rembg' or a callable, got {foreground!r}")


class ForegroundCache:
    """Foregrounds computed once per target image id (bool, kept on the CPU, least recently used out)."""

    def __init__(self, estimator: ForegroundFn, max_items: int = 2048) -> None:
        self.estimator = estimator
        self.max_items = max_items
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, images: torch.Tensor, image_ids: Sequence[str] | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 1, H, W)`` bool; with ids, cached entries are reused."""
        if image_ids is None:
            return self._estimate(images)
        if len(image_ids) != images.shape[0]:
            raise ValueError(f"image_ids has {len(image_ids)} entries for a batch of {images.shape[0]}")
        missing = [i for i, key in enumerate(image_ids) if self._key(key, images) not in self._items]
        if missing:
            fresh = self._estimate(images[missing]).cpu()
            for i, mask in zip(missing, fresh):
                self._items[self._key(image_ids[i], images)] = mask
                if len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        masks = []
        for key in image_ids:
            cache_key = self._key(key, images)
            self._items.move_to_end(cache_key)
            masks.append(self._items[cache_key])
        return torch.stack(masks).to(images.device)

    @staticmethod
    def _key(image_id: str, images: torch.Tensor) -> str:
        return f"{image_id}@{images.shape[-2]}x{images.shape[-1]}"

    def _estimate(self, images: torch.Tensor) -> torch.Tensor:
        masks = self.estimator(images)
        expected = (images.shape[0], 1, *images.shape[-2:])
        if masks.shape != expected:
            raise ValueError(f"foreground estimator returned shape {tuple(masks.shape)}, expected {expected}")
        return masks.to(images.device) > 0.5 if masks.dtype != torch.bool else masks
