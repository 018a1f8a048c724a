"""Poisson-editing injection (PE) on per-sample canvases, and the difference mask of the result.

Everything after the placement works on canvases: ``(B, C, Hc, Wc)`` windows around each sample's
pattern (:mod:`cai_aug.engine.resample`), never on full images. The source is resampled into its
canvas, the target is cropped to the same window, ``Omega = dilate(close(mask))`` is solved there and
only the finished canvases are pasted back, so the work per sample scales with the pattern, not with
the image.

Canvases are padded by ``margin + 2`` around the pattern bbox: Omega grows by at most ``margin`` around
the pattern, so at least one known pixel is left between Omega and the canvas edge, which is what
:func:`cai_aug.poisson.poisson_blend_canvases` needs to equal a solve on the full image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cai_aug.engine import rng
from cai_aug.engine.bank import BankStorage
from cai_aug.engine.foreground import close, dilate
from cai_aug.engine.location import Placement
from cai_aug.engine.masks import difference_mask
from cai_aug.engine.resample import crop, paste, render_patterns, windows
from cai_aug.poisson import poisson_blend_canvases

# ITU-R BT.601 luma: a grey target receives the source's luminance, never its colour.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class Injection:
    """The injected canvases of a batch.

    ``images``: ``(B, C, Hc, Wc)`` float in [0, 1], the pseudo anomalies; ``target``: the same windows
    of the normal images; ``region``: ``(B, 1, Hc, Wc)`` bool, the solved region Omega (inside the
    image, empty for samples that were not placed); ``origin_y``, ``origin_x``: ``(B,)`` int64 image
    coordinates of each canvas's top-left pixel; ``iterations`` ``(B,)`` int64 and ``residual`` ``(B,)``
    float32: Poisson solver statistics (0 without Poisson editing); ``placed``: ``(B,)`` bool, the samples
    that were injected (placed, and with a solvable region: one that leaves at least one known pixel).
    """

    images: torch.Tensor
    target: torch.Tensor
    region: torch.Tensor
    origin_y: torch.Tensor
    origin_x: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    placed: torch.Tensor

    def paste(self, images: torch.Tensor, canvases: torch.Tensor | None = None) -> torch.Tensor:
        """Copy of ``images (B, C, H, W)`` with ``canvases`` (default: the injected ones) written back."""
        return paste(images, self.images if canvases is None else canvases, self.origin_y, self.origin_x)


def grey_images(images: torch.Tensor) -> torch.Tensor:
    """Which ``(B, C, H, W)`` images have all channels equal: ``(B,)`` bool.

    On the CPU one ``torch.equal`` per image and channel, which stops at the first differing pixel (at
    once for a colour image) and allocates nothing; elsewhere one comparison for the batch.
    """
    if images.device.type == "cpu":
        return torch.tensor([all(torch.equal(image[0], plane) for plane in image[1:]) for image in images])
    return (images[:, :1] == images[:, 1:]).flatten(1).all(dim=1)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of ``(B, 3, H, W)`` -> ``(B, 1, H, W)``."""
    return (rgb * torch.tensor(LUMA, device=rgb.device)[None, :, None, None]).sum(dim=1, keepdim=True)


def mixed_guidance(keys: torch.Tensor, mode: str) -> torch.Tensor:
    """Which samples are solved with mixed guidance, ``(B,)`` bool, for engine mode ``mode``.

    ``"normal"``/``"mixed"``: none/all; ``"both"``: each sample with probability 1/2, drawn from its key
    (stream ``MODE``), so a sample keeps its guidance whatever batch it is in.
    """
    if mode == "both":
        return rng.uniform(keys, rng.Stream.MODE)[:, 0] < 0.5
    return torch.full(keys.shape, mode == "mixed", dtype=torch.bool, device=keys.device)


def paste_weights(keys: torch.Tensor, largest: float) -> torch.Tensor | float:
    """Per-sample weight of a plain paste over the Poisson result: uniform in ``[0, largest]`` from each
    sample's key (stream ``PASTE``), ``(B,)``; the float 0.0 when ``largest`` is 0 (Poisson alone)."""
    if largest <= 0:
        return 0.0
    return rng.uniform(keys, rng.Stream.PASTE)[:, 0] * largest


def blend_region(pattern_mask: torch.Tensor, margin: int) -> torch.Tensor:
    """Omega: the pattern mask closed, then dilated, by a ``margin x margin`` square.

    Closing fills the pattern's gaps and dilating puts its edge inside Omega (the reference
    implementation: 8x8 kernels). ``pattern_mask``: ``(B, 1, h, w)`` bool -> ``(B, 1, h, w)`` bool.
    """
    if margin <= 0:
        return pattern_mask
    return dilate(close(pattern_mask, margin), margin)


