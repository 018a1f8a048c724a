"""The Poisson solver on CUDA: CuPy kernels vs the torch path vs scipy, host syncs, memory, full CAI.

Skipped without a CUDA device; the CuPy tests also skip when cupy is not installed
(``pip install -e ".[cuda12]"`` or ``".[cuda13]"``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuda_syncs import count_cuda_syncs
from test_poisson import disc, images, reference_blend, rel_error

from cai_aug.poisson import blend as poisson
from cai_aug.poisson import cupy_backend as poisson_cupy
from cai_aug.poisson import poisson_blend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
needs_cupy = pytest.mark.skipif(not poisson_cupy.available(), reason="cupy is not installed")
CUDA = torch.device("cuda")


def _cases() -> dict[str, np.ndarray]:
    h = w = 64
    line = np.zeros((h, w), dtype=bool)
    line[5:60, 20] = True
    pixel = np.zeros((h, w), dtype=bool)
    pixel[30, 31] = True
    return {
        "disc": disc(h, w, 30, 33, 20),
        "ring": disc(h, w, 32, 32, 24) & ~disc(h, w, 32, 32, 9),
        "blobs": disc(h, w, 14, 14, 8) | disc(h, w, 44, 48, 12),
        "border": disc(h, w, 0, 25, 14),
        "corner": disc(h, w, 63, 63, 15),
        "pixel": pixel,
        "line": line,
    }


CASES = _cases()


@needs_cupy
@pytest.mark.parametrize("mode", ["normal", "mixed"])
@pytest.mark.parametrize("case", list(CASES))
def test_cupy_matches_spsolve(case: str, mode: str) -> None:
    mask = CASES[case]
    t, s = images(1, 3, *mask.shape)
    m = torch.from_numpy(mask)[None, None]
    out, stats = poisson_blend(
        t.float().to(CUDA), s.float().to(CUDA), m.to(CUDA), mode, backend="cupy", return_stats=True
    )
    assert stats.backend == "cupy"
    ref = reference_blend(t[0].numpy(), s[0].numpy(), mask, mode)
    assert rel_error(out[0].cpu(), ref, mask) <= 1e-4


@pytest.mark.parametrize("backend", [pytest.param("cupy", marks=needs_cupy), "torch"])
def test_visible_tolerance_on_cuda_stays_below_one_grey_level(backend: str) -> None:
    masks = np.stack(list(CASES.values()))
    t, s = images(len(masks), 3, 64, 64, seed=4)
    out = poisson_blend(
        t.float().to(CUDA), s.float().to(CUDA), torch.from_numpy(masks)[:, None].to(CUDA), backend=backend,
        atol=1 / 255,
    )  # fmt: skip
    for i, m in enumerate(masks):
        ref = reference_blend(t[i].numpy(), s[i].numpy(), m, "normal")
        assert np.abs(out[i].cpu().double().numpy()[:, m] - ref[:, m]).max() <= 1 / 255, list(CASES)[i]


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_torch_on_cuda_matches_spsolve_batched(mode: str) -> None:
    masks = np.stack(list(CASES.values()))
    t, s = images(len(masks), 3, 64, 64, seed=2)
    out = poisson_blend(
        t.float().to(CUDA), s.float().to(CUDA), torch.from_numpy(masks)[:, None].to(CUDA), mode, backend="torch"
    )
    for i, m in enumerate(masks):
        ref = reference_blend(t[i].numpy(), s[i].numpy(), m, mode)
        assert rel_error(out[i].cpu(), ref, m) <= 1e-4, list(CASES)[i]


@needs_cupy
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cupy_torch_cuda_and_cpu_agree(dtype: torch.dtype) -> None:
    masks = torch.from_numpy(np.stack(list(CASES.values())))[:, None]
    t, s = images(len(masks), 3, 64, 64, seed=3)
    t, s = t.to(dtype), s.to(dtype)
    cpu = poisson_blend(t, s, masks)
    gpu_torch = poisson_blend(t.to(CUDA), s.to(CUDA), masks.to(CUDA), backend="torch").cpu()
    gpu_cupy, stats = poisson_blend(t.to(CUDA), s.to(CUDA), masks.to(CUDA), backend="cupy", return_stats=True)
    assert (stats.residual <= 1e-4).all()
    assert torch.allclose(gpu_torch, cpu, atol=1e-4, rtol=0)
    assert torch.allclose(gpu_cupy.cpu(), cpu, atol=1e-4, rtol=0)


@needs_cupy
def test_auto_backend_picks_cupy_for_cuda_tensors() -> None:
    t, s = images(1, 3, 32, 32)
    m = torch.from_numpy(disc(32, 32, 16, 16, 8))[None, None]
    _, stats = poisson_blend(t.to(CUDA), s.to(CUDA), m.to(CUDA), return_stats=True)
    assert stats.backend == "cupy"
    _, stats = poisson_blend(t, s, m, return_stats=True)
    assert stats.backend == "torch"


def _pattern_batch(b: int, size: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``b`` discs of 26 / 77 / 180 px (the 4:3:3 mix) at random places, on the GPU."""
    g = torch.Generator().manual_seed(seed)
    diam = torch.tensor([180, 180, 180, 180, 77, 77, 77, 26, 26, 26])[torch.arange(b) % 10]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = diam[:, None, None] / 2
    cy = r[:, :, :1] + torch.rand(b, 1, 1, generator=g) * (size - 2 * r[:, :, :1])
    cx = r[:, :, :1] + torch.rand(b, 1, 1, generator=g) * (size - 2 * r[:, :, :1])
    masks = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2)[:, None]
    t = torch.rand(b, 3, size, size, generator=g)
    s = torch.rand(b, 3, size, size, generator=g)
    return t.to(CUDA), s.to(CUDA), masks.to(CUDA)


