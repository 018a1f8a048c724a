"""Foreground estimation ``yn = m(In)``: where on the target an anomaly may go.

Modes: ``"none"`` (all ones, for textures), ``"auto"`` (an embedded border-colour background model,
falling back to all ones when unsure), ``"rembg"`` (rembg matting with a local model, see
:mod:`cai_aug.engine.foreground_rembg`, which imports rembg only when it runs), or any callable
``(B, C, H, W) -> (B, 1, H, W)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ForegroundFn = Callable[[torch.Tensor], torch.Tensor]


def all_foreground(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 1, H, W)`` bool, all True."""
    return torch.ones_like(images[:, :1], dtype=torch.bool)


def _pad(mask: torch.Tensor, before: int, after: int, value: float) -> torch.Tensor:
    """``(..., H, W)`` padded with ``value`` by ``before`` / ``after`` on both axes (one pad per square)."""
    return F.pad(mask, [before, after, before, after], value=value)


def _window_any_all(cover: torch.Tensor, dim: int, length: int, *, all_: bool) -> torch.Tensor:
    """Any (or, with ``all_``, all) of bool ``cover`` over the ``length`` entries from each position along
    ``dim``; the result is ``length - 1`` shorter there (the input is padded by the caller).

    By doubling: a window of ``2s`` is two windows of ``s`` shifted by ``s``, so a window of ``L`` costs
    ``ceil(log2 L)`` passes over bytes instead of two float running sums (or ``L`` passes of pooling).
    """
    combine = torch.logical_and if all_ else torch.logical_or
    span = 1  # cover[j] holds the window of `span` entries from j
    while span < length:
        shift = min(span, length - span)
        size = cover.shape[dim] - shift
        cover = combine(cover.narrow(dim, 0, size), cover.narrow(dim, shift, size))
        span += shift
    return cover


