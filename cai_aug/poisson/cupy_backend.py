"""CuPy CUDA path of :func:`cai_aug.poisson.poisson_blend`: the CG loop and V-cycle as fused kernels.

The kernels live in the top-level ``kernels/*.cu``, are compiled once per process
and device with ``cupy.RawModule`` (NVRTC) and cached. Tensors stay torch tensors owned by torch's
caching allocator; the kernels see them through DLPack (``cupy.from_dlpack``, zero copy) and are
launched on torch's current CUDA stream, so torch and CuPy work is ordered without host round trips.

The algorithm is the torch path's (:mod:`cai_aug.poisson.multigrid`, :mod:`cai_aug.poisson.pcg`): same
hierarchy (built by the same torch code on the GPU), same initial guess, same symmetric red-black
Gauss-Seidel V-cycle, same dense coarsest solve (a batched ``torch.bmm``), same per-(sample, channel)
freezing and stopping rules (the ``atol`` rule as a few torch ops on the same stream). This module
imports only :mod:`cai_aug.poisson.multigrid` and :mod:`cai_aug.poisson.constants`. What the kernels fuse:

- ``cg_apply_dot``: ``q = A p`` and ``<p, q>`` in one pass;
- ``cg_update``: ``x += alpha p``, ``r -= alpha q`` and ``<r, r>`` in one pass, ``alpha`` per plane
  computed in the kernel from device scalars (converged planes get ``alpha = 0``: frozen);
- ``cg_dot`` + ``cg_direction``: ``<r, z>`` and ``p = z + beta p``;
- ``mg_gs_sweep`` (in-place colour sweep), ``mg_residual_restrict`` (residual and 2x2 restriction
  in one pass), ``mg_prolong_add``.

The host looks at the convergence flags every ``CHECK_EVERY`` iterations only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import warnings
from typing import Any

import numpy as np
import torch

from cai_aug.poisson import multigrid as mg
from cai_aug.poisson.constants import ATOL_STEP_FACTOR, CHECK_EVERY, MAX_PLANES, STOP_FACTOR
from cai_aug.poisson.native import native_dir

logger = logging.getLogger(__name__)

KERNEL_FILES = ("poisson_cg.cu", "poisson_mg.cu")
# headers the kernel files include (``#include "name"``); inlined before NVRTC sees the sources
KERNEL_HEADERS = ("common.cuh",)
BLOCK = 256

_fallback_logged = False


_disabled: str | None = None


def available() -> bool:
    """Whether the CuPy path can be used: ``cupy`` imports (checked once per process) and the path
    has not failed before in this process."""
    return _disabled is None and _cupy_module() is not None


def disable(exc: BaseException) -> None:
    """Turn the CuPy path off for this process after a failure under ``backend="auto"`` (warns once)."""
    global _disabled
    if _disabled is None:
        _disabled = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"poisson_blend: the CuPy path failed ({_disabled}); using the torch path from now on",
            RuntimeWarning,
            stacklevel=3,
        )


@functools.lru_cache(maxsize=1)
def _cupy_module() -> Any:
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA runtime mismatch raised at import
        return None
    return cupy


def log_fallback_once() -> None:
    """Say once, at debug level, that CUDA tensors go to the torch path because CuPy is missing."""
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.debug("poisson_blend: cupy is not importable; CUDA tensors use the torch path")


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)


def kernel_sources() -> dict[str, str]:
    """CUDA sources by file name (see :func:`~cai_aug.poisson.native.native_dir`), ready for NVRTC.

    Every ``#include "header"`` of a package header is replaced by the header's text: NVRTC gets no
    include path by default.
    """
    root = native_dir()
    headers = {name: root.joinpath(name).read_text() for name in KERNEL_HEADERS}

    def inline(match: re.Match) -> str:
        name = match.group(1)
        if name not in headers:
            raise ValueError(f"kernel source includes unknown header {name!r}")
        # "#pragma once" would sit in the main file once inlined (a warning at best)
        return re.sub(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", "", headers[name], flags=re.M)

    return {name: _INCLUDE.sub(inline, root.joinpath(name).read_text()) for name in KERNEL_FILES}


_MODULES: dict[tuple[int, str], Any] = {}


def _functions(cupy: Any, device_index: int) -> dict[str, Any]:
    """Kernel functions by name, compiled once per process and device."""
    key = (device_index, getattr(cupy, "__name__", "cupy"))
    funcs = _MODULES.get(key)
    if funcs is None:
        funcs = {}
        for name, src in kernel_sources().items():
            module = cupy.RawModule(code=src)
            for kernel in _kernel_names(src):
                funcs[kernel] = module.get_function(kernel)
            logger.debug("compiled %s for device %d", name, device_index)
        _MODULES[key] = funcs
    return funcs


def _kernel_names(src: str) -> list[str]:
    return re.findall(r"__global__\s+void\s+(\w+)\s*\(", src)


class _Launcher:
    """Wraps torch tensors for the kernels and launches them on the current stream."""

    def __init__(self, cupy: Any, funcs: dict[str, Any], suffix: str) -> None:
        self.cupy = cupy
        self.funcs = funcs
        self.suffix = suffix
        self._arrays: dict[int, Any] = {}

    def arr(self, t: torch.Tensor) -> Any:
        # one zero-copy DLPack view per tensor for the whole solve; the tensor is kept alive beside
        # its view so that its id cannot be reused by another tensor meanwhile
        entry = self._arrays.get(id(t))
        if entry is None:
            entry = (self.cupy.from_dlpack(t.detach()), t)
            self._arrays[id(t)] = entry
        return entry[0]

    def __call__(self, name: str, pixels: int, planes: int, *args: Any) -> None:
        kernel = self.funcs[name if name == "cg_flags" else f"{name}_{self.suffix}"]
        converted = tuple(self.arr(a) if isinstance(a, torch.Tensor) else np.int32(a) for a in args)
        grid = ((pixels + BLOCK - 1) // BLOCK, planes)
        kernel(grid, (BLOCK,), converted)


def _stream_context(cupy: Any, device: torch.device) -> contextlib.ExitStack:
    """Make torch's current stream (and the tensors' device) CuPy's current ones."""
    ctx = contextlib.ExitStack()
    if device.type != "cuda":  # CPU emulation in the tests
        return ctx
    index = device.index if device.index is not None else torch.cuda.current_device()
    ctx.enter_context(cupy.cuda.Device(index))
    ctx.enter_context(cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, index))
    return ctx


