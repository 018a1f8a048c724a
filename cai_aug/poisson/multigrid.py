"""Aggregation multigrid for the masked 5-point Poisson operator on batched canvases.

The operator of one level is stored per pixel as an east edge weight ``E``, a south edge weight ``S``
and a Dirichlet weight ``D`` (the coupling to known values), plus the diagonal they imply:

    (A x)(p) = diag(p) x(p) - sum over edges (p, q) of w(p, q) x(q),
    diag(p)  = D(p) + sum over edges (p, q) of w(p, q).

On the finest level the unknowns are the mask's pixels, ``E``/``S`` are 1 between two unknowns and
``D`` counts the in-image neighbours that are known. Coarse levels come from 2x2 aggregation with
piecewise-constant prolongation ``P``: the Galerkin product ``P^T A P`` is again of this form (edges
inside a block cancel, edges crossing a block boundary add up, Dirichlet weights add up), so it stays
exact and symmetric positive definite for any mask shape, holes and the image-border rule included.
Piecewise-constant aggregation makes coarse operators too stiff by about 2 in 2-D, so each coarse
operator is scaled by ``COARSE_SCALE`` (a uniform scaling keeps it SPD and the V-cycle symmetric).
The coarsest level (at most ``DENSE_MAX`` x ``DENSE_MAX`` pixels) is solved exactly with a dense
inverse per sample.

All tensors are ``(N, 1, H, W)`` weights and ``(N, C, H, W)`` values; nothing loops over samples.
Scratch arrays are kept per level and reused from one cycle to the next (:meth:`Level.buffer`).

On the CPU the finest level of a large canvas can also run in the sub-lattice layout of
:class:`QuarteredLevel` (``(N, C, 4, H/2, W/2)``: the four pixels of each 2x2 block in separate
planes), where a red-black sweep touches only the pixels it updates; same arithmetic, fewer passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from cai_aug.poisson.scratch import scratch

# 1/COARSE_SCALE is the over-correction of each coarse level; measured PCG iterations to a 1e-4 relative
# residual (discs 26..240 px, ring, blobs, corner, noise): 0.5 -> 6..10, 0.65 -> 5..8, 0.75 -> 5..9
COARSE_SCALE = 0.65
DENSE_MAX = 8


@dataclass
class Level:
    """One level of the hierarchy; every tensor is ``(N, 1, H, W)``.

    ``w_east``/``w_west``/``w_south``/``w_north`` are the edge weights seen from each pixel (zero
    where there is no neighbour), ``red_w``/``black_w`` the inverse diagonal on one colour (zero
    elsewhere and on inactive pixels), ``keep_red``/``keep_black`` their complements (1 - colour).
    """

    east: torch.Tensor
    south: torch.Tensor
    dirichlet: torch.Tensor
    diag: torch.Tensor
    w_east: torch.Tensor
    w_west: torch.Tensor
    w_south: torch.Tensor
    w_north: torch.Tensor
    active: torch.Tensor
    red_w: torch.Tensor
    black_w: torch.Tensor
    keep_red: torch.Tensor
    keep_black: torch.Tensor
    dense_inv: torch.Tensor | None = None
    east_cut: torch.Tensor = field(init=False, repr=False)
    south_cut: torch.Tensor = field(init=False, repr=False)
    index: int = field(default=0, init=False)
    _buffers: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # the weight slices every neighbour sum uses, cut once (each slice is a dispatch)
        self.east_cut = self.east[..., :, :-1]
        self.south_cut = self.south[..., :-1, :]
        self._buffers = {}

    def buffer(self, name: str, like: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A scratch array of this level named ``name`` (uninitialised), reused across cycles.

        Shaped ``shape`` (default: ``like``'s), with ``like``'s dtype and device. On the CPU it is
        carved from this thread's scratch pool (:mod:`cai_aug.poisson.scratch`), so that it is also reused
        across solves: a fresh multi-megabyte array is fresh memory from the OS, and its first touch
        (page faults) costs more than the arithmetic done in it.
        """
        shape = tuple(like.shape) if shape is None else tuple(shape)
        entry = self._buffers.get(name)
        if entry is not None and entry.shape == shape and entry.dtype == like.dtype:
            return entry
        if entry is None:
            # a name takes one pooled array per level; another shape under a used name gets its own
            buf = scratch(("level", self.index, name), shape, like.dtype, like.device)
        else:
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        if entry is None:
            self._buffers[name] = buf
        return buf

    @property
    def shape(self) -> tuple[int, int]:
        return self.east.shape[-2], self.east.shape[-1]