_count_syncs = count_cuda_syncs


@pytest.mark.parametrize("backend", [pytest.param("cupy", marks=needs_cupy), "torch"])
def test_batch_of_256_needs_a_bounded_number_of_host_syncs(backend: str) -> None:
    small = _pattern_batch(16)
    large = _pattern_batch(256)
    poisson_blend(*small, backend=backend)  # compile / warm up outside the count
    syncs_small = _count_syncs(lambda: poisson_blend(*small, backend=backend))
    syncs_large = _count_syncs(lambda: poisson_blend(*large, backend=backend))
    # per batch: ROIs once, then per size bucket a few setup syncs and one per CHECK_EVERY iterations
    assert syncs_large <= 60, syncs_large
    assert syncs_large <= syncs_small + 10, (syncs_small, syncs_large)


@pytest.mark.parametrize("backend", [pytest.param("cupy", marks=needs_cupy), "torch"])
def test_a_batch_that_does_not_fit_is_split_with_the_same_result(backend: str, monkeypatch) -> None:
    t, s, m = _pattern_batch(12)
    whole = poisson_blend(t, s, m, backend=backend)
    monkeypatch.setattr(poisson, "MEMORY_FRACTION", 1e-9)  # forces one canvas per chunk
    split = poisson_blend(t, s, m, backend=backend)
    assert torch.allclose(whole, split, atol=1e-5)


@pytest.mark.parametrize("backend", [pytest.param("cupy", marks=needs_cupy), "torch"])
def test_peak_memory_per_image_stays_within_the_estimate(backend: str) -> None:
    t, s, m = _pattern_batch(64)
    poisson_blend(t, s, m, backend=backend)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    poisson_blend(t, s, m, backend=backend)
    torch.cuda.synchronize()
    per_image = (torch.cuda.max_memory_allocated() - base) / 64
    # estimate (README): about 220 bytes per canvas pixel at 3 channels, float32, i.e. about 7 MiB for
    # a 180-px pattern's canvas; the 4:3:3 mix averages well below that
    print(f"peak extra memory per 256x256 image ({backend}): {per_image / 2**20:.2f} MiB")
    assert per_image < 16 * 2**20


def test_full_cai_runs_on_a_cuda_batch(tmp_path) -> None:
    cai_aug = pytest.importorskip("cai_aug")
    from cai_aug.io.demo_data import demo_images, write_demo_bank

    bank = cai_aug.AnomalyBank.from_folder(write_demo_bank(tmp_path / "bank"))
    cai = cai_aug.CAI(bank, foreground="none", seed=0, device="cuda")
    images_ = demo_images(8, size=128).to(CUDA)
    result = cai(images_)
    assert result.images.device.type == "cuda"
    assert result.images.shape == images_.shape
    assert result.masks.shape == (8, 1, 128, 128)
    assert result.labels.sum() >= 1
