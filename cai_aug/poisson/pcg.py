"""Batched preconditioned conjugate gradient for the masked Poisson systems of a bucket.

Every (sample, channel) plane of the bucket is its own CG run: the scalars ``alpha``, ``beta`` and
the convergence flags are ``(N, C)`` tensors, and a plane that has converged is frozen (its updates are
multiplied by zero, decided on the device), so its result never depends on its batch companions and
no host sync is needed per plane. The preconditioner is one symmetric V-cycle of
:mod:`cai_aug.poisson.multigrid`; CG starts from :func:`cai_aug.poisson.system.initial_guess`.

Two stopping rules, per plane, whichever is met first:

- ``rtol`` (always): the recursive residual reaches ``STOP_FACTOR * rtol * ||b||``;
- ``atol`` (the fast mode, optional): the largest pixel change of the last step, ``|alpha| max|p|``,
  is below ``ATOL_STEP_FACTOR * atol`` (an estimate of the largest error left, calibrated against
  sparse direct solves: see :mod:`cai_aug.poisson.constants`).

On the CPU (float32 / float64) the same algorithm runs compiled when the system's C++ compiler builds
it (:mod:`cai_aug.poisson.cpu_kernel`, ``cpu_kernel.USE``); the torch loop below is its fallback and the
CUDA path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cai_aug.poisson import cpu_kernel
from cai_aug.poisson import multigrid as mg
from cai_aug.poisson.constants import ATOL_STEP_FACTOR, CHECK_EVERY, STOP_FACTOR
from cai_aug.poisson.system import CanvasSystem

__all__ = ["dot", "norm", "pcg"]

# canvases with a side of at least this many pixels use the sub-lattice layout of the finest level on
# the CPU (mg.QuarteredLevel): half the pixels per Gauss-Seidel sweep, but twice more (smaller) torch
# calls, which only pays off beyond small canvases (measured: large patterns 17% faster, 26-px ones 8% slower)
QUARTERED_MIN_SIDE = 48


def dot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Per (sample, channel) inner product: ``(N, C, h, w)`` x2 -> ``(N, C)``.

    ``scratch`` (shaped like ``a``) takes the products: reusing it spares a fresh array per call.
    """
    if scratch is None:
        return torch.linalg.vecdot(a.flatten(2), b.flatten(2))
    return torch.mul(a, b, out=scratch).flatten(2).sum(dim=-1)


def norm(a: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel) Euclidean norm: ``(N, C, ...)`` -> ``(N, C)`` (one pass, no temporary)."""
    return torch.linalg.vector_norm(a.flatten(2), dim=-1)


def pcg(
    system: CanvasSystem,
    rtol: float,
    max_iter: int,
    atol: float | None = None,
    check_every: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve every (sample, channel) of a bucket.

    Args:
        system: the bucket's :class:`~cai_aug.poisson.system.CanvasSystem`, values ``(N, C, h, w)``.
        rtol: relative residual to reach.
        max_iter: iteration limit.
        atol: ``None``, or the largest pixel error to reach (image units), see the module docstring.
        check_every: how often the host looks at the flags to stop early (default: every iteration
            on the CPU, every ``CHECK_EVERY`` on CUDA, where a look is a host sync).

    Returns:
        ``x (N, C, h, w)``, iterations ``(N, C)`` and the true relative residual ``(N, C)``.
    """
    if cpu_kernel.enabled(system.rhs.dtype, system.rhs.device):
        # same algorithm and stopping rules, compiled (see cpu_kernel: 2-5x faster)
        return cpu_kernel.pcg(system, rtol, max_iter, atol)
    if check_every is None:
        # a look at the flags costs a host sync on CUDA, next to nothing on the CPU
        check_every = CHECK_EVERY if system.rhs.device.type == "cuda" else 1
    b = system.rhs
    h, w = b.shape[-2:]
    quartered = b.device.type == "cpu" and max(h, w) >= max(QUARTERED_MIN_SIDE, mg.DENSE_MAX + 1)
    east, south, dirichlet, guess = system.east, system.south, system.dirichlet, system.guess
    if quartered and (h % 2 or w % 2):
        # even sides (a zero row / column is no unknown and changes no coarse level: coarsen pads too)
        pad = (0, w % 2, 0, h % 2)
        east, south, dirichlet, b = (F.pad(a, pad) for a in (east, south, dirichlet, b))
        guess = None if guess is None else F.pad(guess, pad)
    levels = mg.build_hierarchy(east, south, dirichlet)
    fine = levels[0]
    if quartered:
        ql = mg.QuarteredLevel(fine)
        shape = (*b.shape[:2], 4, b.shape[-2] // 2, b.shape[-1] // 2)
        b = mg.to_quarters(b, fine.buffer("quarters rhs", b, shape))
        guess = None if guess is None else mg.to_quarters(guess, fine.buffer("quarters guess", b, shape))

        def apply(v, out):
            return ql.apply(v, out)

        def residual(rhs, v, out):
            return ql.residual(rhs, v, out)

        def precondition(v, out):
            return ql.vcycle(levels, v, out)
    else:

        def apply(v, out):
            return mg.apply_operator(v, fine, out=out)

        def residual(rhs, v, out):
            return mg.residual(rhs, v, fine, out=out)

        def precondition(v, out):
            return mg.vcycle(levels, v, out=out)

    # the loop's arrays (scratch reused across solves, see Level.buffer): the residual r, the direction
    # p, q = A p, the products of the dots and z (the V-cycle's output); x is returned, so it is new
    r, p, q = fine.buffer("r", b), fine.buffer("p", b), fine.buffer("q", b)
    prod, z = fine.buffer("products", b), fine.buffer("z", b)
    if guess is None:
        x = torch.zeros_like(b)
        r.copy_(b)
    else:
        x = guess.clone()
        residual(b, x, r)
    bnorm = norm(b)
    tol2 = (STOP_FACTOR * rtol * bnorm) ** 2
    rr = norm(r).square_()
    active = rr > tol2
    iters = torch.zeros_like(bnorm, dtype=torch.int64)
    precondition(r, z)
    p.copy_(z)
    rz = dot(r, z, prod)
    trailing = (1,) * (b.ndim - 2)  # per-plane scalars broadcast over the plane's pixels
    for it in range(max_iter):
        if it % check_every == 0 and not bool(active.any()):
            break
        apply(p, q)
        pq = dot(p, q, prod)
        alpha = torch.where(active & (pq > 0), rz / torch.where(pq > 0, pq, 1.0), 0.0)
        a4 = alpha.view(*alpha.shape, *trailing)
        x.addcmul_(a4, p)
        r.addcmul_(a4, q, value=-1.0)
        iters += active.long()
        rr = norm(r).square_()
        active = active & (rr > tol2)
        if atol is not None:
            # the largest change of a pixel in this iteration, an estimate of the error left
            # (amax and amin are vectorised on CPU, aminmax and the inf-norm are 20x slower there)
            flat = p.flatten(2)
            step = torch.maximum(flat.amax(dim=-1), flat.amin(dim=-1).neg_()).mul_(alpha.abs())
            active = active & (step > ATOL_STEP_FACTOR * atol)
        precondition(r, z)
        rz_new = dot(r, z, prod)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        torch.addcmul(z, beta.view(*beta.shape, *trailing), p, out=p)
        rz = rz_new
    # true residual for the report
    res = residual(b, x, q)
    rel = torch.where(bnorm > 0, norm(res) / torch.where(bnorm > 0, bnorm, 1.0), 0.0)
    if quartered:
        x = mg.from_quarters(x)[..., :h, :w]
    return x, iters, rel
