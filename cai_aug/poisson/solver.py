"""Batched masked Poisson blending (Pérez et al. 2003) by multigrid-preconditioned conjugate gradient.

For every sample and channel the unknowns are the mask's pixels ``Omega`` and the system is (Pérez
eq. 7, SPEC step 5)

    |N_p| I(p) - sum_{q in N_p ∩ Omega} I(q) = sum_{q in N_p \\ Omega} target(q) + sum_{q in N_p} v(p, q)

with ``N_p`` the 4-neighbours of ``p`` inside the image. ``v(p, q) = s(p) - s(q)`` in normal mode; in
mixed mode the one of ``s(p) - s(q)`` and ``t(p) - t(q)`` with the larger magnitude (the source one
on ties, as in Pérez et al.).

Each sample's region of interest (mask bounding box plus one pixel, clipped to the image) is gathered
into a canvas shared by samples of similar ROI size (a few buckets), and all canvases of a bucket are
solved together by conjugate gradient preconditioned with a symmetric aggregation-multigrid V-cycle
(:mod:`cai_aug.poisson.multigrid`). Convergence is decided per sample and channel on the device
every iteration; a converged sample and channel is frozen, so its result never depends on its batch
companions. The host looks at the flags only every few iterations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from cai_aug.poisson import multigrid as mg

__all__ = ["PoissonStats", "poisson_blend"]

logger = logging.getLogger(__name__)

_MODES = ("normal", "mixed")
_BACKENDS = ("auto", "torch", "cupy")
# the host checks "all converged?" this often; convergence itself is tracked on the device
CHECK_EVERY = 4
# CG stops at this fraction of rtol, so that the error against the exact solution is within rtol too:
# error / residual ratios up to about 15 were measured on random masks that leave only a few known
# pixels (nearly singular systems); this costs one or two iterations more than stopping at rtol
STOP_FACTOR = 0.1
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
    target: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, mode: str, backend: str
) -> torch.Tensor:
    """Validate and return the mask as ``(B, 1, H, W)`` bool."""
    for name, t in (("target", target), ("source", source), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"poisson_blend: {name} must be a torch.Tensor, got {type(t).__name__}")
    if mode not in _MODES:
        raise ValueError(f"poisson_blend: mode must be one of {_MODES}, got {mode!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"poisson_blend: backend must be one of {_BACKENDS}, got {backend!r}")
    if target.ndim != 4:
        raise ValueError(f"poisson_blend: target must be (B, C, H, W), got shape {tuple(target.shape)}")
    if source.shape != target.shape:
        raise ValueError(f"poisson_blend: source shape {tuple(source.shape)} != target shape {tuple(target.shape)}")
    if not target.is_floating_point() or not source.is_floating_point():
        raise TypeError(
            f"poisson_blend: target and source must be floating point, got {target.dtype} and {source.dtype}"
        )
    if target.dtype != source.dtype:
        raise TypeError(f"poisson_blend: target dtype {target.dtype} != source dtype {source.dtype}")
    if source.device != target.device or mask.device != target.device:
        raise ValueError("poisson_blend: target, source and mask must be on the same device")
    if mask.dtype != torch.bool:
        raise TypeError(f"poisson_blend: mask must be a bool tensor, got {mask.dtype}")
    b, _, h, w = target.shape
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.shape != (b, 1, h, w):
        raise ValueError(
            f"poisson_blend: mask must be (B, 1, H, W) or (B, H, W) = {(b, 1, h, w)}, got {tuple(mask.shape)}"
        )
    return mask


# ----------------------------------------------------------------------------------------------------
# regions of interest


def _rois(mask: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Mask bbox + 1 px clipped to the image, per sample: ``(y0, x0, h, w, nonempty)`` as lists.

    One host transfer for the whole batch.
    """
    m = mask[:, 0]
    b, h, w = m.shape
    rows, cols = m.any(dim=2), m.any(dim=1)
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1)
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1)
    nonempty = rows.any(dim=1)
    y0 = (y0 - 1).clamp(0, h - 1)
    x0 = (x0 - 1).clamp(0, w - 1)
    y1 = (y1 + 1).clamp(0, h - 1)
    x1 = (x1 + 1).clamp(0, w - 1)
    packed = torch.stack([y0, x0, y1 - y0 + 1, x1 - x0 + 1, nonempty.long()]).cpu().tolist()
    return tuple(packed)  # type: ignore[return-value]


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
    # CUDA grids take at most 65535 (sample, channel) planes in y
    return max(1, min(int(budget // max(per_sample, 1.0)), 65535 // max(channels, 1)))


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
# system assembly on canvases


@dataclass
class CanvasSystem:
    """The masked system of a bucket; values ``(N, C, h, w)``, weights ``(N, 1, h, w)``."""

    rhs: torch.Tensor
    omega: torch.Tensor
    east: torch.Tensor
    south: torch.Tensor
    dirichlet: torch.Tensor


def _guidance(s_p, s_q, t_p, t_q, mode: str) -> torch.Tensor:
    ds = s_p - s_q
    if mode == "normal":
        return ds
    dt = t_p - t_q
    return torch.where(dt.abs() > ds.abs(), dt, ds)


def assemble(t: torch.Tensor, s: torch.Tensor, omega: torch.Tensor, inside: torch.Tensor, mode: str):
    """Right-hand side and operator weights of Pérez eq. 7 on canvases.

    Args:
        t, s: target and source canvases ``(N, C, h, w)``.
        omega: unknowns ``(N, 1, h, w)`` bool.
        inside: canvas pixels that lie in the image ``(N, 1, h, w)`` bool (pairs count only between them).
        mode: ``"normal"`` or ``"mixed"``.
    """
    dt = t.dtype
    om = omega.to(dt)
    known_t = t * (inside & ~omega).to(dt)
    # pair validity: both ends inside the image
    ve = (inside[..., :, :-1] & inside[..., :, 1:]).to(dt)
    vs = (inside[..., :-1, :] & inside[..., 1:, :]).to(dt)
    rhs = torch.zeros_like(t)
    # p = left/up end, q = right/down end: p gets v(p,q) + known t(q); q gets -v(p,q) + known t(p)
    v = _guidance(s[..., :, :-1], s[..., :, 1:], t[..., :, :-1], t[..., :, 1:], mode) * ve
    rhs[..., :, :-1] += v + known_t[..., :, 1:] * ve
    rhs[..., :, 1:] += -v + known_t[..., :, :-1] * ve
    v = _guidance(s[..., :-1, :], s[..., 1:, :], t[..., :-1, :], t[..., 1:, :], mode) * vs
    rhs[..., :-1, :] += v + known_t[..., 1:, :] * vs
    rhs[..., 1:, :] += -v + known_t[..., :-1, :] * vs
    rhs = rhs * om

    east = torch.zeros_like(om)
    south = torch.zeros_like(om)
    east[..., :, :-1] = om[..., :, :-1] * om[..., :, 1:]
    south[..., :-1, :] = om[..., :-1, :] * om[..., 1:, :]
    # Dirichlet weight: in-image neighbours that are known
    kn = (inside & ~omega).to(dt)
    dirichlet = torch.zeros_like(om)
    dirichlet[..., :, :-1] += kn[..., :, 1:] * ve
    dirichlet[..., :, 1:] += kn[..., :, :-1] * ve
    dirichlet[..., :-1, :] += kn[..., 1:, :] * vs
    dirichlet[..., 1:, :] += kn[..., :-1, :] * vs
    dirichlet = dirichlet * om
    return CanvasSystem(rhs, omega, east, south, dirichlet)


# ----------------------------------------------------------------------------------------------------
# preconditioned conjugate gradient, batched


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel) inner product: ``(N, C, h, w)`` x2 -> ``(N, C)``."""
    return torch.linalg.vecdot(a.flatten(2), b.flatten(2))


def pcg(
    system: CanvasSystem, rtol: float, max_iter: int, check_every: int = CHECK_EVERY
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve every (sample, channel) of a bucket.

    Returns ``x (N, C, h, w)``, iterations ``(N, C)`` and the true relative residual ``(N, C)``.

    A (sample, channel) is frozen as soon as its recursive residual reaches ``STOP_FACTOR * rtol * ||b||``; its
    update is multiplied by zero from then on, decided on the device, so no host sync is needed for
    it. The host checks ``any active`` every ``check_every`` iterations to stop early.
    """
    levels = mg.build_hierarchy(system.east, system.south, system.dirichlet)
    fine = levels[0]
    b = system.rhs
    x = torch.zeros_like(b)
    r = b.clone()
    bnorm = _dot(b, b).sqrt()
    tol2 = (STOP_FACTOR * rtol * bnorm) ** 2
    rr = _dot(r, r)
    active = rr > tol2
    iters = torch.zeros_like(bnorm, dtype=torch.int64)
    z = mg.vcycle(levels, r)
    p = z.clone()
    rz = _dot(r, z)
    for it in range(max_iter):
        if it % check_every == 0 and not bool(active.any()):
            break
        q = mg.apply_operator(p, fine)
        pq = _dot(p, q)
        alpha = torch.where(active & (pq > 0), rz / torch.where(pq > 0, pq, 1.0), 0.0)
        a4 = alpha[..., None, None]
        x.addcmul_(a4, p)
        r.addcmul_(a4, q, value=-1.0)
        iters += active.long()
        rr = _dot(r, r)
        active = active & (rr > tol2)
        z = mg.vcycle(levels, r)
        rz_new = _dot(r, z)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        p = torch.addcmul(z, beta[..., None, None], p)
        rz = rz_new
    # true residual for the report
    res = mg.residual(b, x, fine)
    rel = torch.where(bnorm > 0, _dot(res, res).sqrt() / torch.where(bnorm > 0, bnorm, 1.0), 0.0)
    return x, iters, rel


# ----------------------------------------------------------------------------------------------------
# public entry point


def _use_cupy(device: torch.device, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "cupy":
        if device.type != "cuda":
            raise ValueError("poisson_blend: backend='cupy' needs CUDA tensors")
        from cai_aug.poisson import cupy_backend as poisson_cupy

        if not poisson_cupy.available():
            raise RuntimeError("poisson_blend: backend='cupy' but cupy is not importable")
        return True
    if device.type != "cuda":
        return False
    try:
        from cai_aug.poisson import cupy_backend as poisson_cupy
    except ImportError:  # pragma: no cover - module is part of the package
        return False
    if poisson_cupy.available():
        return True
    poisson_cupy.log_fallback_once()
    return False


def poisson_blend(
    target: torch.Tensor,
    source: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "normal",
    *,
    rtol: float = 1e-4,
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
        max_iter: CG iteration limit.
        backend: ``"auto"`` (CuPy kernels for CUDA tensors when cupy is importable, else torch),
            ``"torch"`` or ``"cupy"``.
        return_stats: also return :class:`PoissonStats`.

    Returns:
        ``(B, C, H, W)`` in the input dtype, not clamped: the solution on the mask, ``target``
        elsewhere. With ``return_stats=True`` a tuple ``(out, stats)``.
    """
    mask = _check_inputs(target, source, mask, mode, backend)
    if not (isinstance(rtol, (int, float)) and rtol > 0):
        raise ValueError(f"poisson_blend: rtol must be a positive number, got {rtol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"poisson_blend: max_iter must be a non-negative int, got {max_iter!r}")
    bsz, channels, h, w = target.shape
    device = target.device
    work_dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
    use_cupy = bsz > 0 and _use_cupy(device, backend)
    backend_name = "cupy" if use_cupy else "torch"
    iterations = torch.zeros(bsz, dtype=torch.int64, device=device)
    residual = torch.zeros(bsz, dtype=work_dtype, device=device)
    out = target.clone()
    if bsz == 0 or channels == 0:
        return (out, PoissonStats(iterations, residual, backend_name)) if return_stats else out

    y0s, x0s, hs, ws, nonempty = _rois(mask)
    todo = [i for i in range(bsz) if nonempty[i]]
    spanning = [i for i in todo if hs[i] == h and ws[i] == w]
    # one sync for all candidates: only masks whose ROI spans the image can cover all of it
    covered = mask[spanning].flatten(1).all(dim=1).tolist() if spanning else []
    full = [i for i, cov in zip(spanning, covered) if cov]
    if full:
        raise ValueError(
            f"poisson_blend: the mask of sample(s) {full} covers the whole image: without any known "
            "pixel the Poisson system has no Dirichlet data and is singular"
        )
    t_work = target.to(work_dtype)
    s_work = source.to(work_dtype)
    out_work = t_work.clone() if work_dtype != target.dtype else out

    def run(solver) -> None:
        for group in _buckets(todo, hs, ws):
            hc = max(hs[i] for i in group)
            wc = max(ws[i] for i in group)
            chunk = _max_samples(device, hc * wc, channels, torch.finfo(work_dtype).bits // 8)
            for start in range(0, len(group), chunk):
                sel = group[start : start + chunk]
                _solve_group(
                    t_work, s_work, mask, out_work, iterations, residual, sel,
                    [y0s[i] for i in sel], [x0s[i] for i in sel], [hs[i] for i in sel], [ws[i] for i in sel],
                    hc, wc, mode, rtol, max_iter, solver,
                )  # fmt: skip

    if use_cupy:
        from cai_aug.poisson import cupy_backend as poisson_cupy

        try:
            run(poisson_cupy.solve_bucket)
        except Exception as exc:
            if backend == "cupy":
                raise
            # "auto" promises the best path that works: a CuPy failure (NVRTC, driver, API) must not
            # break the pipeline; groups are independent, so the torch path simply redoes them all
            poisson_cupy.disable(exc)
            backend_name = "torch"
            run(_solve_bucket_torch)
    else:
        run(_solve_bucket_torch)
    if out_work is not out:
        out = out_work.to(target.dtype)
    if return_stats:
        return out, PoissonStats(iterations, residual, backend_name)
    return out


def _solve_bucket_torch(system: CanvasSystem, rtol: float, max_iter: int):
    return pcg(system, rtol, max_iter)


def _solve_group(
    t_work, s_work, mask, out_work, iterations, residual, sel, y0, x0, hs, ws, hc, wc, mode, rtol, max_iter,
    solver,
) -> None:  # fmt: skip
    """Gather one group of samples into canvases, solve, scatter the unknowns back (in place)."""
    device = t_work.device
    # one host-to-device copy for all per-sample integers of the group
    idx, y0t, x0t, ht, wt = torch.tensor([sel, y0, x0, hs, ws], dtype=torch.int64).to(device).unbind(0)
    t = _gather(t_work, idx, y0t, x0t, hc, wc)
    s = _gather(s_work, idx, y0t, x0t, hc, wc)
    inside = (torch.arange(hc, device=device)[None, :, None] < ht[:, None, None]) & (
        torch.arange(wc, device=device)[None, None, :] < wt[:, None, None]
    )
    inside = inside[:, None]
    omega = _gather(mask, idx, y0t, x0t, hc, wc) & inside
    system = assemble(t.contiguous(), s.contiguous(), omega, inside, mode)
    x, it, rel = solver(system, rtol, max_iter)
    iterations[idx] = it.amax(dim=1)
    residual[idx] = rel.amax(dim=1).to(residual.dtype)
    # scatter the unknowns only: (n, y, x) positions of Omega on the canvases
    n_i, y_i, x_i = omega[:, 0].nonzero(as_tuple=True)
    vals = x.permute(0, 2, 3, 1)[n_i, y_i, x_i]  # (K, C)
    out_work.permute(0, 2, 3, 1).index_put_((idx[n_i], y0t[n_i] + y_i, x0t[n_i] + x_i), vals.to(out_work.dtype))
