"""Pseudo-anomaly masks from the difference to the normal image."""

from __future__ import annotations

import torch

from cai_aug.engine.foreground import box_count


def majority_filter(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter of a binary mask ``(B, 1, H, W)`` with a ``size x size`` window (zero padded).

    For binary values the median is a majority vote, i.e. a box sum compared with half the window.
    """
    if size <= 1:
        return mask
    if size % 2 == 0:
        raise ValueError(f"median filter size must be odd, got {size}")
    return box_count(mask, size // 2, size // 2) > (size * size) / 2


def difference_mask(
    synthesized: torch.Tensor,
    normal: torch.Tensor,
    region: torch.Tensor,
    threshold: float,
    median: int = 7,
) -> torch.Tensor:
    """``ysa = mean_c |Isa - In| > T``, median filtered, kept inside ``region``.

    Args:
        synthesized, normal: ``(B, C, H, W)`` float in [0, 1].
        region: ``(B, 1, H, W)`` bool, the solved region Omega.
        threshold: T in image units (7/255 in the reference implementation).
    Returns:
        ``(B, 1, H, W)`` bool.
    """
    difference = (synthesized - normal).abs_().mean(dim=1, keepdim=True)
    return majority_filter(difference > threshold, median) & region