def inject(
    images: torch.Tensor,
    foreground: torch.Tensor,
    storage: BankStorage,
    source: torch.Tensor,
    placement: Placement,
    placed: torch.Tensor,
    *,
    margin: int = 8,
    mode: str | torch.Tensor = "normal",
    use_poisson: bool = True,
    use_ils: bool = True,
    grey_injection: bool = True,
    paste_weight: torch.Tensor | float = 0.0,
    rtol: float = 1e-4,
    atol: float | None = None,
    max_iter: int = 200,
    backend: str = "auto",
    rows: torch.Tensor | None = None,
) -> Injection:
    """PE: render each source into a canvas at its placement and blend it into the target there.

    Args:
        images: ``(B, C, H, W)`` float targets in [0, 1], C = 1 or 3.
        foreground: ``(B, 1, H, W)`` bool; the result keeps the target outside it (foreground filter)
            unless ``use_ils`` is False.
        storage: the bank's storage on the images' device.
        source: ``(N,)`` int64 source indices (>= 0), one per canvas; every other per-sample argument is
            ``(N,)`` too.
        placement: centres and pattern sizes (:func:`cai_aug.engine.location.place_pattern`).
        placed: ``(B,)`` bool; samples without a placement get an empty region and stay unchanged.
        margin: Omega's closing and dilation size (:func:`blend_region`).
        mode: ``"normal"`` or ``"mixed"`` Poisson guidance, or a ``(B,)`` bool tensor: True where a
            sample is solved with mixed guidance (the two groups are solved apart).
        use_poisson: False pastes the pattern under its mask instead (the "without PE" ablation).
        grey_injection: a 3-channel target whose channels are equal receives the source's luminance
            only (a 1-channel target always does: it has room for nothing else).
        paste_weight: ``(B,)`` or a float in [0, 1]: inside the pattern mask the Poisson result is moved
            this far towards a plain paste of the source (0: Poisson editing alone; 1: the source's own
            pixels with the pattern's crisp edge, the solve still smoothing Omega's rim around it).
        rtol, atol, max_iter, backend: Poisson solver settings (:func:`cai_aug.poisson.poisson_blend_canvases`).
        rows: ``(N,)`` int64, the image of each canvas (several anomalies of one image are several canvases
            of it); None: canvas ``n`` is image ``n`` (N = B).
    Returns:
        the :class:`Injection` (``N`` canvases of size ``max pattern + 2 (margin + 2)``; one host sync for it).
        A region that covers every in-image pixel of its canvas (an image hardly larger than the pattern)
        has no Dirichlet data: that sample is not injected (``placed`` False) and its attempt fails.
    """
    device = images.device
    batch, channels = source.shape[0], images.shape[1]
    pad = margin + 2
    canvas_h = int(placement.height.max()) + 2 * pad if batch else 2 * pad  # no sample: empty canvases
    canvas_w = int(placement.width.max()) + 2 * pad if batch else 2 * pad
    pattern_rgb, pattern_mask = render_patterns(
        storage, source, placement.height, placement.width, canvas_h, canvas_w, pad
    )
    if channels == 1:
        pattern_rgb = luminance(pattern_rgb)
    elif grey_injection:
        # a grey target given as 3 equal channels receives the source's luminance only: colour that a
        # grey camera never records would be a shortcut for the detector
        grey = grey_images(images)
        grey = grey if rows is None else grey[rows.to(grey.device)]
        if bool(grey.any()):  # colour targets (the usual case) skip two passes over the canvases
            grey_rgb = luminance(pattern_rgb).expand(-1, 3, -1, -1)
            pattern_rgb = torch.where(grey[:, None, None, None], grey_rgb, pattern_rgb)
    origin_y = placement.centre[:, 0] - placement.height // 2 - pad
    origin_x = placement.centre[:, 1] - placement.width // 2 - pad
    target, inside = crop(images, origin_y, origin_x, canvas_h, canvas_w, rows)
    region = blend_region(pattern_mask, margin) & inside & placed[:, None, None, None]
    if use_poisson:
        # no known pixel left on the canvas: the Poisson system would be singular, the sample is redrawn
        solvable = (inside & ~region).flatten(1).any(dim=1)
        region = region & solvable[:, None, None, None]
        placed = placed & solvable

    iterations = torch.zeros(batch, dtype=torch.int64, device=device)
    residual = torch.zeros(batch, dtype=torch.float32, device=device)
    if use_poisson:
        if isinstance(mode, torch.Tensor):
            mode = mode.to(device=device, dtype=torch.bool)
        blended, stats = poisson_blend_canvases(
            target, pattern_rgb, region, inside, mode, rtol=rtol, atol=atol, max_iter=max_iter, backend=backend
        )
        iterations, residual = stats.iterations.to(device), stats.residual.to(device).float()
        # in place: the solve is a new tensor (or, with nothing to solve, the target: already in [0, 1])
        blended = blended.clamp_(0, 1)
        if isinstance(paste_weight, torch.Tensor) or paste_weight > 0:
            weight = torch.as_tensor(paste_weight, dtype=blended.dtype, device=device).reshape(-1, 1, 1, 1)
            under = (pattern_mask & inside & placed[:, None, None, None]).to(blended.dtype)
            blended = blended + (weight * under) * (pattern_rgb - blended)
    else:
        blended = torch.where(pattern_mask & inside, pattern_rgb, target)
    if use_ils:
        blended = torch.where(windows(foreground, origin_y, origin_x, canvas_h, canvas_w, rows), blended, target)
    return Injection(blended, target, region, origin_y, origin_x, iterations, residual, placed)


def injection_mask(injection: Injection, threshold: float, median: int = 7, rule: str = "majority") -> torch.Tensor:
    """The difference mask of the injected canvases, ``(B, 1, Hc, Wc)`` bool (see :func:`difference_mask`,
    ``rule`` one of its rules).

    On the canvas it equals the full image's: outside Omega nothing changed, so the median filter sees
    the same zeros at the canvas edge as beyond it.
    """
    return difference_mask(injection.images, injection.target, injection.region, threshold, median, rule)
