"""poisson_blend_canvases: per-sample canvases against scipy's sparse direct solve and against poisson_blend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_poisson import disc, images, reference_blend, rel_error

from cai_aug.poisson import PoissonStats, poisson_blend, poisson_blend_canvases


def cut(images_: torch.Tensor, oy: int, ox: int, ch: int, cw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas ``(C, ch, cw)`` of ``images_ (C, H, W)`` at origin ``(oy, ox)`` (may overhang) and its ``inside``."""
    c, h, w = images_.shape
    canvas = torch.full((c, ch, cw), -7.0, dtype=images_.dtype)  # junk where the canvas leaves the image
    inside = torch.zeros(1, ch, cw, dtype=torch.bool)
    ys, ye = max(oy, 0), min(oy + ch, h)
    xs, xe = max(ox, 0), min(ox + cw, w)
    if ys < ye and xs < xe:
        canvas[:, ys - oy : ye - oy, xs - ox : xe - ox] = images_[:, ys:ye, xs:xe]
        inside[:, ys - oy : ye - oy, xs - ox : xe - ox] = True
    return canvas, inside


def canvas_problem(masks: np.ndarray, origins: list[tuple[int, int]], ch: int, cw: int, seed: int = 0):
    """Full-image problems (``masks (B, H, W)``) and their canvases at ``origins``: ``(full, canvases)``."""
    b, h, w = masks.shape
    t, s = images(b, 3, h, w, seed=seed)
    t, s = t.float(), s.float()
    m = torch.from_numpy(masks)[:, None]
    tc, sc, mc, ic = [], [], [], []
    for i, (oy, ox) in enumerate(origins):
        tt, inside = cut(t[i], oy, ox, ch, cw)
        ss, _ = cut(s[i], oy, ox, ch, cw)
        mm, _ = cut(m[i].float(), oy, ox, ch, cw)
        tc.append(tt)
        sc.append(ss)
        mc.append(mm > 0.5)
        ic.append(inside)
    # every unknown must lie on its canvas (the full problem's mask is the canvases' omega)
    covered = torch.stack(mc).sum() if b else 0
    assert int(covered) == int(m.sum()), "test setup: a mask leaves its canvas"
    return (t, s, m), (torch.stack(tc), torch.stack(sc), torch.stack(mc), torch.stack(ic))


def crop_back(full: torch.Tensor, origins, ch: int, cw: int) -> torch.Tensor:
    return torch.stack([cut(full[i], oy, ox, ch, cw)[0] for i, (oy, ox) in enumerate(origins)])


# ----------------------------------------------------------------------------------------------------
# against the exact solution


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_canvas_inside_the_image_matches_spsolve(mode: str) -> None:
    masks = disc(64, 64, 30, 33, 14)[None]
    full, (tc, sc, mc, ic) = canvas_problem(masks, [(10, 12)], 40, 42)
    out, _ = poisson_blend_canvases(tc, sc, mc, ic, mode)
    ref = reference_blend(full[0][0].double().numpy(), full[1][0].double().numpy(), masks[0], mode)
    ref_canvas, _ = cut(torch.from_numpy(ref), 10, 12, 40, 42)
    omega = mc[0, 0].numpy()
    assert rel_error(out[0], ref_canvas.numpy(), omega) <= 1e-4


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_canvas_overhanging_a_corner_matches_spsolve(mode: str) -> None:
    # the mask touches two image borders; the canvas hangs 7 px over both
    masks = disc(48, 56, 47, 0, 15)[None]
    full, (tc, sc, mc, ic) = canvas_problem(masks, [(25, -7)], 30, 30)
    out, _ = poisson_blend_canvases(tc, sc, mc, ic, mode)
    ref = reference_blend(full[0][0].double().numpy(), full[1][0].double().numpy(), masks[0], mode)
    ref_canvas, _ = cut(torch.from_numpy(ref), 25, -7, 30, 30)
    assert rel_error(out[0], ref_canvas.numpy(), mc[0, 0].numpy()) <= 1e-4


def test_canvas_without_inside_is_a_whole_image() -> None:
    mask = disc(40, 40, 0, 20, 12)  # touches the canvas edge, which is then the image border
    t, s = images(1, 3, 40, 40, seed=2)
    out, _ = poisson_blend_canvases(t.float(), s.float(), torch.from_numpy(mask)[None, None])
    ref = reference_blend(t[0].numpy(), s[0].numpy(), mask, "normal")
    assert rel_error(out[0], ref, mask) <= 1e-4


# ----------------------------------------------------------------------------------------------------
# against poisson_blend on the pasted problem


def test_batch_of_canvases_equals_poisson_blend_on_the_pasted_images() -> None:
    h = w = 64
    line = np.zeros((h, w), dtype=bool)
    line[20:50, 30] = True
    masks = np.stack(
        [
            disc(h, w, 30, 30, 12),
            disc(h, w, 0, 20, 10),
            disc(h, w, 63, 63, 12),
            line,
            np.zeros((h, w), dtype=bool),
            disc(h, w, 25, 30, 12) & ~disc(h, w, 25, 30, 5),
        ]
    )
    origins = [(14, 12), (-8, 5), (45, 46), (15, 25), (3, 3), (8, 10)]
    (t, s, m), (tc, sc, mc, ic) = canvas_problem(masks, origins, 36, 36, seed=4)
    out, stats = poisson_blend_canvases(tc, sc, mc, ic)
    ref, ref_stats = poisson_blend(t, s, m, return_stats=True)
    ref_c = crop_back(ref, origins, 36, 36)
    assert torch.equal(stats.iterations, ref_stats.iterations)
    assert torch.allclose(out[ic.expand_as(out)], ref_c[ic.expand_as(ref_c)], atol=1e-6, rtol=0)


