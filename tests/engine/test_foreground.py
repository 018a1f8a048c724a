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
    from cai_aug.frontends.rembg import model_path

    if not model_path("u2netp").exists():
        pytest.skip(
            f"no rembg model at {model_path('u2netp')}: rembg only downloads its weights and no package "
            "ships them, so the real matting path cannot run offline here"
        )
    pytest.importorskip("rembg", reason="rembg is not installed (pip install 'cai_aug[rembg]')")
    image, disc = _object_on_plain_background()
    found = resolve("rembg")(image)[0, 0]
    assert (found & disc).sum() / (found | disc).sum() > 0.5
