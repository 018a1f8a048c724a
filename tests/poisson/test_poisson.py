"""poisson_blend against an independent scipy sparse direct solve of Pérez et al. 2003, eq. 7."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cai_aug.poisson import PoissonStats, poisson_blend
from cai_aug.poisson import blend as poisson

# ----------------------------------------------------------------------------------------------------
# reference: the 5-point system built pixel pair by pixel pair, solved directly


def reference_blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Exact solution for one sample: ``target``, ``source`` ``(C, H, W)`` float64, ``mask`` ``(H, W)``."""
    c, h, w = target.shape
    ys, xs = np.nonzero(mask)
    n = len(ys)
    out = target.astype(np.float64).copy()
    if n == 0:
        return out
    index = -np.ones((h, w), dtype=np.int64)
    index[ys, xs] = np.arange(n)
    diag = np.zeros(n)
    rhs = np.zeros((c, n))
    rows, cols = [], []
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        k = np.nonzero(inside)[0]
        qy, qx = qy[k], qx[k]
        diag[k] += 1.0  # |N_p| counts only in-image neighbours
        ds = source[:, ys[k], xs[k]] - source[:, qy, qx]
        if mode == "mixed":
            dt = target[:, ys[k], xs[k]] - target[:, qy, qx]
            v = np.where(np.abs(dt) > np.abs(ds), dt, ds)
        else:
            v = ds
        rhs[:, k] += v
        unknown = mask[qy, qx]
        rhs[:, k[~unknown]] += target[:, qy[~unknown], qx[~unknown]]
        rows.append(k[unknown])
        cols.append(index[qy[unknown], qx[unknown]])
    rows_all = np.concatenate([np.arange(n), *rows])
    cols_all = np.concatenate([np.arange(n), *cols])
    vals = np.concatenate([diag, -np.ones(len(rows_all) - n)])
    a = sp.csc_matrix((vals, (rows_all, cols_all)), shape=(n, n))
    for ch in range(c):
        out[ch, ys, xs] = spl.spsolve(a, rhs[ch])
    return out


def images(b: int, c: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth-plus-noise target and source ``(B, C, H, W)`` float64."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    t = 0.5 + 0.3 * torch.sin(yy / 7.0 + xx / 11.0) + 0.1 * torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    s = 0.4 * torch.cos(xx / 5.0) + 0.3 * torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    return t, s


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def rel_error(out: torch.Tensor, ref: np.ndarray, mask: np.ndarray) -> float:
    """Relative error on the unknowns, ``||out - ref|| / ||ref||`` over the mask."""
    o = out.double().numpy()[:, mask]
    r = ref[:, mask]
    return float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12))


def check_against_reference(mask: np.ndarray, mode: str = "normal", c: int = 3, dtype=torch.float32) -> None:
    h, w = mask.shape
    t, s = images(1, c, h, w)
    out = poisson_blend(t.to(dtype), s.to(dtype), torch.from_numpy(mask)[None, None], mode)
    ref = reference_blend(t[0].numpy(), s[0].numpy(), mask, mode)
    assert rel_error(out[0], ref, mask) <= 1e-4


# ----------------------------------------------------------------------------------------------------
# mask shapes


@pytest.mark.parametrize("mode", ["normal", "mixed"])
@pytest.mark.parametrize("c", [1, 3])
def test_disc_matches_spsolve(mode: str, c: int) -> None:
    check_against_reference(disc(64, 64, 30, 33, 18), mode, c)


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_ring_with_hole_matches_spsolve(mode: str) -> None:
    check_against_reference(disc(64, 64, 32, 32, 22) & ~disc(64, 64, 32, 32, 9), mode)


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_two_separate_blobs_match_spsolve(mode: str) -> None:
    check_against_reference(disc(64, 64, 14, 14, 8) | disc(64, 64, 44, 48, 12), mode)


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_mask_touching_the_border_matches_spsolve(mode: str) -> None:
    check_against_reference(disc(48, 56, 0, 25, 14), mode)


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_mask_in_a_corner_matches_spsolve(mode: str) -> None:
    check_against_reference(disc(48, 48, 47, 47, 15), mode)


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_single_pixel_matches_spsolve(mode: str) -> None:
    m = np.zeros((16, 16), dtype=bool)
    m[7, 9] = True
    check_against_reference(m, mode)


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_one_pixel_wide_line_matches_spsolve(mode: str) -> None:
    m = np.zeros((40, 40), dtype=bool)
    m[5:35, 17] = True
    m[20, 3:30] = True
    check_against_reference(m, mode)


def test_line_along_the_image_edge_matches_spsolve() -> None:
    m = np.zeros((24, 40), dtype=bool)
    m[0, 2:38] = True
    check_against_reference(m)


