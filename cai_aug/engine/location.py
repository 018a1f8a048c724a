"""Injection location selection (ILS), batched.

The centre ``l`` of the resized pattern's bbox must lie on the foreground (``yn(l) = 1``) and the whole
bbox must lie inside the image; ``l`` is drawn uniformly among all such pixels. For a bbox of size
``(h, w)`` centred at ``l = (y, x)`` the box covers rows ``y - h // 2 ... y - h // 2 + h - 1``.
"""

from __future__ import annotations

import torch

from cai_aug.engine import rng


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
