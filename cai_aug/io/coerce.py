"""Input checks that turn bad input into clear errors instead of silent wrong results."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_IMAGE_SIDE = 16


@dataclass(frozen=True)
class ImageLayout:
    """How the caller's images were given, so results come back in the same form."""

    batched: bool
    dtype: torch.dtype
    channels_last: bool


def as_float_batch(images: torch.Tensor, name: str = "images") -> tuple[torch.Tensor, ImageLayout]:
    """Validate images and return ``(B, C, H, W)`` float32 in [0, 1] plus the caller's layout.

    Accepts float tensors in [0, 1] (any float dtype) or uint8 tensors, shaped ``(B, C, H, W)`` or
    ``(C, H, W)`` with C = 1 or 3.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be float in [0, 1] or uint8, got dtype {images.dtype}")
    if images.ndim == 3:
        batched, images = False, images.unsqueeze(0)
    elif images.ndim == 4:
        batched = True
    else:
        raise ValueError(f"{name} must be (B, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if batch == 0:
        raise ValueError(f"{name} is an empty batch")
    if channels not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (dim 1), got {channels} (shape {tuple(images.shape)})")
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} are {height}x{width}: smaller than any usable pattern (min side {MIN_IMAGE_SIDE})")
    layout = ImageLayout(
        batched=batched,
        dtype=images.dtype,
        channels_last=images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous(),
    )
    if images.dtype == torch.uint8:
        return images.float().div(255.0).contiguous(), layout
    images = images.float().contiguous()
    low, high = torch.aminmax(images)
    if not torch.isfinite(low) or not torch.isfinite(high):
        raise ValueError(f"{name} contain NaN or infinite values")
    if low < 0 or high > 1:
        raise ValueError(f"float {name} must lie in [0, 1], got values in [{low.item():.3g}, {high.item():.3g}]")
    return images, layout


def restore_layout(images: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
    """Inverse of :func:`as_float_batch` for results: same dtype, batching and memory format."""
    if layout.dtype == torch.uint8:
        images = images.clamp(0, 1).mul(255).round().to(torch.uint8)
    else:
        images = images.to(layout.dtype)
    if layout.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images if layout.batched else images[0]