def solve_bucket(system, rtol: float, max_iter: int, atol: float | None = None, check_every: int | None = None):
    """CuPy counterpart of :func:`cai_aug.poisson.pcg.pcg`: same inputs, same outputs.

    Args:
        system: a :class:`cai_aug.poisson.system.CanvasSystem` on a CUDA device.

    Returns ``x (N, C, h, w)``, iterations ``(N, C)`` int64 and the true relative residual ``(N, C)``.
    """
    cupy = _cupy_module()
    if cupy is None:
        raise RuntimeError("poisson_blend: backend='cupy' but cupy is not importable")
    check_every = check_every or CHECK_EVERY
    b = system.rhs.contiguous()
    n, c, h, w = b.shape
    if n * c > MAX_PLANES:
        raise ValueError(f"cupy path: at most {MAX_PLANES} sample-channel planes per launch, got {n * c}")
    device = b.device
    suffix = "f64" if b.dtype == torch.float64 else "f32"
    levels = mg.build_hierarchy(system.east, system.south, system.dirichlet)
    ops = [
        dict(
            east=lv.east.contiguous(), south=lv.south.contiguous(), diag=lv.diag.contiguous(),
            inv=(lv.red_w + lv.black_w).contiguous(), shape=lv.shape,
        )
        for lv in levels
    ]  # fmt: skip
    # per-level right-hand side / solution buffers of the V-cycle (level 0 uses r and z)
    bufs: list[Any] = [None]
    for lv in levels[1:]:
        bufs.append(tuple(torch.zeros(n, c, *lv.shape, dtype=b.dtype, device=device) for _ in range(2)))
    planes = n * c
    hw = h * w
    f64 = dict(dtype=torch.float64, device=device)
    # the same initial guess as the torch path (its residual by the same torch code)
    x = (system.guess if system.guess is not None else torch.zeros_like(b)).contiguous().clone()
    r = mg.residual(b, x, levels[0]).contiguous() if system.guess is not None else b.clone()
    z = torch.zeros_like(b)
    q = torch.zeros_like(b)
    rr0 = torch.linalg.vecdot(b.flatten(2), b.flatten(2)).to(torch.float64).reshape(planes)
    tol2 = ((STOP_FACTOR * rtol) ** 2 * rr0).contiguous()
    rr_start = torch.linalg.vecdot(r.flatten(2), r.flatten(2)).to(torch.float64).reshape(planes)
    active = (rr_start > tol2).to(torch.int32)
    iterations = torch.zeros(planes, dtype=torch.int64, device=device)
    rz, rz_new, pq, rr = (torch.zeros(planes, **f64) for _ in range(4))

    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    launch = _Launcher(cupy, _functions(cupy, index), suffix)

    def vcycle(index: int, rhs: torch.Tensor, sol: torch.Tensor) -> None:
        op = ops[index]
        lh, lw = op["shape"]
        if index == len(levels) - 1:
            sol.copy_(mg.coarsest_solve(levels[index], rhs))
            return
        launch("mg_gs_sweep", lh * lw, planes, sol, rhs, op["east"], op["south"], op["inv"], c, lh, lw, 0, 1)
        launch("mg_gs_sweep", lh * lw, planes, sol, rhs, op["east"], op["south"], op["inv"], c, lh, lw, 1, 0)
        crhs, csol = bufs[index + 1]
        ch, cw = ops[index + 1]["shape"]
        launch(
            "mg_residual_restrict", ch * cw, planes, crhs, rhs, sol, op["east"], op["south"], op["diag"],
            c, lh, lw, ch, cw,
        )  # fmt: skip
        vcycle(index + 1, crhs, csol)
        launch("mg_prolong_add", lh * lw, planes, sol, csol, op["inv"], c, lh, lw, ch, cw)
        launch("mg_gs_sweep", lh * lw, planes, sol, rhs, op["east"], op["south"], op["inv"], c, lh, lw, 1, 0)
        launch("mg_gs_sweep", lh * lw, planes, sol, rhs, op["east"], op["south"], op["inv"], c, lh, lw, 0, 0)

    fine = ops[0]
    with _stream_context(cupy, device):
        vcycle(0, r, z)
        p = z.clone()
        launch("cg_dot", hw, planes, r, z, rz, hw)
        for it in range(max_iter):
            if it % check_every == 0 and not bool(active.any()):
                break
            pq.zero_()
            launch("cg_apply_dot", hw, planes, p, q, fine["east"], fine["south"], fine["diag"], pq, c, h, w)
            rr.zero_()
            launch("cg_update", hw, planes, x, r, p, q, rz, pq, active, rr, hw)
            _flags(launch, active, iterations, rr, tol2, planes)
            if atol is not None:
                # the atol rule of cai_aug.poisson.pcg, in torch on the same stream: the step is
                # alpha * max|p| with alpha as cg_update computed it (before the flags changed)
                alpha = torch.where(pq > 0, rz / torch.where(pq > 0, pq, 1.0), 0.0)
                flat = p.view(planes, hw)
                step = torch.maximum(flat.amax(dim=-1), flat.amin(dim=-1).neg_()).to(torch.float64) * alpha.abs()
                active.mul_((step > ATOL_STEP_FACTOR * atol).to(torch.int32))
            vcycle(0, r, z)
            rz_new.zero_()
            launch("cg_dot", hw, planes, r, z, rz_new, hw)
            launch("cg_direction", hw, planes, p, z, rz, rz_new, hw)
            rz, rz_new = rz_new, rz
    res = mg.residual(b, x, levels[0])
    bnorm = rr0.sqrt().view(n, c)
    res_norm = torch.linalg.vecdot(res.flatten(2), res.flatten(2)).sqrt()
    rel = torch.where(bnorm > 0, res_norm / bnorm.clamp_min(1e-300), 0.0)
    return x, iterations.view(n, c), rel.to(b.dtype)


def _flags(launch: _Launcher, active, iterations, rr, tol2, planes: int) -> None:
    kernel = launch.funcs["cg_flags"]
    args = (launch.arr(active), launch.arr(iterations), launch.arr(rr), launch.arr(tol2), np.int32(planes))
    kernel(((planes + BLOCK - 1) // BLOCK,), (BLOCK,), args)