def _shift_weights(east: torch.Tensor, south: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge weights as seen from the right / lower end: ``west[p] = east[p - e]``."""
    west = F.pad(east[..., :, :-1], (1, 0, 0, 0))
    north = F.pad(south[..., :-1, :], (0, 0, 1, 0))
    return west, north


def neighbour_sum(x: torch.Tensor, level: Level, out: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted sum of the 4 neighbours of every pixel: ``(N, C, H, W)`` -> ``(N, C, H, W)`` (into ``out``)."""
    # in-place products on tensor slices: about 2x faster than a padded copy, and faster than conv2d
    # on CPU; they also take the per-pixel weights directly
    e, s = level.east_cut, level.south_cut
    if out is None:
        out = torch.empty_like(x)
    # the first term writes straight into its slice, so the buffer needs no zero fill but one column
    torch.mul(e, x[..., :, 1:], out=out[..., :, :-1])
    out[..., :, -1] = 0
    out[..., :, 1:].addcmul_(e, x[..., :, :-1])
    out[..., :-1, :].addcmul_(s, x[..., 1:, :])
    out[..., 1:, :].addcmul_(s, x[..., :-1, :])
    return out


def apply_operator(x: torch.Tensor, level: Level, out: torch.Tensor | None = None) -> torch.Tensor:
    """``A x`` on one level: ``(N, C, H, W)`` -> ``(N, C, H, W)`` (into ``out``)."""
    return neighbour_sum(x, level, out).neg_().addcmul_(level.diag, x)


def residual(b: torch.Tensor, x: torch.Tensor, level: Level, out: torch.Tensor | None = None) -> torch.Tensor:
    """``b - A x`` on one level: ``(N, C, H, W)`` (into ``out``)."""
    return neighbour_sum(x, level, out).add_(b).addcmul_(level.diag, x, value=-1.0)


def make_level(east: torch.Tensor, south: torch.Tensor, dirichlet: torch.Tensor) -> Level:
    """Assemble the per-pixel weights of one level from its edge form."""
    west, north = _shift_weights(east, south)
    diag = dirichlet + east + south + west + north
    inv_diag = torch.where(diag > 0, 1.0 / diag.clamp_min(1e-30), torch.zeros_like(diag))
    h, w = east.shape[-2:]
    iy = torch.arange(h, device=east.device).view(h, 1)
    ix = torch.arange(w, device=east.device).view(1, w)
    red = ((iy + ix) % 2 == 0).to(east.dtype)
    active = (diag > 0).to(east.dtype)
    return Level(
        east, south, dirichlet, diag, east, west, south, north, active,
        inv_diag * red, inv_diag * (1 - red), 1 - red, red,
    )  # fmt: skip


def dense_inverse(level: Level) -> torch.Tensor:
    """Exact inverse of a small level's operator, ``(N, h*w, h*w)``; inactive pixels map to zero."""
    n = level.east.shape[0]
    h, w = level.shape
    k = h * w
    eye = torch.eye(k, dtype=level.east.dtype, device=level.east.device)
    basis = eye.view(k, 1, h, w).repeat(n, 1, 1, 1).view(n * k, 1, h, w)
    big = _expand_level(level, k)
    cols = apply_operator(basis, big).view(n, k, k).transpose(1, 2)
    active = level.active.view(n, k)
    # inactive pixels: identity rows/columns keep the matrix invertible; their rhs is always zero
    mat = cols + torch.diag_embed(1.0 - active)
    # inv_ex: no error check, hence no host sync on CUDA (the matrix is SPD by construction)
    return torch.linalg.inv_ex(mat).inverse * (active[:, :, None] * active[:, None, :])


def _expand_level(level: Level, k: int) -> Level:
    """The level with every sample repeated ``k`` times (to apply it to ``k`` basis vectors)."""
    values = {}
    for f in fields(Level):
        if not f.init:
            continue
        value = getattr(level, f.name)
        if isinstance(value, torch.Tensor):
            value = value.repeat_interleave(k, dim=0)
        values[f.name] = value
    return Level(**values)


def _pad_even(t: torch.Tensor) -> torch.Tensor:
    h, w = t.shape[-2:]
    return F.pad(t, (0, w % 2, 0, h % 2))


def restrict(r: torch.Tensor, rows: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over 2x2 blocks (``P^T``): ``(N, C, H, W)`` -> ``(N, C, ceil(H/2), ceil(W/2))``.

    ``rows`` ``(N, C, ceil(H/2), W)`` and ``out`` are optional scratch / output arrays.
    """
    # strided adds written straight into the output (no padded copy): much faster on CPU than a sum
    # over the inner dims of a 6-D view; an odd last row / column is its own block's only member
    n, c, h, w = r.shape
    h2, w2 = h // 2, w // 2
    if rows is None:
        rows = torch.empty(n, c, h - h2, w, dtype=r.dtype, device=r.device)
    torch.add(r[..., 0 : 2 * h2 : 2, :], r[..., 1::2, :], out=rows[..., :h2, :])
    if h % 2:
        rows[..., h2, :] = r[..., h - 1, :]
    if out is None:
        out = torch.empty(n, c, h - h2, w - w2, dtype=r.dtype, device=r.device)
    torch.add(rows[..., 0 : 2 * w2 : 2], rows[..., 1::2], out=out[..., :w2])
    if w % 2:
        out[..., w2] = rows[..., w - 1]
    return out


def prolong_add_(x: torch.Tensor, xc: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``x += active * P xc`` in place (piecewise-constant prolongation ``P``).

    Args:
        x: fine values ``(N, C, H, W)``; xc: coarse values ``(N, C, ceil(H/2), ceil(W/2))``;
        active: fine unknowns ``(N, 1, H, W)`` as 0/1.
    """
    h, w = x.shape[-2:]
    # one quarter-size update per position in the 2x2 block: no full-size expanded copy of xc
    for dy in (0, 1):
        for dx in (0, 1):
            hy, wx = (h - dy + 1) // 2, (w - dx + 1) // 2
            x[..., dy::2, dx::2].addcmul_(xc[..., :hy, :wx], active[..., dy::2, dx::2])
    return x


def coarsen(east: torch.Tensor, south: torch.Tensor, dirichlet: torch.Tensor, scale: float):
    """Galerkin ``scale * P^T A P`` for 2x2 aggregation, in edge-weight form.

    Returns coarse ``(east, south, dirichlet)``, each ``(N, 1, ceil(H/2), ceil(W/2))``.
    """
    e, s, d = _pad_even(east), _pad_even(south), _pad_even(dirichlet)
    # east edges leaving a block are the fine east edges of its right column
    ec = e[..., 0::2, 1::2] + e[..., 1::2, 1::2]
    sc = s[..., 1::2, 0::2] + s[..., 1::2, 1::2]
    dc = d[..., 0::2, 0::2] + d[..., 0::2, 1::2] + d[..., 1::2, 0::2] + d[..., 1::2, 1::2]
    return ec * scale, sc * scale, dc * scale


def depth(side: int, dense_max: int = DENSE_MAX) -> int:
    """Number of coarsenings :func:`build_hierarchy` makes for a canvas whose larger side is ``side``."""
    n = 0
    while side > dense_max:
        side = (side + 1) // 2
        n += 1
    return n


def build_hierarchy(
    east: torch.Tensor,
    south: torch.Tensor,
    dirichlet: torch.Tensor,
    coarse_scale: float = COARSE_SCALE,
    dense_max: int = DENSE_MAX,
) -> list[Level]:
    """Levels from the fine operator down to a canvas of at most ``dense_max`` pixels a side."""
    levels = [make_level(east, south, dirichlet)]
    while max(east.shape[-2:]) > dense_max:
        east, south, dirichlet = coarsen(east, south, dirichlet, coarse_scale)
        levels.append(make_level(east, south, dirichlet))
        levels[-1].index = len(levels) - 1
    levels[-1].dense_inv = dense_inverse(levels[-1])
    return levels


def _gs_sweep(x: torch.Tensor, b: torch.Tensor, level: Level, red: bool, zero_colour: bool = False) -> torch.Tensor:
    """One colour of Gauss-Seidel, in place: ``x`` off the colour, ``(b + N x) / diag`` on it.

    ``zero_colour``: ``x`` is known to be zero on the colour (the sweep after a sweep from zero), so
    clearing it first is skipped.
    """
    keep, weight = (level.keep_red, level.red_w) if red else (level.keep_black, level.black_w)
    # read x completely before updating it in place
    nb = neighbour_sum(x, level, level.buffer("neighbours", x)).add_(b)
    if not zero_colour:
        x.mul_(keep)
    return x.addcmul_(weight, nb)


def coarsest_solve(level: Level, b: torch.Tensor) -> torch.Tensor:
    """Exact solve on the coarsest level (its ``dense_inv``): ``(N, C, h, w)`` -> ``(N, C, h, w)``."""
    n, c, h, w = b.shape
    return torch.bmm(level.dense_inv, b.reshape(n, c, h * w).transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w)


def vcycle(levels: list[Level], b: torch.Tensor, index: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """One symmetric V-cycle from a zero guess: an SPD approximation of ``A^{-1} b`` (into ``out``).

    Pre-smoothing is red-black Gauss-Seidel (red then black), post-smoothing its adjoint (black then
    red), so the cycle is a symmetric operator and usable as a CG preconditioner. Coarse levels work
    in their own reused scratch arrays (:meth:`Level.buffer`).
    """
    level = levels[index]
    if index == len(levels) - 1:
        x = coarsest_solve(level, b)
        return x if out is None else out.copy_(x)
    # the red sweep from zero needs no neighbour sum
    x = torch.mul(level.red_w, b, out=out if out is not None else level.buffer("solution", b))
    x = _gs_sweep(x, b, level, red=False, zero_colour=True)
    r = residual(b, x, level, level.buffer("residual", b))
    coarse = levels[index + 1]
    n, c = b.shape[:2]
    rc = restrict(
        r,
        level.buffer("rows", b, (n, c, coarse.shape[0], b.shape[-1])),
        coarse.buffer("rhs", b, (n, c, *coarse.shape)),
    )
    xc = vcycle(levels, rc, index + 1)
    x = prolong_add_(x, xc, level.active)
    x = _gs_sweep(x, b, level, red=False)
    return _gs_sweep(x, b, level, red=True)


# ----------------------------------------------------------------------------------------------------
# the finest level in the sub-lattice layout (CPU)


def to_quarters(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C, H, W)`` with ``H``, ``W`` even -> ``(N, C, 4, H/2, W/2)`` (into ``out``), sub-lattices
    ``(dy, dx)`` in the order ``(0, 0), (0, 1), (1, 0), (1, 1)``: pixel ``(2i + dy, 2j + dx)`` is
    ``[2 dy + dx, i, j]``."""
    n, c, h, w = x.shape
    split = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    if out is None:
        return split.reshape(n, c, 4, h // 2, w // 2)
    out.view(n, c, 2, 2, h // 2, w // 2).copy_(split)
    return out


def from_quarters(q: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_quarters`."""
    n, c, _, h2, w2 = q.shape
    return q.view(n, c, 2, 2, h2, w2).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h2, 2 * w2)


# red sub-lattices ((y + x) even) and black ones, by index in the quartered layout
RED, BLACK = (0, 3), (1, 2)


class QuarteredLevel:
    """The finest level with every array split into its four 2x2 sub-lattices (:func:`to_quarters`).

    Why: a red-black Gauss-Seidel sweep on the natural layout computes neighbour sums for every pixel
    and keeps half of them; here a colour is two whole sub-lattices, whose 4 neighbours all lie in the
    other colour's sub-lattices at the same or a shifted index, so a sweep touches only the pixels it
    updates, with unit-stride slices. Restriction becomes the sum of the four sub-lattices (two after
    a black sweep, whose residual is zero on black) and prolongation an update of each. The arithmetic
    is that of :func:`vcycle` on the natural layout, which the coarser levels keep.

    Args:
        level: the finest :class:`Level`, built on a canvas with even sides.
    """

    def __init__(self, level: Level) -> None:
        h, w = level.shape
        if h % 2 or w % 2:
            raise ValueError(f"QuarteredLevel needs even canvas sides, got {(h, w)}")
        self.level = level
        n = level.east.shape[0]

        def quarters(name: str, x: torch.Tensor) -> torch.Tensor:
            return to_quarters(x, level.buffer(f"quarters {name}", x, (n, 1, 4, h // 2, w // 2)))

        east, west = quarters("east", level.w_east), quarters("west", level.w_west)
        south, north = quarters("south", level.w_south), quarters("north", level.w_north)
        self.diag = quarters("diag", level.diag)
        inv = quarters("inv", torch.add(level.red_w, level.black_w, out=level.buffer("inv", level.red_w)))
        active = quarters("active", level.active)
        self.inv = [inv[:, :, k] for k in range(4)]
        self.diag_k = [self.diag[:, :, k] for k in range(4)]
        self.active = [active[:, :, k] for k in range(4)]
        # per sub-lattice k = 2 dy + dx: two neighbours at the same index (in the other column / row
        # sub-lattice) and two at an index shifted by one, with the weights already sliced to match
        self.terms = []
        for k in range(4):
            dy, dx = divmod(k, 2)
            across, down = 2 * dy + (1 - dx), 2 * (1 - dy) + dx
            we, ww, ws, wn = east[:, :, k], west[:, :, k], south[:, :, k], north[:, :, k]
            aligned = [(we if dx == 0 else ww, across), (ws if dy == 0 else wn, down)]
            if dx == 0:  # west neighbour (2i + dy, 2j - 1) is sub-lattice (dy, 1) at j - 1
                horizontal = (
                    (..., slice(None), slice(1, None)),
                    ww[..., :, 1:],
                    across,
                    (..., slice(None), slice(None, -1)),
                )
            else:  # east neighbour (2i + dy, 2j + 2) is sub-lattice (dy, 0) at j + 1
                horizontal = (
                    (..., slice(None), slice(None, -1)),
                    we[..., :, :-1],
                    across,
                    (..., slice(None), slice(1, None)),
                )
            if dy == 0:  # north neighbour is sub-lattice (1, dx) at i - 1
                vertical = (
                    (..., slice(1, None), slice(None)),
                    wn[..., 1:, :],
                    down,
                    (..., slice(None, -1), slice(None)),
                )
            else:  # south neighbour is sub-lattice (0, dx) at i + 1
                vertical = (
                    (..., slice(None, -1), slice(None)),
                    ws[..., :-1, :],
                    down,
                    (..., slice(1, None), slice(None)),
                )
            self.terms.append((aligned, (horizontal, vertical)))

    def neighbour_sum(self, x: torch.Tensor, k: int, out: torch.Tensor, add_to: float = 0.0) -> torch.Tensor:
        """Weighted neighbour sum of sub-lattice ``k`` of ``x (N, C, 4, h, w)`` into ``out (N, C, h, w)``.

        ``add_to=+1 / -1``: add / subtract the sum to what ``out`` holds (one pass fewer than a separate
        sum and add).
        """
        (w1, s1), (w2, s2) = self.terms[k][0]
        value = 1.0
        if add_to:
            value = add_to
            out.addcmul_(w1, x[:, :, s1], value=value)
        else:
            torch.mul(w1, x[:, :, s1], out=out)
        out.addcmul_(w2, x[:, :, s2], value=value)
        for out_index, weight, source, source_index in self.terms[k][1]:
            out[out_index].addcmul_(weight, x[:, :, source][source_index], value=value)
        return out

    def apply(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``A x`` in the quartered layout."""
        for k in range(4):
            self.neighbour_sum(x, k, torch.mul(self.diag_k[k], x[:, :, k], out=out[:, :, k]), add_to=-1.0)
        return out

    def residual(self, b: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``b - A x`` in the quartered layout."""
        for k in range(4):
            self._residual(b, x, k, out[:, :, k])
        return out

    def _residual(self, b: torch.Tensor, x: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
        torch.addcmul(b[:, :, k], self.diag_k[k], x[:, :, k], value=-1.0, out=out)
        return self.neighbour_sum(x, k, out, add_to=1.0)

    def _sweep(self, x: torch.Tensor, b: torch.Tensor, colour: tuple[int, int]) -> None:
        # the neighbours of a colour all have the other colour: x[k] can be overwritten in place
        for k in colour:
            self.neighbour_sum(x, k, x[:, :, k]).add_(b[:, :, k]).mul_(self.inv[k])

    def vcycle(self, levels: list[Level], b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """:func:`vcycle` from this level (``levels[0]``), in and out in the quartered layout."""
        x = out
        for k in RED:  # the red sweep from zero
            torch.mul(self.inv[k], b[:, :, k], out=x[:, :, k])
        self._sweep(x, b, BLACK)  # overwrites black completely: no need to clear it first
        # after the black sweep the residual is zero on black (up to rounding): restrict the red part
        r = self.level.buffer("quartered residual", b, (b.shape[0], b.shape[1], 2, *b.shape[-2:]))
        for i, k in enumerate(RED):
            self._residual(b, x, k, r[:, :, i])
        coarse = levels[1]
        rc = torch.add(r[:, :, 0], r[:, :, 1], out=coarse.buffer("rhs", b, (b.shape[0], b.shape[1], *coarse.shape)))
        xc = vcycle(levels, rc, 1)
        for k in range(4):
            x[:, :, k].addcmul_(xc, self.active[k])
        self._sweep(x, b, BLACK)
        self._sweep(x, b, RED)
        return x