def _window_sum(block: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """Sum of integer ``block`` over the ``length`` entries from each position along ``dim`` (the result
    is ``length - 1`` shorter there), by doubling partial sums and adding the pieces of the window's
    binary decomposition: exact, ``O(log L)`` passes."""
    size = block.shape[dim] - length + 1
    total, offset, span = None, 0, 1
    while True:
        if length & span:  # this power of two is one piece of the window, at the current offset
            piece = block.narrow(dim, offset, size)
            total = piece if total is None else total + piece
            offset += span
        if 2 * span > length:
            return total
        count = block.shape[dim] - span
        block = block.narrow(dim, 0, count) + block.narrow(dim, span, count)
        span *= 2


def box_count(mask: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Number of set pixels of ``(B, 1, H, W)`` in the window ``[i - before, i + after]`` of each pixel
    (both axes; zero padded), ``(B, 1, H, W)`` int32 (uint8 when the window has fewer than 256 pixels).

    Integer sums by doubling (:func:`_window_sum`): exact, and cheaper on the CPU than float running sums
    or stride-1 pooling (O(k) per pixel).
    """
    length = before + after + 1
    counts = _pad(mask.to(torch.uint8 if length * length < 256 else torch.int32), before, after, 0)
    for dim in (-1, -2):
        counts = _window_sum(counts, dim, length)
    return counts


def _square(mask: torch.Tensor, size: int, *, all_: bool) -> torch.Tensor:
    """Any / all of ``(B, 1, H, W)`` bool over the ``size x size`` window ``[i - (size - 1) // 2,
    i + size // 2]`` of each pixel (both axes); outside the image counts as ``all_``."""
    if size <= 1:
        return mask
    cover = _pad(mask, (size - 1) // 2, size // 2, float(all_))
    for dim in (-1, -2):
        cover = _window_any_all(cover, dim, size, all_=all_)
    return cover


def dilate(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary dilation of ``(B, 1, H, W)`` bool by a ``size x size`` square (even sizes allowed): the
    window of pixel ``i`` is ``[i - (size - 1) // 2, i + size // 2]``; outside the image counts as unset."""
    return _square(mask, size, all_=False)


def erode(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary erosion of ``(B, 1, H, W)`` bool by a ``size x size`` square (``~dilate(~mask)``); outside
    counts as set."""
    return _square(mask, size, all_=True)


def close(mask: torch.Tensor, size: int) -> torch.Tensor:
    return erode(dilate(mask, size), size)


def open_(mask: torch.Tensor, size: int) -> torch.Tensor:
    return dilate(erode(mask, size), size)


def frame_pixels(images: torch.Tensor, border: int) -> torch.Tensor:
    """The pixels of the ``border``-wide frame of ``(B, C, H, W)`` images -> ``(B, C, P)``.

    Four slice copies, not a boolean mask: indexing by a mask is a nonzero and a gather, several times
    slower; the order of the pixels differs from the mask's, which medians do not see.
    """
    batch, channels, height, width = images.shape
    if 2 * border >= min(height, width):  # the frame is the whole image
        return images.flatten(2)
    middle = images[..., border:-border, :]
    parts = (images[..., :border, :], images[..., -border:, :], middle[..., :border], middle[..., -border:])
    out = images.new_empty(batch, channels, sum(part.shape[-2] * part.shape[-1] for part in parts))
    start = 0
    for part in parts:
        size = part.shape[-2] * part.shape[-1]
        out[..., start : start + size].view(part.shape).copy_(part)
        start += size
    return out


def squared_distance(images: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of each pixel of ``(B, C, H, W)`` to ``colour (B, C)`` -> ``(B, 1, H, W)``.

    Channel by channel, in place: the same sums in the same order as ``(x - c).square().sum(1)``, with
    one third of the temporaries.
    """
    total = None
    for channel in range(images.shape[1]):
        term = (images[:, channel : channel + 1] - colour[:, channel, None, None, None]).square_()
        total = term if total is None else total.add_(term)
    return total


def colour_distance(images: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each pixel of ``(B, C, H, W)`` to ``colour (B, C)`` -> ``(B, 1, H, W)``."""
    return squared_distance(images, colour).sqrt_()


def square_bound(threshold: torch.Tensor) -> torch.Tensor:
    """The largest float32 ``c`` with ``sqrt(c) <= threshold`` (``(B,)`` float32, positive and finite).

    A correctly rounded square root is monotone, so ``sqrt(s) > threshold`` exactly when ``s > c``: the
    comparison without a square root per pixel. ``threshold ** 2`` (float64, rounded to float32) lies
    within two ulps of ``c``; the candidates around it are consecutive floats, taken as consecutive
    integers of the same bits (positive floats order as their bit patterns).
    """
    start = threshold.double().square().float().view(torch.int32)
    candidates = (start[:, None] + torch.arange(-3, 5, device=threshold.device, dtype=torch.int32)).view(torch.float32)
    below = candidates.sqrt() <= threshold[:, None]  # True then False along each row
    return candidates.gather(1, below.sum(dim=1, keepdim=True) - 1)[:, 0]


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
    pixels = frame_pixels(images, border)  # (B, C, P)
    colour = pixels.median(dim=2).values  # (B, C)
    frame_distance = (pixels - colour[..., None]).square().sum(dim=1).sqrt()  # (B, P)
    spread = 1.4826 * frame_distance.median(dim=1).values
    threshold = torch.maximum(4 * spread, torch.full_like(spread, min_contrast))
    # distance > threshold, compared on the squares (exactly the same pixels, no square root per pixel)
    foreground = squared_distance(images, colour) > square_bound(threshold)[:, None, None, None]
    size = max(3, min(height, width) // 64)
    foreground = close(open_(foreground, size), 2 * size + 1)
    # the count as bytes summed into int32 (no float copy of the masks), over the pixels: the float mean
    fraction = foreground.view(torch.uint8).sum(dim=(1, 2, 3), dtype=torch.int32) / float(height * width)
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
        from cai_aug.engine.foreground_rembg import RembgForeground

        return RembgForeground()
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
