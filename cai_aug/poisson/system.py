"""The masked linear system of Pérez et al. 2003 (eq. 7) on batched canvases.

For every sample and channel the unknowns are the pixels of ``Omega`` and the system is

    |N_p| I(p) - sum_{q in N_p ∩ Omega} I(q) = sum_{q in N_p \\ Omega} target(q) + sum_{q in N_p} v(p, q)

with ``N_p`` the 4-neighbours of ``p`` inside the image. ``v(p, q) = s(p) - s(q)`` in normal mode; in
mixed mode the one of ``s(p) - s(q)`` and ``t(p) - t(q)`` with the larger magnitude (the source one
on ties, as in Pérez et al.).

The operator is stored in the edge form of :mod:`cai_aug.poisson.multigrid`: per pixel an east and a
south edge weight (1 between two unknowns) and a Dirichlet weight (the number of known in-image
neighbours). Values are ``(N, C, h, w)``, weights ``(N, 1, h, w)``: all channels share one operator.

``cpu_kernel.cpp`` (``blend``) sets up the same system for the compiled CPU solve: a change here must be
made there too (tests/poisson/test_compiled.py compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cai_aug.poisson.scratch import scratch

__all__ = ["CanvasSystem", "assemble", "guidance"]


@dataclass
class CanvasSystem:
    """The masked system of a bucket of canvases.

    Attributes:
        rhs: right-hand side ``(N, C, h, w)`` (zero off ``omega``).
        omega: unknowns ``(N, 1, h, w)`` bool.
        east, south: edge weights ``(N, 1, h, w)``: ``east[p]`` couples ``p`` and ``p + (0, 1)``.
        dirichlet: coupling of every unknown to known in-image neighbours ``(N, 1, h, w)``.
    """

    rhs: torch.Tensor
    omega: torch.Tensor
    east: torch.Tensor
    south: torch.Tensor
    dirichlet: torch.Tensor
    guess: torch.Tensor | None = None


def guidance(s_p: torch.Tensor, s_q: torch.Tensor, t_p: torch.Tensor, t_q: torch.Tensor, mode: str) -> torch.Tensor:
    """Guidance field ``v(p, q)`` for pixel pairs (any shape, elementwise)."""
    ds = s_p - s_q
    if mode == "normal":
        return ds
    dt = t_p - t_q
    return torch.where(dt.abs() > ds.abs(), dt, ds)


def assemble(
    t: torch.Tensor, s: torch.Tensor, omega: torch.Tensor, inside: torch.Tensor, mode: str, *, reuse: bool = False
) -> CanvasSystem:
    """Right-hand side, operator weights and initial guess of Pérez eq. 7 on canvases.

    Args:
        t, s: target and source canvases ``(N, C, h, w)``.
        omega: unknowns ``(N, 1, h, w)`` bool.
        inside: canvas pixels that lie in the image ``(N, 1, h, w)`` bool (pairs count only between them).
        mode: ``"normal"`` or ``"mixed"``.
        reuse: the ``(N, C, h, w)`` arrays of the result (``rhs`` in normal mode, ``guess``) may be
            scratch arrays of :mod:`cai_aug.poisson.scratch` on the CPU, valid until the next
            ``assemble(..., reuse=True)`` in this thread (the scheduler's choice; default: fresh arrays).
    """
    dt = t.dtype
    om = omega.to(dt)
    kn = (inside & ~omega).to(dt)
    # pair validity: both ends inside the image
    ve = (inside[..., :, :-1] & inside[..., :, 1:]).to(dt)
    vs = (inside[..., :-1, :] & inside[..., 1:, :]).to(dt)
    if mode == "normal":
        rhs = _normal_rhs(t, s, kn, ve, vs, reuse)
    else:
        known_t = t * kn
        rhs = torch.zeros_like(t)
        # p = left/up end, q = right/down end: p gets v(p,q) + known t(q); q gets -v(p,q) + known t(p)
        v = guidance(s[..., :, :-1], s[..., :, 1:], t[..., :, :-1], t[..., :, 1:], mode) * ve
        rhs[..., :, :-1] += v + known_t[..., :, 1:] * ve
        rhs[..., :, 1:] += -v + known_t[..., :, :-1] * ve
        v = guidance(s[..., :-1, :], s[..., 1:, :], t[..., :-1, :], t[..., 1:, :], mode) * vs
        rhs[..., :-1, :] += v + known_t[..., 1:, :] * vs
        rhs[..., 1:, :] += -v + known_t[..., :-1, :] * vs
    rhs.mul_(om)

    east = torch.zeros_like(om)
    south = torch.zeros_like(om)
    east[..., :, :-1] = om[..., :, :-1] * om[..., :, 1:]
    south[..., :-1, :] = om[..., :-1, :] * om[..., 1:, :]
    # Dirichlet weight: in-image neighbours that are known
    dirichlet = torch.zeros_like(om)
    dirichlet[..., :, :-1] += kn[..., :, 1:] * ve
    dirichlet[..., :, 1:] += kn[..., :, :-1] * ve
    dirichlet[..., :-1, :] += kn[..., 1:, :] * vs
    dirichlet[..., 1:, :] += kn[..., :-1, :] * vs
    dirichlet = dirichlet * om
    return CanvasSystem(rhs, omega, east, south, dirichlet, initial_guess(t, s, om, dirichlet, reuse))


def _normal_rhs(t: torch.Tensor, s: torch.Tensor, kn: torch.Tensor, ve: torch.Tensor, vs: torch.Tensor, reuse: bool):
    """Normal-mode right-hand side (before masking to the unknowns), with 8 array passes instead of 20.

    Summed over the in-image neighbours ``q`` of ``p``: ``sum_q (s(p) - s(q)) + sum_q known t(q)
    = deg(p) s(p) - sum_q (s(q) - known t(q))``, ``deg`` the number of in-image neighbours.
    """
    deg = torch.zeros_like(kn)
    deg[..., :, :-1] += ve
    deg[..., :, 1:] += ve
    deg[..., :-1, :] += vs
    deg[..., 1:, :] += vs
    y = torch.addcmul(s, t, kn, value=-1.0, out=_array("y", s, True))  # a temporary: always scratch
    rhs = torch.mul(deg, s, out=_array("rhs", s, reuse))
    rhs[..., :, :-1].addcmul_(ve, y[..., :, 1:], value=-1.0)
    rhs[..., :, 1:].addcmul_(ve, y[..., :, :-1], value=-1.0)
    rhs[..., :-1, :].addcmul_(vs, y[..., 1:, :], value=-1.0)
    rhs[..., 1:, :].addcmul_(vs, y[..., :-1, :], value=-1.0)
    return rhs


def initial_guess(
    t: torch.Tensor, s: torch.Tensor, om: torch.Tensor, dirichlet: torch.Tensor, reuse: bool = False
) -> torch.Tensor:
    """The source shifted to the target's level on the boundary: ``(s + c) * om``, ``(N, C, h, w)``.

    The exact solution is ``s`` plus a harmonic function with boundary values ``t - s`` (normal mode);
    ``c`` is the mean of ``t - s`` over the unknowns next to known pixels, weighted by their number of
    known neighbours. Starting CG there removes the largest, smoothest part of the error before the first
    iteration (about two iterations fewer for the same error); mixed mode and holes only make it a
    rougher guess, never a wrong result.
    """
    weight = dirichlet.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    difference = torch.sub(t, s, out=_array("difference", t, True))  # a temporary: always scratch
    offset = difference.mul_(dirichlet).sum(dim=(2, 3), keepdim=True) / weight
    return torch.add(s, offset, out=_array("guess", s, reuse)).mul_(om)


def _array(name: str, like: torch.Tensor, reuse: bool) -> torch.Tensor:
    if reuse:
        return scratch(("system", name), like.shape, like.dtype, like.device)
    return torch.empty_like(like)
