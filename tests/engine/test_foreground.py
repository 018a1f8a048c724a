import pytest
import torch

from cai_aug.engine.foreground import ForegroundCache, border_background, resolve


def _object_on_plain_background():
    image = torch.full((1, 3, 96, 96), 0.08)
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    disc = ((yy - 50) ** 2 + (xx - 44) ** 2) < 30**2
    image[0, :, disc] = torch.tensor([0.7, 0.5, 0.3])[:, None] + 0.03 * torch.randn(3, int(disc.sum()))
    return image.clamp(0, 1), disc


def test_auto_finds_an_object_on_a_plain_background():
    image, disc = _object_on_plain_background()
    found = border_background(image)[0, 0]
    iou = (found & disc).sum() / (found | disc).sum()
    assert iou > 0.9


def test_auto_falls_back_to_all_ones_on_textures():
    texture = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert border_background(texture).all()


def test_none_is_all_ones_and_callables_are_used_as_they_are():
    images = torch.rand(2, 3, 32, 32)
    assert resolve("none")(images).all()
    half = lambda x: torch.zeros_like(x[:, :1], dtype=torch.bool)  # noqa: E731
    assert resolve(half) is half


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="foreground must be"):
        resolve("magic")


def test_rembg_without_a_local_model_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    estimator = resolve("rembg")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "u2netp.onnx")):
        estimator(torch.rand(1, 3, 32, 32))


def test_cache_computes_each_image_id_once():
    calls = []

    def estimator(images):
        calls.append(images.shape[0])
        return torch.ones_like(images[:, :1], dtype=torch.bool)

    cache = ForegroundCache(estimator)
    images = torch.rand(3, 3, 32, 32)
    cache(images, ["a", "b", "c"])
    cache(images, ["a", "c", "d"])
    assert calls == [3, 1]


def test_estimator_with_wrong_shape_is_an_error():
    cache = ForegroundCache(lambda x: torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="foreground estimator returned shape"):
        cache(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_dilation_is_the_any_over_a_square_window(size):
    import numpy as np

    from cai_aug.engine.foreground import dilate

    mask = np.random.default_rng(size).random((2, 25, 31)) > 0.93
    ours = dilate(torch.from_numpy(mask)[:, None], size)[:, 0].numpy()
    before, after = (size - 1) // 2, size // 2
    padded = np.pad(mask, ((0, 0), (before, after), (before, after)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))
    assert np.array_equal(ours, windows.any(axis=(-2, -1)))


def test_rembg_real_model_path():
    from cai_aug.engine.foreground_rembg import model_path

    if not model_path("u2netp").exists():
        pytest.skip(
            f"no rembg model at {model_path('u2netp')}: rembg only downloads its weights and no package "
            "ships them, so the real matting path cannot run offline here"
        )
    pytest.importorskip("rembg", reason="rembg is not installed (pip install 'cai_aug[rembg]')")
    image, disc = _object_on_plain_background()
    found = resolve("rembg")(image)[0, 0]
    assert (found & disc).sum() / (found | disc).sum() > 0.5


def _windows(mask, size, fill):
    """Every ``size x size`` window of ``(B, H, W)`` numpy bool, padded with ``fill`` like the engine."""
    import numpy as np

    before, after = (size - 1) // 2, size // 2
    padded = np.pad(mask, ((0, 0), (before, after), (before, after)), constant_values=fill)
    return np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 9])
def test_erosion_is_the_all_over_a_square_window_with_outside_set(size):
    import numpy as np

    from cai_aug.engine.foreground import erode

    mask = np.random.default_rng(size).random((2, 25, 31)) > 0.1
    ours = erode(torch.from_numpy(mask)[:, None], size)[:, 0].numpy()
    assert np.array_equal(ours, _windows(mask, size, True).all(axis=(-2, -1)))


@pytest.mark.parametrize(("before", "after"), [(0, 0), (1, 1), (3, 4), (8, 8)])
def test_box_count_equals_float_running_sums(before, after):
    import torch.nn.functional as F

    from cai_aug.engine.foreground import box_count

    # the running-sum implementation box_count replaced (8, 8 is a 289-pixel window: int32 counts)
    mask = torch.rand(2, 1, 23, 37, generator=torch.Generator().manual_seed(before)) > 0.5
    counts = mask.float()
    for dim in (-1, -2):
        pad = [0, 0, 0, 0]
        pad[0 if dim == -1 else 2], pad[1 if dim == -1 else 3] = before + 1, after
        running = F.pad(counts, pad).cumsum(dim=dim)
        size = counts.shape[dim]
        counts = running.narrow(dim, before + after + 1, size) - running.narrow(dim, 0, size)
    assert torch.equal(box_count(mask, before, after).float(), counts)


@pytest.mark.parametrize("border", [2, 5, 40])
def test_frame_pixels_are_the_pixels_of_the_border_frame(border):
    from cai_aug.engine.foreground import frame_pixels

    images = torch.rand(2, 3, 30, 41)
    frame = torch.ones(30, 41, dtype=torch.bool)
    frame[border:-border, border:-border] = False
    ours = frame_pixels(images, border)
    assert torch.equal(ours.sort(dim=2).values, images[:, :, frame].sort(dim=2).values)


def test_colour_distance_equals_the_norm_of_the_difference():
    from cai_aug.engine.foreground import colour_distance

    images, colour = torch.rand(3, 3, 17, 19), torch.rand(3, 3)
    expected = (images - colour[..., None, None]).square().sum(dim=1, keepdim=True).sqrt()
    assert torch.equal(colour_distance(images, colour), expected)


def test_square_bound_is_the_last_float_whose_square_root_stays_below_the_threshold():
    from cai_aug.engine.foreground import square_bound

    generator = torch.Generator().manual_seed(0)
    threshold = torch.cat([torch.rand(50_000, generator=generator) * 2, torch.tensor([1e-3, 0.1, 0.5, 1.0, 3.0])])
    bound = square_bound(threshold)
    above = torch.nextafter(bound, torch.tensor(float("inf")))
    # so sqrt(s) > threshold exactly when s > bound, for every float32 s
    assert (bound.sqrt() <= threshold).all() and (above.sqrt() > threshold).all()
