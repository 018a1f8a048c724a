"""Injection location selection (ILS), batched.

The centre ``l`` of the resized pattern's bbox must lie on the foreground (``yn(l) = 1``) and the whole
bbox must lie inside the image; ``l`` is drawn uniformly among all such pixels. For a bbox of size
``(h, w)`` centred at ``l = (y, x)`` the box covers rows ``y - h // 2 ... y - h // 2 + h - 1``. When no
centre fits, ``R'`` shrinks to its synthesis type's lower bound (:func:`place_pattern`); when even that
fails the sample's attempt fails and the engine redraws the source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cai_aug.engine import rng
from cai_aug.engine.matching import RANGE_LOW
from cai_aug.engine.resample import pattern_size


def centre_ranges(shape: torch.Size, height: torch.Tensor, width: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(B, H)`` and columns ``(B, W)`` bool where a bbox of ``(height, width)`` (``(B,)`` int64)
    can be centred with the whole box inside a ``(..., H, W)`` image."""
    rows, cols = shape[-2:]
    device = height.device
    y = torch.arange(rows, device=device)[None, :]
    x = torch.arange(cols, device=device)[None, :]
    top, left = y - (height // 2)[:, None], x - (width // 2)[:, None]
    rows_ok = (top >= 0) & (top + height[:, None] <= rows)
    cols_ok = (left >= 0) & (left + width[:, None] <= cols)
    return rows_ok, cols_ok


def valid_centres(foreground: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Pixels where a bbox of ``(height, width)`` can be centred.

    Args:
        foreground: ``(B, 1, H, W)`` bool.
        height, width: ``(B,)`` int64 bbox sizes (>= 1).
    Returns:
        ``(B, H, W)`` bool.
    """
    rows_ok, cols_ok = centre_ranges(foreground.shape, height, width)
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
    batch = torch.arange(valid.shape[0], device=valid.device)
    return _pick(keys, valid.sum(dim=2), lambda rows: valid[batch, rows], stream)


def _pick(
    keys: torch.Tensor, row_counts: torch.Tensor, row_of: Callable[[torch.Tensor], torch.Tensor], stream: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pick-th True pixel in row-major order, with pick uniform below the count of True pixels.

    In two steps: the row from the running count over rows ``(B, H)``, then the column from the running
    count along that one row (``row_of(rows) -> (B, W)`` bool): the same pixel as a running count over
    all ``H W`` pixels, which was the most expensive step of placing a pattern.
    """
    running = row_counts.cumsum(dim=1)
    count = running[:, -1]
    pick = rng.randint(keys, stream, count.clamp(min=1))
    found = count > 0
    row = torch.searchsorted(running, (pick + 1)[:, None]).clamp(max=running.shape[1] - 1)  # (B, 1)
    within = pick[:, None] - (running.gather(1, row) - row_counts.gather(1, row))  # rank inside the row
    line = row_of(row[:, 0]).long().cumsum(dim=1)
    col = torch.searchsorted(line, within + 1).clamp(max=line.shape[1] - 1)
    centre = torch.cat([row, col], dim=1)
    return torch.where(found[:, None], centre, 0), found


def pick_in_ranges(
    keys: torch.Tensor,
    foreground: torch.Tensor,
    rows_ok: torch.Tensor,
    cols_ok: torch.Tensor,
    stream: int = rng.Stream.LOCATION,
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pick_uniform` over ``valid_centres`` given as its parts, without building the ``(B, H, W)``
    valid set: ``foreground (B, 1, H, W)`` bool, ``rows_ok (B, H)`` and ``cols_ok (B, W)`` bool;
    ``counts``: their :func:`row_counts` when already known."""
    plane = foreground[:, 0]
    batch = torch.arange(plane.shape[0], device=plane.device)
    counts = row_counts(foreground, rows_ok, cols_ok) if counts is None else counts
    return _pick(keys, counts, lambda rows: plane[batch, rows] & cols_ok, stream)


def row_counts(foreground: torch.Tensor, rows_ok: torch.Tensor, cols_ok: torch.Tensor) -> torch.Tensor:
    """Valid centres per row, ``(B, H)`` int64, from ``foreground (B, 1, H, W)`` bool and the ranges
    ``rows_ok (B, H)``, ``cols_ok (B, W)`` bool (:func:`centre_ranges`)."""
    # bytes summed into int32: a bool sum first converts the whole (B, H, W) plane to int64
    inside = (foreground[:, 0] & cols_ok[:, None, :]).view(torch.uint8).sum(dim=2, dtype=torch.int32)
    return inside.long() * rows_ok


def pattern_boxes(centre: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Boxes ``(..., 4)`` int64 ``(top, left, height, width)`` of patterns of ``height, width (...)``
    centred at ``centre (..., 2)`` (the rule of this module: ``top = y - height // 2``)."""
    return torch.stack([centre[..., 0] - height // 2, centre[..., 1] - width // 2, height, width], dim=-1)


def boxes_meet(first: torch.Tensor, second: torch.Tensor, gap: int) -> torch.Tensor:
    """Whether boxes ``(..., 4)`` ``(top, left, height, width)`` come closer than ``gap`` pixels
    (broadcast over the leading dimensions): fewer than ``gap`` free rows or columns between them."""
    top1, left1, height1, width1 = first.unbind(-1)
    top2, left2, height2, width2 = second.unbind(-1)
    rows = (top1 < top2 + height2 + gap) & (top2 < top1 + height1 + gap)
    cols = (left1 < left2 + width2 + gap) & (left2 < left1 + width1 + gap)
    return rows & cols


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

    def boxes(self) -> torch.Tensor:
        """The pattern bboxes ``(B, 4)`` ``(top, left, height, width)`` in image pixels."""
        return pattern_boxes(self.centre, self.height, self.width)


def place_pattern(
    keys: torch.Tensor,
    foreground: torch.Tensor,
    bbox: torch.Tensor,
    ratio: torch.Tensor,
    ratio_prime: torch.Tensor,
    synthesis: torch.Tensor | None = None,
    shrinkable: torch.Tensor | None = None,
    avoid: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> Placement:
    """ILS: a uniform valid centre for each resized pattern, shrinking ``R'`` when none fits.

    Args:
        keys: ``(B,)`` int64 sample keys (stream ``LOCATION``).
        foreground: ``(B, 1, H, W)`` bool.
        bbox: ``(B, 4)`` each source's mask bbox ``(top, left, height, width)``.
        ratio, ratio_prime: ``(B,)`` float64 ``R`` and ``R'`` (the scale is ``R' / R``).
        synthesis: ``(B,)`` synthesis types; a sample whose pattern fits nowhere retries with ``R'`` at
            its type's lower bound. None: no retry (the "without STM" ablation has no type range).
        shrinkable: ``(B,)`` bool, the samples that may retry so (default: all, given ``synthesis``).
        avoid: ``(boxes (B, m, 4), which (B, m) bool, gap)``: boxes the pattern must stay ``gap`` pixels
            from (:func:`boxes_meet`; other anomalies of the image). A centre drawn too close to one is
            drawn again, with the same key, among the centres that keep clear of them all.
    Returns:
        the :class:`Placement`.
    """
    ratio = ratio.double()
    scale = ratio_prime / ratio
    height, width = pattern_size(bbox, scale)
    rows_ok, cols_ok = centre_ranges(foreground.shape, height, width)
    counts = row_counts(foreground, rows_ok, cols_ok)
    if synthesis is not None:
        # Batched: every sample computes its shrunk candidate, those that need it take it.
        shrunk = torch.tensor(RANGE_LOW, device=ratio.device, dtype=torch.float64)[synthesis.clamp(min=1)]
        shrunk_scale = shrunk / ratio
        shrunk_h, shrunk_w = pattern_size(bbox, shrunk_scale)
        use_shrunk = counts.sum(dim=1) == 0
        if shrinkable is not None:
            use_shrunk = use_shrunk & shrinkable
        shrunk_rows_ok, shrunk_cols_ok = centre_ranges(foreground.shape, shrunk_h, shrunk_w)
        if foreground.device.type == "cpu":
            # only the samples that shrink: a pass over (H, W) per sample is the cost of placing
            index = use_shrunk.nonzero()[:, 0]
            shrunk_counts = counts.clone()
            if index.numel():
                shrunk_counts[index] = row_counts(foreground[index], shrunk_rows_ok[index], shrunk_cols_ok[index])
        else:  # no host sync on a GPU
            shrunk_counts = row_counts(foreground, shrunk_rows_ok, shrunk_cols_ok)
        rows_ok = torch.where(use_shrunk[:, None], shrunk_rows_ok, rows_ok)
        cols_ok = torch.where(use_shrunk[:, None], shrunk_cols_ok, cols_ok)
        counts = torch.where(use_shrunk[:, None], shrunk_counts, counts)
        ratio_prime = torch.where(use_shrunk, shrunk, ratio_prime)
        scale = torch.where(use_shrunk, shrunk_scale, scale)
        height = torch.where(use_shrunk, shrunk_h, height)
        width = torch.where(use_shrunk, shrunk_w, width)
    centre, found = pick_in_ranges(keys, foreground, rows_ok, cols_ok, counts=counts)
    if avoid is not None:
        centre, found = _keep_clear(keys, foreground, rows_ok, cols_ok, height, width, centre, found, *avoid)
    return Placement(centre, found, ratio_prime, scale, height, width)


def _keep_clear(
    keys: torch.Tensor,
    foreground: torch.Tensor,
    rows_ok: torch.Tensor,
    cols_ok: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    centre: torch.Tensor,
    found: torch.Tensor,
    boxes: torch.Tensor,
    which: torch.Tensor,
    gap: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Redraw the centres whose pattern box comes closer than ``gap`` to one of ``boxes`` (``which``),
    among the valid centres that keep clear of them all (``found`` False when there is none)."""
    meets = (boxes_meet(pattern_boxes(centre, height, width)[:, None, :], boxes, gap) & which).any(dim=1) & found
    if not bool(meets.any()):  # the usual case: the first draw is clear
        return centre, found
    index = meets.nonzero()[:, 0]
    device = foreground.device
    height, width, boxes, which = height[index], width[index], boxes[index], which[index]
    top = torch.arange(foreground.shape[-2], device=device)[None, :] - (height // 2)[:, None]  # box top per row
    left = torch.arange(foreground.shape[-1], device=device)[None, :] - (width // 2)[:, None]
    # a centre is too close when its box's rows and its columns both come within gap of another box's
    near_rows = (top[:, None, :] < (boxes[..., 0] + boxes[..., 2] + gap)[..., None]) & (
        boxes[..., 0][..., None] < (top + height[:, None] + gap)[:, None, :]
    )  # (n, m, H)
    near_cols = (left[:, None, :] < (boxes[..., 1] + boxes[..., 3] + gap)[..., None]) & (
        boxes[..., 1][..., None] < (left + width[:, None] + gap)[:, None, :]
    )  # (n, m, W)
    near_rows &= which[..., None]
    # the blocked centres, (n, H, W): the union of each box's (rows x cols), as one batched product
    blocked = torch.bmm(near_rows.transpose(1, 2).float(), near_cols.float())
    plane = foreground[index, 0] & rows_ok[index, :, None] & cols_ok[index, None, :] & (blocked == 0)
    redrawn, clear = pick_uniform(keys[index], plane)
    return centre.index_put((index,), redrawn), found.index_put((index,), clear)
