"""Public entry points of :mod:`cai_aug.poisson` and the scheduling of a batch of solves.

:func:`poisson_blend` works on whole images ``(B, C, H, W)``, :func:`poisson_blend_canvases` on
per-sample canvases ``(B, C, h, w)`` cut around the patterns (with ``inside``: which canvas pixels lie
in the image); a whole image is the canvas that lies entirely in the image, so both share one
schedule:

1. per sample, a tight region of interest (ROI: the bounding box of the unknowns plus one pixel,
   clipped to the in-image part of the canvas), all found with one host transfer;
2. samples are grouped in buckets by multigrid depth (about log2 of the larger ROI side), and each
   bucket is gathered into ROI canvases of its largest ROI, rounded up to even sides
   (:mod:`cai_aug.poisson.system` assembles the system there; on the CPU the canvases and the solver's
   arrays are scratch memory reused from one solve to the next, :mod:`cai_aug.poisson.scratch`);
3. a bucket that does not fit in memory is split into chunks;
4. each chunk is solved by the torch CG loop (:mod:`cai_aug.poisson.pcg`) or by the CuPy kernels
   (:mod:`cai_aug.poisson.cupy_backend`), and its unknowns are scattered back.

On the CPU, where the compiled solve of :mod:`cai_aug.poisson.cpu_kernel` builds, steps 2-4 are one call
instead: it sets up, solves and writes back every sample on its own ROI, one sample at a time (same
system, hierarchy and stopping rules as a bucket; the torch loop is its fallback).

A sample's result does not depend on its batch companions: same ROI, same hierarchy, frozen when it
has converged. The compiled CPU solve gives the same bits in any batch; the torch loop (CUDA, or a CPU
without a C++ compiler) solves a bucket on its largest sample's canvas, where the inner products sum
over another length and round differently: the same decisions, pixels equal to about 1e-6 (measured
with the torch loop on the CPU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from cai_aug.poisson import cpu_kernel, cupy_backend
from cai_aug.poisson import multigrid as mg
from cai_aug.poisson.constants import MAX_PLANES
from cai_aug.poisson.pcg import pcg
from cai_aug.poisson.scratch import scratch
from cai_aug.poisson.system import CanvasSystem, assemble

__all__ = ["PoissonStats", "poisson_blend", "poisson_blend_canvases"]

logger = logging.getLogger(__name__)

_MODES = ("normal", "mixed")
_BACKENDS = ("auto", "torch", "cupy")
# arrays per canvas pixel: per channel (CG vectors + multigrid temporaries) and per sample
# (operator weights); times 4/3 for the coarse levels
_VALUE_ARRAYS = 11.0
_WEIGHT_ARRAYS = 8.0
# share of the free GPU memory a solve may use before a batch is split; CPU budget in bytes
MEMORY_FRACTION = 0.6
CPU_MEMORY_BUDGET = 2 * 1024**3


@dataclass
class PoissonStats:
    """Per-sample solver statistics.

    Attributes:
        iterations: CG iterations ``(B,)`` int64 (max over channels; 0 for an empty mask).
        residual: final relative residual ``||b - A x|| / ||b||`` ``(B,)`` (max over channels).
        backend: ``"torch"`` or ``"cupy"``.
    """

    iterations: torch.Tensor
    residual: torch.Tensor
    backend: str


# ----------------------------------------------------------------------------------------------------
# validation


def _check_inputs(
    target: torch.Tensor,
    source: torch.Tensor,
    mask: torch.Tensor,
    inside: torch.Tensor | None,
    mode: str,
    backend: str,
    rtol: float,
    atol: float | None,
    max_iter: int,
    caller: str,
    mask_name: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate and return the mask (and ``inside``) as ``(B, 1, H, W)`` bool."""
    named = [("target", target), ("source", source), (mask_name, mask)]
    if inside is not None:
        named.append(("inside", inside))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(mode, torch.Tensor):
        if mode.dtype != torch.bool or mode.shape != target.shape[:1]:
            raise ValueError(f"{caller}: a per-sample mode must be a (B,) bool tensor (True: mixed), got {mode!r}")
    elif mode not in _MODES:
        raise ValueError(f"{caller}: mode must be one of {_MODES}, got {mode!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"{caller}: backend must be one of {_BACKENDS}, got {backend!r}")
    if not (isinstance(rtol, (int, float)) and rtol > 0):
        raise ValueError(f"{caller}: rtol must be a positive number, got {rtol!r}")
    if atol is not None and not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol > 0):
        raise ValueError(f"{caller}: atol must be None or a positive number, got {atol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"{caller}: max_iter must be a non-negative int, got {max_iter!r}")
    if target.ndim != 4:
        raise ValueError(f"{caller}: target must be (B, C, H, W), got shape {tuple(target.shape)}")
    if source.shape != target.shape:
        raise ValueError(f"{caller}: source shape {tuple(source.shape)} != target shape {tuple(target.shape)}")
    if not target.is_floating_point() or not source.is_floating_point():
        raise TypeError(f"{caller}: target and source must be floating point, got {target.dtype} and {source.dtype}")
    if target.dtype != source.dtype:
        raise TypeError(f"{caller}: target dtype {target.dtype} != source dtype {source.dtype}")
    b, _, h, w = target.shape
    checked = []
    for name, m in named[2:]:
        if m.device != target.device or source.device != target.device:
            raise ValueError(f"{caller}: target, source and {name} must be on the same device")
        if m.dtype != torch.bool:
            raise TypeError(f"{caller}: {name} must be a bool tensor, got {m.dtype}")
        if m.ndim == 3:
            m = m.unsqueeze(1)
        if m.shape != (b, 1, h, w):
            raise ValueError(
                f"{caller}: {name} must be (B, 1, H, W) or (B, H, W) = {(b, 1, h, w)}, got {tuple(m.shape)}"
            )
        checked.append(m)
    return checked[0], (checked[1] if inside is not None else None)


# ----------------------------------------------------------------------------------------------------
# regions of interest


def _rois(omega: torch.Tensor, inside: torch.Tensor | None) -> tuple[list[int], ...]:
    """Tight ROI per canvas: the bbox of ``omega`` plus one pixel, clipped to the canvas.

    Returns ``(y0, x0, h, w, nonempty, singular)`` as lists, where ``singular`` says that ``omega``
    covers every in-image pixel of the canvas (no Dirichlet data). One host transfer for the batch.
    """
    m = omega[:, 0]
    b, h, w = m.shape
    rows, cols = _any_along(m, 2), _any_along(m, 1)
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1)
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1)
    nonempty = rows.any(dim=1)
    known = ~m if inside is None else inside[:, 0] & ~m
    singular = nonempty & ~known.flatten(1).any(dim=1)
    if inside is None:
        lo_y = lo_x = torch.zeros_like(y0)
        hi_y, hi_x = torch.full_like(y0, h - 1), torch.full_like(x0, w - 1)
    else:
        # clip to the in-image part of the canvas too: for a canvas that overhangs the image border
        # the ROI (hence the multigrid hierarchy and the iterates) is then exactly the one the pasted
        # full image gets in poisson_blend
        in_rows, in_cols = _any_along(inside[:, 0], 2), _any_along(inside[:, 0], 1)
        lo_y = torch.where(in_rows, ar_h, h).amin(dim=1).clamp_max(h - 1)
        hi_y = torch.where(in_rows, ar_h, 0).amax(dim=1)
        lo_x = torch.where(in_cols, ar_w, w).amin(dim=1).clamp_max(w - 1)
        hi_x = torch.where(in_cols, ar_w, 0).amax(dim=1)
    y0 = torch.maximum(y0 - 1, lo_y)
    x0 = torch.maximum(x0 - 1, lo_x)
    y1 = torch.minimum(y1 + 1, hi_y)
    x1 = torch.minimum(x1 + 1, hi_x)
    # empty masks: any valid 1-pixel ROI (they are skipped)
    y0, x0 = torch.where(nonempty, y0, 0), torch.where(nonempty, x0, 0)
    y1, x1 = torch.where(nonempty, y1, 0), torch.where(nonempty, x1, 0)
    packed = torch.stack([y0, x0, y1 - y0 + 1, x1 - x0 + 1, nonempty.long(), singular.long()]).cpu().tolist()
    return tuple(packed)


