"""The fast mode ``atol=1/255``: the largest pixel error against scipy's exact solve stays below 1/255."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_poisson import disc, images, reference_blend

from cai_aug.poisson import poisson_blend, poisson_blend_canvases

VISIBLE = 1.0 / 255.0


def star(h: int, w: int, cy: float, cx: float, r: float, phase: float = 0.3) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    theta = np.arctan2(yy - cy, xx - cx)
    radius = r * (1 + 0.25 * np.sin(5 * theta + phase) + 0.08 * np.sin(11 * theta))
    return np.hypot(yy - cy, xx - cx) <= radius


def lines(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[8 : h - 8, w // 3] = True
    m[h // 2, 4 : w - 4] = True
    m[10:60, 80:83] = True
    return m


def _shapes() -> dict[str, np.ndarray]:
    h = w = 128
    return {
        "disc-small": disc(h, w, 40, 70, 6),
        "disc-large": disc(h, w, 64, 64, 55),
        "star": star(h, w, 60, 66, 40),
        "thin-lines": lines(h, w),
        "border": disc(h, w, 0, 64, 40),
        "corner": disc(h, w, 127, 127, 60),
        "ring": disc(h, w, 64, 64, 50) & ~disc(h, w, 64, 64, 20),
    }


SHAPES = _shapes()


def _images(kind: str, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1]: smooth plus noise, uniform noise, or black-and-white (the worst contrast)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "smooth":
        return images(1, 3, h, w, seed=seed)
    t = torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)
    s = torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)
    if kind == "binary":
        return (t > 0.5).double(), (s > 0.5).double()
    return t, s


def max_error(out: torch.Tensor, ref: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(out.double().numpy()[:, mask] - ref[:, mask]).max())


@pytest.mark.parametrize("mode", ["normal", "mixed"])
@pytest.mark.parametrize("kind", ["smooth", "noise", "binary"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_visible_tolerance_stays_below_one_grey_level(shape: str, kind: str, mode: str) -> None:
    mask = SHAPES[shape]
    t, s = _images(kind, *mask.shape, seed=len(shape))
    out = poisson_blend(t.float(), s.float(), torch.from_numpy(mask)[None, None], mode, atol=VISIBLE)
    ref = reference_blend(t[0].numpy(), s[0].numpy(), mask, mode)
    assert max_error(out[0], ref, mask) <= VISIBLE


def test_visible_tolerance_stops_earlier_than_the_exact_solve() -> None:
    mask = torch.from_numpy(SHAPES["disc-large"])[None, None]
    t, s = _images("noise", 128, 128, seed=1)
    _, exact = poisson_blend(t.float(), s.float(), mask, return_stats=True)
    _, fast = poisson_blend(t.float(), s.float(), mask, atol=VISIBLE, return_stats=True)
    assert int(fast.iterations[0]) < int(exact.iterations[0])


def test_atol_scales_with_the_image_range() -> None:
    # images in [0, 255]: atol=1 is one grey level
    mask = SHAPES["star"]
    t, s = _images("noise", *mask.shape, seed=2)
    out = poisson_blend(255 * t.float(), 255 * s.float(), torch.from_numpy(mask)[None, None], atol=1.0)
    ref = reference_blend(255 * t[0].numpy(), 255 * s[0].numpy(), mask, "normal")
    assert max_error(out[0], ref, mask) <= 1.0


def test_canvases_take_the_visible_tolerance_too() -> None:
    mask = SHAPES["corner"]
    t, s = _images("binary", *mask.shape, seed=3)
    inside = torch.ones(1, 1, *mask.shape, dtype=torch.bool)
    out, _ = poisson_blend_canvases(t.float(), s.float(), torch.from_numpy(mask)[None, None], inside, atol=VISIBLE)
    ref = reference_blend(t[0].numpy(), s[0].numpy(), mask, "normal")
    assert max_error(out[0], ref, mask) <= VISIBLE


@pytest.mark.parametrize("atol", [0.0, -1.0, math.inf, math.nan, "1/255"])
def test_bad_atol_is_an_error(atol) -> None:
    t, s = images(1, 1, 8, 8)
    with pytest.raises(ValueError, match="atol"):
        poisson_blend(t, s, torch.zeros(1, 1, 8, 8, dtype=torch.bool), atol=atol)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cy=st.floats(-10, 74),
    cx=st.floats(-10, 74),
    r=st.floats(1.0, 40.0),
    phase=st.floats(0, 6.3),
    kind=st.sampled_from(["smooth", "noise", "binary"]),
    mode=st.sampled_from(["normal", "mixed"]),
)
def test_random_stars_stay_below_one_grey_level(cy, cx, r, phase, kind, mode) -> None:
    mask = star(64, 64, cy, cx, r, phase)
    if not mask.any() or mask.all():
        return
    t, s = _images(kind, 64, 64, seed=int(r * 100))
    out = poisson_blend(t.float(), s.float(), torch.from_numpy(mask)[None, None], mode, atol=VISIBLE)
    ref = reference_blend(t[0].numpy(), s[0].numpy(), mask, mode)
    assert max_error(out[0], ref, mask) <= VISIBLE