def test_pixels_off_omega_keep_the_target_canvas_exactly() -> None:
    masks = np.stack([disc(48, 48, 24, 24, 10), disc(48, 48, 47, 10, 8)])
    origins = [(8, 8), (30, -4)]
    _, (tc, sc, mc, ic) = canvas_problem(masks, origins, 32, 32, seed=5)
    out, _ = poisson_blend_canvases(tc, sc, mc, ic, "mixed")
    off = ~mc.expand_as(out)
    assert torch.equal(out[off], tc[off])  # the junk outside the image included


def test_omega_outside_the_image_is_ignored() -> None:
    masks = disc(48, 48, 47, 24, 10)[None]
    origins = [(30, 10)]
    _, (tc, sc, mc, ic) = canvas_problem(masks, origins, 30, 30, seed=6)
    grown = mc | ~ic  # claim every pixel beyond the image as unknown too
    out, _ = poisson_blend_canvases(tc, sc, grown, ic)
    ref, _ = poisson_blend_canvases(tc, sc, mc, ic)
    assert torch.equal(out, ref)


def test_stats_are_per_canvas() -> None:
    masks = np.stack([disc(48, 48, 24, 24, 10), np.zeros((48, 48), dtype=bool)])
    _, (tc, sc, mc, ic) = canvas_problem(masks, [(8, 8), (0, 0)], 32, 32)
    _, stats = poisson_blend_canvases(tc, sc, mc, ic)
    assert isinstance(stats, PoissonStats)
    assert stats.iterations[0] >= 1 and stats.iterations[1] == 0
    assert stats.residual[0] <= 1e-4


def test_omega_covering_the_in_image_part_is_an_error() -> None:
    t, s = images(1, 1, 8, 8)
    inside = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    inside[..., 2:, 3:] = True
    with pytest.raises(ValueError, match="singular"):
        poisson_blend_canvases(t, s, inside.clone(), inside)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"inside": torch.ones(1, 1, 8, 9, dtype=torch.bool)}, ValueError, "inside must be"),
        ({"inside": torch.ones(1, 1, 8, 8)}, TypeError, "inside must be a bool"),
        ({"mode": "blend"}, ValueError, "mode"),
        ({"rtol": -1.0}, ValueError, "rtol"),
    ],
    ids=["inside-shape", "inside-dtype", "mode", "rtol"],
)
def test_bad_canvas_input_raises_a_clear_error(kwargs, error, match) -> None:
    t, s = images(1, 3, 8, 8)
    with pytest.raises(error, match=match):
        poisson_blend_canvases(t, s, torch.zeros(1, 1, 8, 8, dtype=torch.bool), **kwargs)


# ----------------------------------------------------------------------------------------------------
# property: random discs and canvas placements


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cy=st.integers(0, 31),
    cx=st.integers(0, 31),
    r=st.floats(0.5, 9.0),
    pad_lo=st.integers(1, 6),
    pad_hi=st.integers(1, 6),
    mode=st.sampled_from(["normal", "mixed"]),
)
def test_random_canvas_equals_poisson_blend(cy, cx, r, pad_lo, pad_hi, mode) -> None:
    h = w = 32
    mask = disc(h, w, cy, cx, r)
    ys, xs = np.nonzero(mask)
    oy, ox = int(ys.min()) - pad_lo, int(xs.min()) - pad_lo
    ch, cw = int(ys.max()) - oy + 1 + pad_hi, int(xs.max()) - ox + 1 + pad_hi
    (t, s, m), (tc, sc, mc, ic) = canvas_problem(mask[None], [(oy, ox)], ch, cw, seed=cy * 32 + cx)
    out, _ = poisson_blend_canvases(tc, sc, mc, ic, mode)
    ref = crop_back(poisson_blend(t, s, m, mode), [(oy, ox)], ch, cw)
    inside = ic.expand_as(out)
    assert torch.allclose(out[inside], ref[inside], atol=1e-6, rtol=0)


def test_a_mode_per_canvas_equals_each_canvas_solved_in_its_mode() -> None:
    masks = np.stack([disc(48, 48, 24, 24, r) for r in (6, 9, 12, 15)])
    _, (t, s, m, inside) = canvas_problem(masks, [(4, 4), (5, 3), (3, 5), (4, 4)], 40, 40)
    mixed = torch.tensor([True, False, False, True])
    out, stats = poisson_blend_canvases(t, s, m, inside, mixed)
    for mode in ("normal", "mixed"):
        alone, alone_stats = poisson_blend_canvases(t, s, m, inside, mode)
        rows = mixed if mode == "mixed" else ~mixed
        assert torch.equal(out[rows], alone[rows])
        assert torch.equal(stats.iterations[rows], alone_stats.iterations[rows])


def test_a_mode_per_canvas_must_be_one_bool_per_canvas() -> None:
    masks = np.stack([disc(48, 48, 24, 24, 8)] * 2)
    _, (t, s, m, inside) = canvas_problem(masks, [(4, 4), (4, 4)], 40, 40)
    with pytest.raises(ValueError, match="per-sample mode"):
        poisson_blend_canvases(t, s, m, inside, torch.tensor([True, False, True]))
