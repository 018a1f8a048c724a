"""Canvas transfers and source rendering: the CPU's per-sample paths equal the batched ones."""

from __future__ import annotations

import pytest
import torch

from cai_aug.engine import resample


def _origins(generator, batch, low, high):
    return torch.randint(low, high, (batch,), generator=generator), torch.randint(
        low, high, (batch,), generator=generator
    )


def _paste_case(generator, dtype, masked):
    """Four images, three canvases of a random size (and their where masks), origins inside, across the
    edges and off the images."""
    images = torch.rand(4, 3, 19, 23, generator=generator)
    canvas_h, canvas_w = (int(v) for v in torch.randint(1, 36, (2,), generator=generator))
    canvas = torch.rand(3, 3, canvas_h, canvas_w, generator=generator)
    if dtype == torch.bool:
        images, canvas = images > 0.5, canvas > 0.5
    where = torch.rand(3, 1, canvas_h, canvas_w, generator=generator) > 0.5 if masked else None
    return (images, canvas, where, *_origins(generator, 3, -40, 26))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_crop_by_slices_equals_crop_by_gathers(dtype):
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        images = torch.rand(3, 2, 21, 26, generator=generator)
        images = images > 0.5 if dtype == torch.bool else images
        canvas_h, canvas_w = (int(v) for v in torch.randint(1, 40, (2,), generator=generator))
        origin_y, origin_x = _origins(generator, 3, -45, 30)  # inside, across the edges, and missing the image
        rows, cols = resample._clamped_windows(images.shape, origin_y, origin_x, canvas_h, canvas_w)
        expected = resample._crop_gather(images, rows, cols)
        assert torch.equal(resample._crop_loop(images, origin_y, origin_x, canvas_h, canvas_w), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_paste_by_slices_equals_paste_by_index_put(dtype):
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        images, canvas, _, origin_y, origin_x = _paste_case(generator, dtype, masked=False)
        rows = torch.randperm(4, generator=generator)[:3]  # canvas n goes into image rows[n]
        by_slices, by_index = images.clone(), images.clone()
        resample._paste_loop(by_slices, canvas, origin_y, origin_x, rows)
        resample._paste_index(by_index, canvas, origin_y, origin_x, rows)
        assert torch.equal(by_slices, by_index)


def _compiled():
    from cai_aug.poisson import cpu_kernel

    if not cpu_kernel.available():
        pytest.skip("no compiled CPU kernels here (no C++ compiler)")
    return cpu_kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.float64])
def test_compiled_crop_equals_crop_by_gathers(dtype):
    kernel = _compiled()
    generator = torch.Generator().manual_seed(2)
    for _ in range(50):
        images = torch.rand(3, 2, 21, 26, generator=generator).to(dtype if dtype != torch.bool else torch.float32)
        images = images > 0.5 if dtype == torch.bool else images
        canvas_h, canvas_w = (int(v) for v in torch.randint(1, 40, (2,), generator=generator))
        origin_y, origin_x = _origins(generator, 4, -45, 30)
        image_rows = torch.randint(0, 3, (4,), generator=generator)
        rows, cols = resample._clamped_windows(images.shape, origin_y, origin_x, canvas_h, canvas_w)
        expected = resample._crop_gather(images, rows, cols, image_rows)
        assert torch.equal(kernel.crop(images, image_rows, origin_y, origin_x, canvas_h, canvas_w), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
@pytest.mark.parametrize("masked", [False, True])
def test_compiled_paste_equals_paste_by_slices(dtype, masked):
    kernel = _compiled()
    generator = torch.Generator().manual_seed(3)
    for _ in range(50):
        images, canvas, where, origin_y, origin_x = _paste_case(generator, dtype, masked)
        rows = torch.randint(0, 4, (3,), generator=generator)  # windows may share an image: written in order
        compiled, by_slices = images.clone(), images.clone()
        kernel.paste_(compiled, canvas, rows, origin_y, origin_x, where)
        resample._paste_loop(by_slices, canvas, origin_y, origin_x, rows, where)
        assert torch.equal(compiled, by_slices)


@pytest.mark.parametrize("masked", [False, True])
def test_a_picked_paste_equals_the_paste_of_the_picked_canvases(masked):
    kernel = _compiled()
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(4, 3, 19, 23, generator=generator)
    canvas = torch.rand(5, 3, 9, 11, generator=generator)
    where = torch.rand(5, 1, 9, 11, generator=generator) > 0.5 if masked else None
    pick, rows = torch.tensor([4, 1, 1]), torch.tensor([0, 3, 2])
    origin_y, origin_x = _origins(generator, 3, -5, 15)
    picked, copied = images.clone(), images.clone()
    kernel.paste_(picked, canvas, rows, origin_y, origin_x, where, pick=pick)
    resample._paste_loop(copied, canvas[pick], origin_y, origin_x, rows, None if where is None else where[pick])
    assert torch.equal(picked, copied)


def _per_sample_and_batch(demo_bank):
    storage = demo_bank.storage_on("cpu")
    source = torch.tensor([0, 1, 2, 3])
    height, width = torch.tensor([40, 7, 23, 1]), torch.tensor([12, 31, 23, 2])
    pad = 10
    canvas_h, canvas_w = int(height.max()) + 2 * pad, int(width.max()) + 2 * pad
    image, mask = resample.render_patterns(storage, source, height, width, canvas_h, canvas_w, pad)
    taps = resample._taps(storage, source, height, width, canvas_h, canvas_w, pad)
    return (image, mask), resample._render(storage, taps, height, width, pad), height, width, pad


def _assert_equal_over_each_pattern_and_its_pad(got, batch, height, width, pad):
    (image, mask), (batch_image, batch_mask) = got, batch
    assert torch.equal(mask, batch_mask)
    for n, (h, w) in enumerate(zip(height.tolist(), width.tolist())):
        assert torch.equal(image[n, :, : h + 2 * pad, : w + 2 * pad], batch_image[n, :, : h + 2 * pad, : w + 2 * pad])


def test_per_sample_rendering_equals_the_batch_over_each_pattern_and_its_pad(demo_bank):
    _assert_equal_over_each_pattern_and_its_pad(*_per_sample_and_batch(demo_bank))


def test_compiled_rendering_gives_the_torch_bits(demo_bank, monkeypatch):
    """The compiled resampling (the CPU default) and the per-sample torch loop (no compiler) agree bit for bit."""
    from cai_aug.poisson import cpu_kernel

    if not cpu_kernel.available():
        pytest.skip("no compiled CPU kernels here (no C++ compiler)")
    compiled = _per_sample_and_batch(demo_bank)
    monkeypatch.setattr(cpu_kernel, "USE", False)
    loop = _per_sample_and_batch(demo_bank)
    for one, other in zip(compiled[0], loop[0]):
        assert torch.equal(one, other)
    _assert_equal_over_each_pattern_and_its_pad(*loop)
