"""Batched resampling of bank sources into per-sample canvases, and canvas <-> image transfers.

A canvas is a small ``(B, C, Hc, Wc)`` window around each sample's pattern; its origin in image
coordinates differs per sample. Moving canvases in and out of full images is, on a GPU, one gather or
scatter for the batch with no host synchronisation; on the CPU, one contiguous copy per sample (faster
there than any indexing over the batch).
"""

from __future__ import annotations

import torch

from cai_aug.engine.bank import BankStorage
from cai_aug.poisson import cpu_kernel


def pattern_size(bbox: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size of the resized pattern bbox.

    Args:
        bbox: ``(B, 4)`` source mask bbox ``(top, left, height, width)`` in level-0 pixels.
        scale: ``(B,)`` resize factor ``r``.
    Returns:
        heights, widths ``(B,)`` int64, at least 1.
    """
    scale = scale.to(torch.float64)
    height = (bbox[:, 2].double() * scale).round().clamp(min=1).to(torch.int64)
    width = (bbox[:, 3].double() * scale).round().clamp(min=1).to(torch.int64)
    return height, width


def render_patterns(
    storage: BankStorage,
    source: torch.Tensor,
    pattern_h: torch.Tensor,
    pattern_w: torch.Tensor,
    canvas_h: int,
    canvas_w: int,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample each sample's source so that its mask bbox fills ``(pattern_h, pattern_w)`` at offset
    ``(pad, pad)`` of a ``(canvas_h, canvas_w)`` canvas.

    Uses the bank's mip level matching the scale (antialiasing when shrinking) and bilinear taps.

    Args:
        storage: bank storage on the same device as ``source``.
        source: ``(B,)`` int64 source indices.
        pattern_h, pattern_w: ``(B,)`` int64 target bbox sizes.
    Returns:
        image ``(B, 3, Hc, Wc)`` float in [0, 1] and mask ``(B, 1, Hc, Wc)`` bool (zero outside the bbox).
        On the CPU each sample is resampled over its own bbox plus ``pad`` only (a batch's canvas is as
        large as its largest pattern), by the compiled kernel when it is available: beyond that a smaller
        pattern's image is zero, where nothing reads it (Omega stays within ``margin < pad`` of the bbox).
    """
    taps = _taps(storage, source, pattern_h, pattern_w, canvas_h, canvas_w, pad)
    if not _per_sample(source):
        return _render(storage, taps, pattern_h, pattern_w, pad)
    rows = (pattern_h + 2 * pad).clamp(max=canvas_h)
    cols = (pattern_w + 2 * pad).clamp(max=canvas_w)
    if cpu_kernel.enabled(torch.float32, source.device):
        base, stride, row_taps, col_taps = taps
        return cpu_kernel.render_rgba(
            storage.pixels, base, stride, row_taps, col_taps, (rows, cols), (pattern_h, pattern_w), pad
        )
    batch = source.shape[0]
    image = torch.zeros(batch, 3, canvas_h, canvas_w, device=source.device)
    mask = torch.zeros(batch, 1, canvas_h, canvas_w, dtype=torch.bool, device=source.device)
    base, stride, (y0, y1, wy), (x0, x1, wx) = taps
    for n, (height, width) in enumerate(zip(rows.tolist(), cols.tolist())):
        one = slice(n, n + 1)
        part = (base[one], stride[one], (y0[one, :height], y1[one, :height], wy[one, :height]))
        part += ((x0[one, :width], x1[one, :width], wx[one, :width]),)
        image[one, :, :height, :width], mask[one, :, :height, :width] = _render(
            storage, part, pattern_h[one], pattern_w[one], pad
        )
    return image, mask


def _taps(
    storage: BankStorage,
    source: torch.Tensor,
    pattern_h: torch.Tensor,
    pattern_w: torch.Tensor,
    canvas_h: int,
    canvas_w: int,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Where each canvas pixel reads the bank: the first pixel ``base (B,)`` and row stride ``(B,)`` of
    each source's mip level, and the bilinear taps ``(low, high, weight)`` of the rows ``(B, Hc)`` and
    of the columns ``(B, Wc)`` (int64, int64, float32)."""
    device = source.device
    bbox = storage.bbox[source].double()  # (B, 4)
    step_y = bbox[:, 2] / pattern_h.double()  # source pixels per canvas pixel
    step_x = bbox[:, 3] / pattern_w.double()
    level = torch.floor(torch.log2(torch.maximum(step_y, step_x).clamp(min=1.0)))
    level = torch.minimum(level.to(torch.int64), storage.levels[source] - 1)
    factor = torch.pow(2.0, level.double())
    offset = storage.offset[source, level]
    height = storage.height[source, level]
    width = storage.width[source, level]

    def taps(count: int, start: torch.Tensor, step: torch.Tensor, size: torch.Tensor):
        grid = torch.arange(count, device=device, dtype=torch.float64)[None, :] - pad + 0.5
        position = (start[:, None] + grid * step[:, None]) / factor[:, None] - 0.5
        low = position.floor()
        weight = (position - low).float()
        low = low.to(torch.int64)
        high = (low + 1).clamp(max=(size - 1)[:, None]).clamp(min=0)
        return low.clamp(min=0).clamp(max=(size - 1)[:, None]), high, weight

    return offset, width, taps(canvas_h, bbox[:, 0], step_y, height), taps(canvas_w, bbox[:, 1], step_x, width)


def _render(
    storage: BankStorage,
    taps: tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]],
    pattern_h: torch.Tensor,
    pattern_w: torch.Tensor,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`render_patterns` by torch gathers, every sample over the canvas its taps span (:func:`_taps`)."""
    offset, width, (y0, y1, wy), (x0, x1, wx) = taps
    device = offset.device
    batch, canvas_h, canvas_w = y0.shape[0], y0.shape[1], x0.shape[1]
    base = offset[:, None, None]
    rows0, rows1 = (y0 * width[:, None])[:, :, None], (y1 * width[:, None])[:, :, None]
    cols0, cols1 = x0[:, None, :], x1[:, None, :]

    # One int32 word per RGBA pixel: index_select of words is many times faster than gathering (P, 4)
    # uint8 rows, and viewing the words back as bytes restores the channels exactly.
    words = storage.pixels.contiguous().view(torch.int32).reshape(-1)

    def fetch(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """One bilinear tap for every canvas pixel: ``(B, Hc, Wc, 4)`` float RGBA in [0, 255]."""
        index = (base + rows + cols).reshape(-1)
        return words.index_select(0, index).view(torch.uint8).reshape(batch, canvas_h, canvas_w, 4).float()

    # The bilinear blend, in place but with the same products and sums in the same order as
    # (f00 (1 - wx) + f01 wx) (1 - wy) + (f10 (1 - wx) + f11 wx) wy. The column weights are repeated over
    # the 4 channels: broadcasting them over an inner axis of 4 does not vectorise.
    wy, wx = wy[:, :, None, None], wx[:, None, :, None].expand(-1, -1, -1, 4).contiguous()
    top = fetch(rows0, cols0).mul_(1 - wx).add_(fetch(rows0, cols1).mul_(wx))
    bottom = fetch(rows1, cols0).mul_(1 - wx).add_(fetch(rows1, cols1).mul_(wx))
    values = top.mul_(1 - wy).add_(bottom.mul_(wy)).div_(255.0).permute(0, 3, 1, 2)  # (B, 4, Hc, Wc)

    inside_y = (torch.arange(canvas_h, device=device)[None, :] >= pad) & (
        torch.arange(canvas_h, device=device)[None, :] < pad + pattern_h[:, None]
    )
    inside_x = (torch.arange(canvas_w, device=device)[None, :] >= pad) & (
        torch.arange(canvas_w, device=device)[None, :] < pad + pattern_w[:, None]
    )
    mask = (values[:, 3:] >= 0.5) & inside_y[:, None, :, None] & inside_x[:, None, None, :]
    return values[:, :3].contiguous(), mask


def _clamped_windows(
    shape: torch.Size, origin_y: torch.Tensor, origin_x: torch.Tensor, canvas_h: int, canvas_w: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image rows ``(B, Hc)`` and columns ``(B, Wc)`` of each canvas pixel, clamped into the image."""
    height, width = shape[-2:]
    device = origin_y.device
    rows = (origin_y[:, None] + torch.arange(canvas_h, device=device)[None, :]).clamp(0, height - 1)
    cols = (origin_x[:, None] + torch.arange(canvas_w, device=device)[None, :]).clamp(0, width - 1)
    return rows, cols


def canvas_validity(
    shape: torch.Size, origin_y: torch.Tensor, origin_x: torch.Tensor, canvas_h: int, canvas_w: int
) -> torch.Tensor:
    """Which canvas pixels lie inside a ``(..., H, W)`` image: ``(B, 1, Hc, Wc)`` bool."""
    height, width = shape[-2:]
    device = origin_y.device
    rows = origin_y[:, None] + torch.arange(canvas_h, device=device)[None, :]
    cols = origin_x[:, None] + torch.arange(canvas_w, device=device)[None, :]
    return (((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :])[:, None]


def writes_in_order(images: torch.Tensor) -> bool:
    """Whether :func:`paste_` into ``images`` writes its canvases one after the other (the CPU), so that
    windows of one image may share a call wherever their ``where`` keep them apart (on a GPU the writes
    of one call race)."""
    return _per_sample(images)


def _per_sample(tensor: torch.Tensor) -> bool:
    # On the CPU a loop of per-sample copies (contiguous rows, no index arithmetic) is several times
    # faster than one gather or scatter over the batch; on a GPU the loop would cost a launch per sample.
    return tensor.device.type == "cpu"


def crop(
    images: torch.Tensor,
    origin_y: torch.Tensor,
    origin_x: torch.Tensor,
    canvas_h: int,
    canvas_w: int,
    rows: torch.Tensor | None = None,
):
    """Windows of ``(B, C, H, W)`` images at per-sample origins ``(N,)`` -> ``(N, C, Hc, Wc)`` and validity
    ``(N, 1, Hc, Wc)`` bool (positions outside the image hold the nearest edge pixel). Window ``n`` is cut
    from image ``rows[n]`` (default: image ``n``), so several windows of one image need no copy of it."""
    return windows(images, origin_y, origin_x, canvas_h, canvas_w, rows), canvas_validity(
        images.shape, origin_y, origin_x, canvas_h, canvas_w
    )


def windows(
    images: torch.Tensor,
    origin_y: torch.Tensor,
    origin_x: torch.Tensor,
    canvas_h: int,
    canvas_w: int,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The windows of :func:`crop` alone, ``(N, C, Hc, Wc)``, for callers that know the validity already."""
    if _per_sample(images):
        if cpu_kernel.copy_enabled(images):
            rows = torch.arange(origin_y.shape[0]) if rows is None else rows
            return cpu_kernel.crop(images, rows, origin_y, origin_x, canvas_h, canvas_w)
        return _crop_loop(images, origin_y, origin_x, canvas_h, canvas_w, rows)
    return _crop_gather(images, *_clamped_windows(images.shape, origin_y, origin_x, canvas_h, canvas_w), rows)


def _crop_gather(
    images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, image_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``images[image_rows[n], :, rows[n], :][..., cols[n]]`` for the batch at once."""
    if image_rows is None:
        batch, channels, _, width = images.shape
        picked = images.gather(2, rows[:, None, :, None].expand(batch, channels, -1, width))
        return picked.gather(3, cols[:, None, None, :].expand(batch, channels, rows.shape[1], -1))
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[image_rows[:, None, None, None], channel, rows[:, None, :, None], cols[:, None, None, :]]


def _crop_loop(
    images: torch.Tensor,
    origin_y: torch.Tensor,
    origin_x: torch.Tensor,
    canvas_h: int,
    canvas_w: int,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same windows as :func:`_crop_gather`, sample by sample: the part inside the image by one slice
    copy, the rest by repeating its edge rows and columns (the nearest pixel, as clamped indices give)."""
    height, width = images.shape[-2:]
    count = origin_y.shape[0]
    sources = range(count) if rows is None else rows.tolist()
    out = images.new_empty(count, images.shape[1], canvas_h, canvas_w)
    for n, (image, top, left) in enumerate(zip(sources, origin_y.tolist(), origin_x.tolist())):
        y0, y1 = max(top, 0), min(top + canvas_h, height)
        x0, x1 = max(left, 0), min(left + canvas_w, width)
        if y0 >= y1 or x0 >= x1:  # the window misses the image
            lines, cols = _clamped_windows(images.shape, origin_y[n : n + 1], origin_x[n : n + 1], canvas_h, canvas_w)
            out[n : n + 1] = _crop_gather(images[image : image + 1], lines, cols)
            continue
        window, c0, c1, d0, d1 = out[n], y0 - top, y1 - top, x0 - left, x1 - left
        window[:, c0:c1, d0:d1] = images[image, :, y0:y1, x0:x1]
        window[:, :c0, d0:d1] = window[:, c0 : c0 + 1, d0:d1]
        window[:, c1:, d0:d1] = window[:, c1 - 1 : c1, d0:d1]
        window[:, :, :d0] = window[:, :, d0 : d0 + 1]
        window[:, :, d1:] = window[:, :, d1 - 1 : d1]
    return out


def paste(images: torch.Tensor, canvas: torch.Tensor, origin_y: torch.Tensor, origin_x: torch.Tensor) -> torch.Tensor:
    """Copy of ``images (B, C, H, W)`` with ``canvas (B, C, Hc, Wc)`` written at per-sample origins;
    canvas pixels outside the image are dropped."""
    return paste_(images.clone(), canvas, origin_y, origin_x)


def paste_(
    images: torch.Tensor,
    canvas: torch.Tensor,
    origin_y: torch.Tensor,
    origin_x: torch.Tensor,
    rows: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
    pick: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write ``canvas (N, C, Hc, Wc)`` into ``images (B, C, H, W)`` in place at per-sample origins ``(N,)``,
    canvas ``n`` into image ``rows[n]`` (default: image ``n``); canvas pixels outside the image are
    dropped. ``where``: ``(N, 1, Hc, Wc)`` bool, only these canvas pixels are written (the rest of the
    window keeps the image's values). Windows written into one image may overlap only where ``where``
    leaves them apart; on a GPU the rows of one call must then be distinct images. ``pick``: ``(n,)``,
    write only canvases ``pick`` (and their ``where``), ``origin_*`` and ``rows`` then given per write,
    without copying them out of ``canvas``. Returns ``images``."""
    canvas = canvas.to(images.dtype)  # no copy when the dtypes agree
    if _per_sample(images) and cpu_kernel.copy_enabled(images):  # picks in place, no subset copies
        count = canvas.shape[0] if pick is None else pick.shape[0]
        rows = torch.arange(count) if rows is None else rows
        cpu_kernel.paste_(images, canvas, rows, origin_y, origin_x, where, pick)
        return images
    if pick is not None:
        canvas, where = canvas[pick], None if where is None else where[pick]
    if rows is None:
        rows = torch.arange(canvas.shape[0], device=canvas.device)
    if _per_sample(images):
        _paste_loop(images, canvas, origin_y, origin_x, rows, where)
    else:
        _paste_index(images, canvas, origin_y, origin_x, rows, where)
    return images


def _paste_loop(
    images: torch.Tensor,
    canvas: torch.Tensor,
    origin_y: torch.Tensor,
    origin_x: torch.Tensor,
    rows: torch.Tensor,
    where: torch.Tensor | None = None,
) -> None:
    """:func:`paste_` by one slice copy per sample of the part of its canvas inside the image."""
    height, width = images.shape[-2:]
    canvas_h, canvas_w = canvas.shape[-2:]
    for n, (row, top, left) in enumerate(zip(rows.tolist(), origin_y.tolist(), origin_x.tolist())):
        y0, y1 = max(top, 0), min(top + canvas_h, height)
        x0, x1 = max(left, 0), min(left + canvas_w, width)
        if y0 < y1 and x0 < x1:
            window = images[row, :, y0:y1, x0:x1]
            part = canvas[n, :, y0 - top : y1 - top, x0 - left : x1 - left]
            if where is None:
                window.copy_(part)
            else:
                window.copy_(torch.where(where[n, :, y0 - top : y1 - top, x0 - left : x1 - left], part, window))


def _paste_index(
    images: torch.Tensor,
    canvas: torch.Tensor,
    origin_y: torch.Tensor,
    origin_x: torch.Tensor,
    rows: torch.Tensor,
    where: torch.Tensor | None = None,
) -> None:
    """:func:`paste_` as one ``index_put_``, without a host sync.

    Canvas pixels outside the image are clamped onto the edge pixel that a canvas pixel inside the image
    also writes, and carry that pixel's value: the repeated writes agree, so their order does not matter.
    A canvas that misses its image entirely writes the image's own values back.
    """
    channels, height, width = images.shape[1:]
    canvas_h, canvas_w = canvas.shape[-2:]
    image_rows, image_cols = _clamped_windows(images.shape, origin_y, origin_x, canvas_h, canvas_w)
    local_rows = (image_rows - origin_y[:, None]).clamp(0, canvas_h - 1)[:, None, :, None]
    local_cols = (image_cols - origin_x[:, None]).clamp(0, canvas_w - 1)[:, None, None, :]
    sample = torch.arange(canvas.shape[0], device=canvas.device)[:, None, None, None]
    channel = torch.arange(channels, device=canvas.device)[None, :, None, None]
    index = (rows[:, None, None, None], channel, image_rows[:, None, :, None], image_cols[:, None, None, :])
    values = canvas[sample, channel, local_rows, local_cols]
    misses = (origin_y <= -canvas_h) | (origin_y >= height) | (origin_x <= -canvas_w) | (origin_x >= width)
    keep = misses[:, None, None, None]
    if where is not None:
        keep = keep | ~where[sample, 0, local_rows, local_cols]
    values = torch.where(keep, images[index], values)
    images.index_put_(index, values)
