"""The sub-lattice layout of the finest level (CPU) computes what the natural layout computes.

Both layouts belong to the torch CG loop: every test here runs it, not the compiled CPU solve.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_poisson import batch_masks, disc, images, reference_blend, rel_error

from cai_aug.poisson import cpu_kernel, poisson_blend
from cai_aug.poisson import multigrid as mg
from cai_aug.poisson import pcg as poisson_pcg
from cai_aug.poisson.system import assemble


@pytest.fixture(autouse=True)
def _torch_loop(monkeypatch):
    """The torch CG loop solves, not the compiled CPU solve (the default wherever it builds)."""
    monkeypatch.setattr(cpu_kernel, "USE", False)


def test_quarters_round_trip_and_place_pixels_by_sub_lattice() -> None:
    x = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    q = mg.to_quarters(x)
    assert q.shape == (2, 3, 4, 3, 4)
    assert torch.equal(q[:, :, 2 * 1 + 0, 2, 3], x[:, :, 2 * 2 + 1, 2 * 3 + 0])  # pixel (5, 6): (dy, dx) = (1, 0)
    assert torch.equal(mg.from_quarters(q), x)


def _system(mask: np.ndarray, c: int = 3):
    h, w = mask.shape
    t, s = images(1, c, h, w, seed=9)
    omega = torch.from_numpy(mask)[None, None]
    return assemble(t.float(), s.float(), omega, torch.ones_like(omega), "normal")


def test_quartered_operator_equals_the_natural_operator() -> None:
    system = _system(disc(40, 36, 18, 20, 14) & ~disc(40, 36, 18, 20, 4))
    level = mg.build_hierarchy(system.east, system.south, system.dirichlet)[0]
    x = torch.rand(1, 3, 40, 36) * system.omega
    natural = mg.apply_operator(x, level)
    quartered = mg.QuarteredLevel(level).apply(mg.to_quarters(x), torch.empty(1, 3, 4, 20, 18))
    assert torch.allclose(mg.from_quarters(quartered), natural, atol=1e-6)


@pytest.mark.parametrize("atol", [None, 1 / 255])
def test_pcg_gives_the_same_iterates_in_both_layouts(monkeypatch, atol) -> None:
    # odd canvas sides: the quartered path pads them
    system = _system(disc(61, 57, 30, 28, 24) | disc(61, 57, 8, 50, 6))
    monkeypatch.setattr(poisson_pcg, "QUARTERED_MIN_SIDE", 10**9)
    x_nat, it_nat, _ = poisson_pcg.pcg(system, 1e-4, 100, atol)
    monkeypatch.setattr(poisson_pcg, "QUARTERED_MIN_SIDE", 0)
    x_q, it_q, rel_q = poisson_pcg.pcg(system, 1e-4, 100, atol)
    assert x_q.shape == x_nat.shape
    assert torch.equal(it_q, it_nat)
    assert torch.allclose(x_q, x_nat, atol=1e-5)
    assert atol is not None or (rel_q <= 1e-4).all()


@pytest.mark.parametrize("min_side", [0, 10**9], ids=["quartered", "natural"])
def test_both_layouts_match_spsolve_on_a_batch(monkeypatch, min_side: int) -> None:
    monkeypatch.setattr(poisson_pcg, "QUARTERED_MIN_SIDE", min_side)
    masks = batch_masks()
    t, s = images(len(masks), 3, 48, 48, seed=10)
    out = poisson_blend(t.float(), s.float(), torch.from_numpy(masks)[:, None])
    for i, m in enumerate(masks):
        assert rel_error(out[i], reference_blend(t[i].numpy(), s[i].numpy(), m, "normal"), m) <= 1e-4, i


def test_scratch_reuse_across_solves_changes_no_result(monkeypatch) -> None:
    from cai_aug.poisson import scratch

    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48, seed=11)
    t2, s2 = images(len(masks), 3, 48, 48, seed=12)
    first = poisson_blend(t.float(), s.float(), masks)
    other = poisson_blend(t2.float(), s2.float(), masks.flip(0))  # same pooled arrays, other contents
    again = poisson_blend(t.float(), s.float(), masks)
    monkeypatch.setattr(scratch, "SCRATCH_MAX_BYTES", 0)  # no pool at all
    scratch.release_scratch()
    fresh = poisson_blend(t.float(), s.float(), masks)
    assert torch.equal(first, again)
    assert torch.equal(first, fresh)
    assert not torch.equal(first, other)


def test_assemble_returns_fresh_arrays_unless_told_to_reuse() -> None:
    a = _system(disc(20, 20, 10, 10, 6))
    b = _system(disc(20, 20, 10, 10, 3))
    assert not torch.equal(a.rhs, b.rhs) and not torch.equal(a.guess, b.guess)