def test_float64_matches_spsolve_and_stays_float64() -> None:
    mask = disc(40, 40, 20, 20, 12)
    t, s = images(1, 3, 40, 40)
    out = poisson_blend(t, s, torch.from_numpy(mask)[None, None], rtol=1e-8)
    ref = reference_blend(t[0].numpy(), s[0].numpy(), mask, "normal")
    assert out.dtype == torch.float64
    assert rel_error(out[0], ref, mask) <= 1e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_returns_input_dtype(dtype: torch.dtype) -> None:
    mask = torch.from_numpy(disc(32, 32, 16, 16, 8))[None, None]
    t, s = images(1, 3, 32, 32)
    out = poisson_blend(t.to(dtype), s.to(dtype), mask)
    ref = poisson_blend(t.to(dtype).float(), s.to(dtype).float(), mask)
    assert out.dtype == dtype
    assert torch.allclose(out.float(), ref, atol=2e-2)


# ----------------------------------------------------------------------------------------------------
# batches


def batch_masks() -> np.ndarray:
    h, w = 48, 48
    line = np.zeros((h, w), dtype=bool)
    line[10:40, 30] = True
    pixel = np.zeros((h, w), dtype=bool)
    pixel[3, 4] = True
    return np.stack(
        [
            disc(h, w, 24, 24, 14),
            disc(h, w, 24, 24, 20) & ~disc(h, w, 24, 24, 6),
            line,
            disc(h, w, 47, 0, 9),
            pixel,
            disc(h, w, 10, 10, 4) | disc(h, w, 36, 30, 8),
        ]
    )


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_batch_with_different_masks_matches_spsolve(mode: str) -> None:
    masks = batch_masks()
    t, s = images(len(masks), 3, 48, 48, seed=3)
    out = poisson_blend(t.float(), s.float(), torch.from_numpy(masks)[:, None], mode)
    for i, m in enumerate(masks):
        ref = reference_blend(t[i].numpy(), s[i].numpy(), m, mode)
        assert rel_error(out[i], ref, m) <= 1e-4, f"sample {i}"


def test_pixels_outside_the_mask_equal_target_exactly() -> None:
    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48, seed=4)
    out = poisson_blend(t.float(), s.float(), masks, "mixed")
    outside = ~masks.expand_as(out)
    assert torch.equal(out[outside], t.float()[outside])


def test_sample_alone_equals_sample_in_batch() -> None:
    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48, seed=5)
    batched, stats_b = poisson_blend(t.float(), s.float(), masks, return_stats=True)
    for i in range(len(masks)):
        alone, stats_a = poisson_blend(t[i : i + 1].float(), s[i : i + 1].float(), masks[i : i + 1], return_stats=True)
        assert stats_a.iterations[0] == stats_b.iterations[i]
        assert torch.allclose(alone[0], batched[i], atol=1e-5), f"sample {i}"


def test_same_pixels_alone_and_in_a_batch_of_64() -> None:
    rng = np.random.default_rng(7)
    size = 64
    masks = np.stack([disc(size, size, *rng.uniform(8, 56, 2), rng.uniform(1, 24)) for _ in range(64)])
    masks[:, 0, 0] = False  # never the whole image
    t, s = images(64, 3, size, size, seed=8)
    batched = poisson_blend(t.float(), s.float(), torch.from_numpy(masks)[:, None])
    for i in (0, 17, 63):
        alone = poisson_blend(t[i : i + 1].float(), s[i : i + 1].float(), torch.from_numpy(masks[i : i + 1])[:, None])
        # exact up to float rounding: the same hierarchy and iterates whatever the companions
        assert torch.allclose(alone[0], batched[i], atol=1e-5)
        as8 = lambda x: (x.clamp(0, 1) * 255).round()  # noqa: E731
        assert (as8(alone[0]) - as8(batched[i])).abs().max() <= 1


def test_a_batch_split_into_chunks_gives_the_same_result(monkeypatch) -> None:
    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48, seed=6)
    whole = poisson_blend(t.float(), s.float(), masks)
    monkeypatch.setattr(poisson, "CPU_MEMORY_BUDGET", 1)  # one canvas per chunk
    split = poisson_blend(t.float(), s.float(), masks)
    assert torch.allclose(whole, split, atol=1e-6)


def test_mask_without_channel_dim_is_accepted() -> None:
    masks = torch.from_numpy(batch_masks())
    t, s = images(len(masks), 1, 48, 48)
    assert torch.equal(poisson_blend(t, s, masks), poisson_blend(t, s, masks[:, None]))


# ----------------------------------------------------------------------------------------------------
# stats, edge cases


