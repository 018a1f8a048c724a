"""Injection location selection (ILS), batched.

The centre ``l`` of the resized pattern's bbox must lie on the foreground (``yn(l) = 1``) and the whole
bbox must lie inside the image; ``l`` is drawn uniformly among all such pixels. For a bbox of size
``(h, w)`` centred at ``l = (y, x)`` the box covers rows ``y - h // 2 ... y - h // 2 + h - 1``. When no
centre fits, ``R'`` shrinks to its synthesis type's lower bound (:func:`place_pattern`); when even that
fails the sample's attempt fails and the engine redraws the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cai_aug.engine import rng
from cai_aug.engine.matching import RANGE_LOW
from cai_aug.engine.resample import pattern_size


def valid_centres(foreground: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Pixels where a bbox of ``(height, width)`` can be centred.

    Args:
        foreground: ``(B, 1, H, W)`` bool.
        height, width: ``(B,)`` int64 bbox sizes (>= 1).
    Returns:
        ``(B, H, W)`` bool.
    """
    _, _, rows, cols = foreground.shape
    y = torch.arange(rows, device=foreground.device)[None, :]
    x = torch.arange(cols, device=foreground.device)[None, :]
    top, left = y - (height // 2)[:, None], x - (width // 2)[:, None]
    rows_ok = (top >= 0) & (top + height[:, None] <= rows)  # (B, H)
    cols_ok = (left >= 0) & (left + width[:, None] <= cols)  # (B, W)
    return foreground[:, 0] & rows_ok[:, :, None] & cols_ok[:, None, :]


def pick_uniform(
    keys: torch.Tensor, valid: torch.Tensor, stream: int = rng.Stream.LOCATION
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one True pixel per sample uniformly.

    Args:
        keys: ``(B,)`` int64.
        valid: ``(B, H, W)`` bool.
    Returns:
        centres ``(B, 2)`` int64 ``(y, x)`` (0 where none) and ``(B,)`` bool whether one existed.
    """
    batch, _, cols = valid.shape
    flat = valid.reshape(batch, -1)
    running = flat.long().cumsum(dim=1)
    count = running[:, -1]
    pick = rng.randint(keys, stream, count.clamp(min=1))
    index = torch.searchsorted(running, (pick + 1)[:, None]).squeeze(1).clamp(max=flat.shape[1] - 1)
    found = count > 0
    index = torch.where(found, index, 0)
    return torch.stack([index // cols, index % cols], dim=1), found


@dataclass
class Placement:
    """Where and how large each sample's pattern goes; every field is ``(B,)`` except ``centre``.

    ``centre``: ``(B, 2)`` int64 ``(y, x)`` (0 where none); ``found``: bool, a valid centre existed;
    ``ratio_prime``, ``scale``: float64 ``R'`` and ``r = R' / R`` after any shrinking;
    ``height``, ``width``: int64 size of the resized pattern bbox.
    """

    centre: torch.Tensor
    found: torch.Tensor
    ratio_prime: torch.Tensor
    scale: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


def place_pattern(
    keys: torch.Tensor,
    foreground: torch.Tensor,
    bbox: torch.Tensor,
    ratio: torch.Tensor,
    ratio_prime: torch.Tensor,
    synthesis: torch.Tensor | None = None,
) -> Placement:
    """ILS: a uniform valid centre for each resized pattern, shrinking ``R'`` when none fits.

    Args:
        keys: ``(B,)`` int64 sample keys (stream ``LOCATION``).
        foreground: ``(B, 1, H, W)`` bool.
        bbox: ``(B, 4)`` each source's mask bbox ``(top, left, height, width)``.
        ratio, ratio_prime: ``(B,)`` float64 ``R`` and ``R'`` (the scale is ``R' / R``).
        synthesis: ``(B,)`` synthesis types; a sample whose pattern fits nowhere retries with ``R'`` at
            its type's lower bound. None: no retry (the "without STM" ablation has no type range).
    Returns:
        the :class:`Placement`.
    """
    ratio = ratio.double()
    scale = ratio_prime / ratio
    height, width = pattern_size(bbox, scale)
    valid = valid_centres(foreground, height, width)
    if synthesis is not None:
        # Batched: every sample computes its shrunk candidate, those that need it take it.
        shrunk = torch.tensor(RANGE_LOW, device=ratio.device, dtype=torch.float64)[synthesis.clamp(min=1)]
        shrunk_scale = shrunk / ratio
        shrunk_h, shrunk_w = pattern_size(bbox, shrunk_scale)
        use_shrunk = ~valid.flatten(1).any(dim=1)
        valid = torch.where(use_shrunk[:, None, None], valid_centres(foreground, shrunk_h, shrunk_w), valid)
        ratio_prime = torch.where(use_shrunk, shrunk, ratio_prime)
        scale = torch.where(use_shrunk, shrunk_scale, scale)
        height = torch.where(use_shrunk, shrunk_h, height)
        width = torch.where(use_shrunk, shrunk_w, width)
    centre, found = pick_uniform(keys, valid)
    return Placement(centre, found, ratio_prime, scale, height, width)