def _any_along(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``mask.any(dim)`` of a bool tensor as the max of its bytes: the same values, several times faster on
    the CPU along one dimension."""
    return mask.view(torch.uint8).amax(dim=dim).bool()


def _buckets(indices: list[int], hs: list[int], ws: list[int]) -> list[list[int]]:
    """Group samples by the depth of their multigrid hierarchy (about log2 of the larger ROI side).

    A handful of groups at most, each solved as one batch on a canvas of its largest ROI. Equal depth
    within a group matters beyond speed: aggregation is anchored at the canvas origin, so a sample gets
    exactly the same hierarchy (and the same iterates) on a larger canvas as on its own, which keeps
    its result independent of its batch companions.
    """
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(mg.depth(max(hs[i], ws[i])), []).append(i)
    return [groups[k] for k in sorted(groups)]


def _bytes_per_pixel(channels: int, itemsize: int) -> float:
    return (_VALUE_ARRAYS * channels + _WEIGHT_ARRAYS) * itemsize * 4.0 / 3.0


def _max_samples(device: torch.device, canvas_pixels: int, channels: int, itemsize: int) -> int:
    """How many canvases of a bucket fit in memory at once (batches that do not fit are split)."""
    per_sample = _bytes_per_pixel(channels, itemsize) * canvas_pixels
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # memory torch has cached but not handed out is free for us too
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = MEMORY_FRACTION * free
    else:
        budget = CPU_MEMORY_BUDGET
    # one CUDA launch takes at most MAX_PLANES (sample, channel) planes
    return max(1, min(int(budget // max(per_sample, 1.0)), MAX_PLANES // max(channels, 1)))


def _gather(
    images: torch.Tensor, idx: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, hc: int, wc: int
) -> torch.Tensor:
    """Canvases ``(N, C, hc, wc)`` cut from ``images (B, C, H, W)`` at ``(y0, x0)``, indices clamped."""
    _, _, h, w = images.shape
    iy = (y0[:, None] + torch.arange(hc, device=images.device)).clamp_max(h - 1)
    ix = (x0[:, None] + torch.arange(wc, device=images.device)).clamp_max(w - 1)
    out = images[idx[:, None, None], :, iy[:, :, None], ix[:, None, :]]  # (N, hc, wc, C)
    return out.permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------------
# public entry point


def _use_cupy(device: torch.device, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "cupy":
        if device.type != "cuda":
            raise ValueError("poisson_blend: backend='cupy' needs CUDA tensors")
        if not cupy_backend.available():
            raise RuntimeError("poisson_blend: backend='cupy' but cupy is not importable")
        return True
    if device.type != "cuda":
        return False
    if cupy_backend.available():
        return True
    cupy_backend.log_fallback_once()
    return False


def poisson_blend(
    target: torch.Tensor,
    source: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "normal",
    *,
    rtol: float = 1e-4,
    atol: float | None = None,
    max_iter: int = 200,
    backend: str = "auto",
    return_stats: bool = False,
):
    """Seamless cloning of ``source`` into ``target`` inside ``mask`` (Pérez et al. 2003, eq. 7).

    Args:
        target: images ``(B, C, H, W)``, floating point.
        source: guidance images ``(B, C, H, W)``, same dtype and device (already placed).
        mask: unknowns ``(B, 1, H, W)`` or ``(B, H, W)``, bool.
        mode: ``"normal"`` (source gradients) or ``"mixed"`` (larger of source and target gradient).
        rtol: relative residual ``||b - A x|| / ||b||`` to reach per sample and channel.
        atol: ``None`` (default: solve to ``rtol``) or a largest visible error in image units, e.g.
            ``1 / 255`` for images in ``[0, 1]``: a sample and channel also stops once its estimated
            largest pixel error is below ``atol`` (the fast mode, see ``ATOL_STEP_FACTOR`` in
            :mod:`cai_aug.poisson.constants`); whichever of ``rtol`` and ``atol`` is met first.
        max_iter: CG iteration limit.
        backend: ``"auto"`` (CuPy kernels for CUDA tensors when cupy is importable, else torch),
            ``"torch"`` or ``"cupy"``.
        return_stats: also return :class:`PoissonStats`.

    Returns:
        ``(B, C, H, W)`` in the input dtype, not clamped: the solution on the mask, ``target``
        elsewhere. With ``return_stats=True`` a tuple ``(out, stats)``.
    """
    mask, _ = _check_inputs(target, source, mask, None, mode, backend, rtol, atol, max_iter, "poisson_blend", "mask")
    # a whole image is a canvas that lies entirely in the image
    out, stats = _blend(target, source, mask, None, mode, rtol, atol, max_iter, backend, "poisson_blend")
    return (out, stats) if return_stats else out


def poisson_blend_canvases(
    target: torch.Tensor,
    source: torch.Tensor,
    omega: torch.Tensor,
    inside: torch.Tensor | None = None,
    mode: str | torch.Tensor = "normal",
    *,
    rtol: float = 1e-4,
    atol: float | None = None,
    max_iter: int = 200,
    backend: str = "auto",
) -> tuple[torch.Tensor, PoissonStats]:
    """:func:`poisson_blend` on per-sample canvases cut around the patterns: no full images needed.

    Canvas pixel ``(y, x)`` of sample ``i`` is one image pixel; ``inside`` says which canvas pixels lie
    in the image. Two pixels are neighbours when they are 4-adjacent on the canvas and both inside, so
    the image border is wherever ``inside`` ends, and the canvas edge counts as an image border too:
    the result equals :func:`poisson_blend` on the pasted images as long as every unknown that is not
    on the image border has its 4 neighbours on the canvas (leave a ring of at least one known pixel
    between ``omega`` and the canvas edge where the canvas edge lies in the image).

    Args:
        target: target canvases ``(B, C, h, w)``, floating point.
        source: guidance canvases ``(B, C, h, w)``, same dtype and device.
        omega: unknowns ``(B, 1, h, w)`` or ``(B, h, w)``, bool; pixels outside ``inside`` are ignored.
        inside: canvas pixels that lie in the image ``(B, 1, h, w)`` or ``(B, h, w)``, bool;
            ``None``: all of them.
        mode: ``"normal"`` or ``"mixed"`` (see :func:`poisson_blend`), or a ``(B,)`` bool tensor: True
            where a sample is solved with mixed guidance (each sample's result equals its solve alone).
        rtol, atol, max_iter, backend: see :func:`poisson_blend`.

    Returns:
        ``(canvases, stats)``: ``(B, C, h, w)`` in the input dtype, not clamped, with the solution on
        ``omega & inside`` and ``target`` elsewhere; :class:`PoissonStats` per sample.

    Raises:
        ValueError: when ``omega`` covers every in-image pixel of a canvas (no Dirichlet data: singular).
    """
    caller = "poisson_blend_canvases"
    omega, inside = _check_inputs(target, source, omega, inside, mode, backend, rtol, atol, max_iter, caller, "omega")
    if inside is not None:
        omega = omega & inside
    return _blend(target, source, omega, inside, mode, rtol, atol, max_iter, backend, caller)


def _blend(
    target: torch.Tensor,
    source: torch.Tensor,
    omega: torch.Tensor,
    inside: torch.Tensor | None,
    mode: str | torch.Tensor,
    rtol: float,
    atol: float | None,
    max_iter: int,
    backend: str,
    caller: str,
) -> tuple[torch.Tensor, PoissonStats]:
    """Schedule the solve of validated canvases: tight ROIs, size buckets, memory chunks, backend."""
    bsz, channels, h, w = target.shape
    device = target.device
    work_dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
    use_cupy = bsz > 0 and _use_cupy(device, backend)
    backend_name = "cupy" if use_cupy else "torch"
    iterations = torch.zeros(bsz, dtype=torch.int64, device=device)
    residual = torch.zeros(bsz, dtype=work_dtype, device=device)
    out = target.clone()
    if bsz == 0 or channels == 0 or h == 0 or w == 0:
        return out, PoissonStats(iterations, residual, backend_name)

    y0s, x0s, hs, ws, nonempty, singular = _rois(omega, inside)
    bad = [i for i in range(bsz) if singular[i]]
    if bad:
        where = "whole image" if inside is None else "whole image part of the canvas"
        raise ValueError(
            f"{caller}: the mask of sample(s) {bad} covers the {where}: without any known "
            "pixel the Poisson system has no Dirichlet data and is singular"
        )
    todo = [i for i in range(bsz) if nonempty[i]]
    # one mode per solve: with a mode per sample the two guidances are two sets of the same batch, each
    # solved in place on the shared arrays (no sub-batch copies)
    mixed = [mode == "mixed"] * bsz if isinstance(mode, str) else mode.tolist()
    by_mode = [(name, [i for i in todo if mixed[i] == (name == "mixed")]) for name in _MODES]
    t_work = target.to(work_dtype)
    s_work = source.to(work_dtype)
    out_work = t_work.clone() if work_dtype != target.dtype else out

    def run(solver) -> None:
        for name, subset in by_mode:
            for group in _buckets(subset, hs, ws):
                run_group(solver, name, group)

    def run_group(solver, mode: str, group: list[int]) -> None:
        # even sides: the CPU's sub-lattice layout needs them (and would pad otherwise); the extra
        # row / column lies outside every ROI, and coarsening pads to even sides anyway
        hc = _round_even(max(hs[i] for i in group))
        wc = _round_even(max(ws[i] for i in group))
        chunk = _max_samples(device, hc * wc, channels, torch.finfo(work_dtype).bits // 8)
        for start in range(0, len(group), chunk):
            sel = group[start : start + chunk]
            _solve_group(
                t_work, s_work, omega, inside, out_work, iterations, residual, sel,
                [y0s[i] for i in sel], [x0s[i] for i in sel], [hs[i] for i in sel], [ws[i] for i in sel],
                hc, wc, mode, rtol, atol, max_iter, solver,
            )  # fmt: skip

    def run_without_cupy() -> None:
        if not cpu_kernel.enabled(work_dtype, device):
            run(_solve_bucket_torch)
            return
        # the compiled CPU solve takes the whole batch in one call per mode, sample by sample on its own
        # ROI: no buckets, canvases or memory chunks to schedule (see cai_aug.poisson.cpu_kernel)
        for name, subset in by_mode:
            if not subset:
                continue
            rois = [(i, y0s[i], x0s[i], hs[i], ws[i]) for i in subset]
            it, rel = cpu_kernel.blend(t_work, s_work, omega, inside, out_work, rois, name, rtol, atol, max_iter)
            idx = torch.tensor(subset, dtype=torch.int64)
            iterations[idx] = it.amax(dim=1)
            residual[idx] = rel.amax(dim=1).to(residual.dtype)

    if use_cupy:
        try:
            run(cupy_backend.solve_bucket)
        except Exception as exc:
            if backend == "cupy":
                raise
            # "auto" promises the best path that works: a CuPy failure (NVRTC, driver, API) must not
            # break the pipeline; groups are independent, so the torch path simply redoes them all
            cupy_backend.disable(exc)
            backend_name = "torch"
            run_without_cupy()
    else:
        run_without_cupy()
    if out_work is not out:
        out = out_work.to(target.dtype)
    return out, PoissonStats(iterations, residual, backend_name)


def _round_even(n: int) -> int:
    return n + n % 2


def _solve_bucket_torch(system: CanvasSystem, rtol: float, max_iter: int, atol: float | None):
    return pcg(system, rtol, max_iter, atol)


def _solve_group(
    t_work, s_work, omega_all, inside_all, out_work, iterations, residual, sel, y0, x0, hs, ws, hc, wc, mode, rtol,
    atol, max_iter, solver,
) -> None:  # fmt: skip
    """Gather one group of samples into ROI canvases, solve, scatter the unknowns back (in place)."""
    device = t_work.device
    # one host-to-device copy for all per-sample integers of the group
    idx, y0t, x0t, ht, wt = torch.tensor([sel, y0, x0, hs, ws], dtype=torch.int64).to(device).unbind(0)
    # ROI extents: a canvas pixel beyond its sample's own ROI is no pixel at all
    inside = (torch.arange(hc, device=device)[None, :, None] < ht[:, None, None]) & (
        torch.arange(wc, device=device)[None, None, :] < wt[:, None, None]
    )
    inside = inside[:, None]
    if device.type == "cuda":
        # one indexing kernel per array whatever the group size (indices clamped at the canvas edge)
        t = _gather(t_work, idx, y0t, x0t, hc, wc).contiguous()
        s = _gather(s_work, idx, y0t, x0t, hc, wc).contiguous()
        omega = _gather(omega_all, idx, y0t, x0t, hc, wc)
        if inside_all is not None:
            inside = inside & _gather(inside_all, idx, y0t, x0t, hc, wc)
    else:
        # on the CPU, plain slice copies per sample are about 10x faster than advanced indexing; the
        # zeros beyond a sample's ROI are outside ``inside`` and never read
        t = _cut("target", t_work, sel, y0, x0, hs, ws, hc, wc)
        s = _cut("source", s_work, sel, y0, x0, hs, ws, hc, wc)
        omega = _cut("omega", omega_all, sel, y0, x0, hs, ws, hc, wc)
        if inside_all is not None:
            inside = inside & _cut("inside", inside_all, sel, y0, x0, hs, ws, hc, wc)
    omega = omega & inside
    system = assemble(t, s, omega, inside, mode, reuse=True)
    x, it, rel = solver(system, rtol, max_iter, atol)
    iterations[idx] = it.amax(dim=1)
    residual[idx] = rel.amax(dim=1).to(residual.dtype)
    x = x.to(out_work.dtype)
    if device.type == "cuda":
        # scatter the unknowns only: (n, y, x) positions of Omega on the canvases
        n_i, y_i, x_i = omega[:, 0].nonzero(as_tuple=True)
        vals = x.permute(0, 2, 3, 1)[n_i, y_i, x_i]  # (K, C)
        out_work.permute(0, 2, 3, 1).index_put_((idx[n_i], y0t[n_i] + y_i, x0t[n_i] + x_i), vals)
    else:
        for k, i in enumerate(sel):
            roi = out_work[i, :, y0[k] : y0[k] + hs[k], x0[k] : x0[k] + ws[k]]
            roi.copy_(torch.where(omega[k, :, : hs[k], : ws[k]], x[k, :, : hs[k], : ws[k]], roi))


def _cut(name: str, images: torch.Tensor, sel, y0, x0, hs, ws, hc: int, wc: int) -> torch.Tensor:
    """Canvases ``(N, C, hc, wc)``: sample ``sel[k]``'s ROI at the top left corner, zeros beyond.

    A scratch array (:mod:`cai_aug.poisson.scratch`) named ``name``: valid for one group's solve.
    """
    out = scratch(("cut", name), (len(sel), images.shape[1], hc, wc), images.dtype).zero_()
    for k, i in enumerate(sel):
        out[k, :, : hs[k], : ws[k]] = images[i, :, y0[k] : y0[k] + hs[k], x0[k] : x0[k] + ws[k]]
    return out