def test_stats_report_iterations_residual_and_backend() -> None:
    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48)
    _, stats = poisson_blend(t.float(), s.float(), masks, return_stats=True)
    assert isinstance(stats, PoissonStats)
    assert stats.backend == "torch"
    assert stats.iterations.shape == (len(masks),) and stats.residual.shape == (len(masks),)
    assert (stats.iterations >= 1).all() and (stats.iterations <= 30).all()
    assert (stats.residual <= 1e-4).all()


def test_iterations_stay_low_for_a_200_pixel_disc() -> None:
    mask = torch.from_numpy(disc(220, 220, 110, 110, 100))[None, None]
    t, s = images(1, 1, 220, 220)
    _, stats = poisson_blend(t.float(), s.float(), mask, return_stats=True)
    assert int(stats.iterations[0]) <= 30
    assert float(stats.residual[0]) <= 1e-4


def test_empty_mask_returns_target_with_zero_iterations() -> None:
    t, s = images(2, 3, 16, 16)
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    out, stats = poisson_blend(t, s, mask, return_stats=True)
    assert torch.equal(out, t)
    assert stats.iterations.tolist() == [0, 0]


def test_max_iter_zero_leaves_the_unknowns_at_zero_iterations() -> None:
    mask = torch.from_numpy(disc(16, 16, 8, 8, 4))[None, None]
    t, s = images(1, 1, 16, 16)
    _, stats = poisson_blend(t, s, mask, max_iter=0, return_stats=True)
    assert stats.iterations.tolist() == [0]
    assert float(stats.residual[0]) > 1e-4


def test_mask_covering_the_whole_image_is_an_error() -> None:
    t, s = images(1, 1, 8, 8)
    with pytest.raises(ValueError, match="whole image"):
        poisson_blend(t, s, torch.ones(1, 1, 8, 8, dtype=torch.bool))


def _img(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype)


def _mask(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.bool)


BAD_INPUTS = {
    "shape": ((_img(1, 3, 8, 8), _img(1, 3, 8, 9), _mask(1, 1, 8, 8)), {}, ValueError, "source shape"),
    "ndim": ((_img(3, 8, 8), _img(3, 8, 8), _mask(1, 8, 8)), {}, ValueError, "target must be"),
    "mask-shape": ((_img(2, 3, 8, 8), _img(2, 3, 8, 8), _mask(1, 1, 8, 8)), {}, ValueError, "mask must be"),
    "mask-dtype": ((_img(1, 3, 8, 8), _img(1, 3, 8, 8), _img(1, 1, 8, 8)), {}, TypeError, "bool"),
    "int-images": (
        (_img(1, 3, 8, 8, dtype=torch.uint8), _img(1, 3, 8, 8, dtype=torch.uint8), _mask(1, 1, 8, 8)),
        {},
        TypeError,
        "floating point",
    ),
    "mixed-dtypes": (
        (_img(1, 3, 8, 8), _img(1, 3, 8, 8, dtype=torch.float64), _mask(1, 1, 8, 8)),
        {},
        TypeError,
        "dtype",
    ),
    "numpy": ((np.zeros((1, 3, 8, 8)), _img(1, 3, 8, 8), _mask(1, 1, 8, 8)), {}, TypeError, "torch.Tensor"),
    "mode": ((_img(1, 3, 8, 8), _img(1, 3, 8, 8), _mask(1, 1, 8, 8)), {"mode": "blend"}, ValueError, "mode"),
    "backend": (
        (_img(1, 3, 8, 8), _img(1, 3, 8, 8), _mask(1, 1, 8, 8)),
        {"backend": "numba"},
        ValueError,
        "backend",
    ),
    "rtol": ((_img(1, 3, 8, 8), _img(1, 3, 8, 8), _mask(1, 1, 8, 8)), {"rtol": 0}, ValueError, "rtol"),
    "cupy-on-cpu": (
        (_img(1, 3, 8, 8), _img(1, 3, 8, 8), _mask(1, 1, 8, 8)),
        {"backend": "cupy"},
        ValueError,
        "CUDA",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(case: str) -> None:
    args, kwargs, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        poisson_blend(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------
# property: random masks on small images


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 14),
    w=st.integers(1, 14),
    density=st.floats(0.05, 0.9),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["normal", "mixed"]),
)
def test_random_masks_match_spsolve_and_keep_the_outside(h, w, density, seed, mode) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < density
    mask[rng.integers(h), rng.integers(w)] = False  # never the whole image (singular)
    t = torch.from_numpy(rng.random((1, 2, h, w)))
    s = torch.from_numpy(rng.random((1, 2, h, w)))
    out = poisson_blend(t.float(), s.float(), torch.from_numpy(mask)[None, None], mode)
    ref = reference_blend(t[0].numpy(), s[0].numpy(), mask, mode)
    assert torch.equal(out[0][:, ~mask], t.float()[0][:, ~mask])
    if mask.any():
        assert rel_error(out[0], ref, mask) <= 1e-4
