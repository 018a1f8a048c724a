"""Pseudo-anomaly masks from the difference to the normal image."""

from __future__ import annotations

import torch

from cai_aug.engine.foreground import box_count, dilate

#: How the difference is turned into a mask: ``"majority"`` (the paper's rule: ``> T`` then a majority
#: filter) or ``"hysteresis"`` (the majority rule's mask, plus the pixels changed by more than
#: ``STRONG * T`` and the pixels above ``T`` within the filter's radius of them through pixels above ``T``:
#: what the filter erodes from a thin but clearly visible change).
MASK_RULES = ("majority", "hysteresis")
STRONG = 3.0


def majority_filter(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter of a binary mask ``(B, 1, H, W)`` with a ``size x size`` window (zero padded).

    For binary values the median is a majority vote, i.e. a box sum compared with half the window.
    """
    if size <= 1:
        return mask
    if size % 2 == 0:
        raise ValueError(f"median filter size must be odd, got {size}")
    return box_count(mask, size // 2, size // 2) > (size * size) / 2


def reconstruct(seeds: torch.Tensor, within: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """Geodesic dilation of ``seeds & within`` inside ``within`` (8-connected, 3x3 steps).

    With ``steps=None`` it runs to convergence: the pixels of ``within`` connected to a seed through
    ``within`` (morphological reconstruction, ``scipy.ndimage.binary_propagation`` with a 3x3
    structure); with ``steps=k`` it stops after ``k`` dilations (the pixels at most ``k`` steps away).

    Args:
        seeds, within: ``(B, 1, H, W)`` bool.
        steps: number of dilations, or None.
    Returns:
        ``(B, 1, H, W)`` bool.
    """
    # bool dilations by doubling (:func:`dilate`): a stride-1 max pool over floats costs 20-40x more on the CPU
    current = seeds & within
    if steps is not None:
        for _ in range(steps):
            current = dilate(current, 3) & within
        return current
    previous = int(current.sum())
    while previous > 0:  # the set only grows, so an unchanged count means an unchanged set
        for _ in range(4):  # a few dilations between checks: a check costs about as much as one
            current = dilate(current, 3) & within
        count = int(current.sum())
        if count == previous:
            break
        previous = count
    return current


def difference_mask(
    synthesized: torch.Tensor,
    normal: torch.Tensor,
    region: torch.Tensor,
    threshold: float,
    median: int = 7,
    rule: str = "majority",
) -> torch.Tensor:
    """The mask of what changed, kept inside ``region``.

    ``"majority"`` (the paper's): ``ysa = mean_c |Isa - In| > T``, median filtered. ``"hysteresis"``: that
    mask, united with the pixels changed by more than ``STRONG * T`` and the pixels above ``T`` reached
    from them in at most ``median // 2`` 8-connected steps through pixels above ``T`` (the filter's
    radius: what it may have eroded). A thin crack the filter would erase stays; isolated faint speckle
    still goes.

    Args:
        synthesized, normal: ``(B, C, H, W)`` float in [0, 1].
        region: ``(B, 1, H, W)`` bool, the solved region Omega.
        threshold: T in image units (7/255 in the reference implementation).
        median: odd median filter size (1: none).
        rule: one of :data:`MASK_RULES`.
    Returns:
        ``(B, 1, H, W)`` bool.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule must be one of {MASK_RULES}, got {rule!r}")
    difference = (synthesized - normal).abs_().mean(dim=1, keepdim=True)
    changed = difference > threshold
    mask = majority_filter(changed, median)
    if rule == "hysteresis":
        mask = mask | reconstruct(difference > STRONG * threshold, changed, steps=median // 2)
    return mask & region
