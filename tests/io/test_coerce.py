"""cai_aug.io.coerce.coerce_image / restore_image: one set of rules for one image, and the way back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cai_aug.io.coerce import as_rgb, coerce_image, is_grey, load_image

RNG = np.random.default_rng(0)
U8 = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("item", "channels", "mode"),
    [
        (U8, 3, "RGB"),
        (U8[..., 0], 1, "L"),
        (np.moveaxis(U8, -1, 0), 3, "RGB"),
        ((U8[..., 0].astype(np.uint16) * 257), 1, "I;16"),
        (np.dstack([U8, U8[..., :1]]), 3, "RGBA"),
        (torch.from_numpy(U8).permute(2, 0, 1), 3, "RGB"),
        (torch.from_numpy(U8[..., 0]), 1, "L"),
        (torch.from_numpy(U8).permute(2, 0, 1).float() / 255, 3, "RGB"),
        (Image.fromarray(U8[..., 0]), 1, "L"),
        (Image.fromarray(np.dstack([U8[..., 0], U8[..., 1]]), "LA"), 1, "LA"),
        (Image.fromarray(U8).convert("P"), 3, "RGB"),
        (Image.fromarray(U8).convert("CMYK"), 3, "RGB"),
    ],
    ids=["hwc", "hw", "chw", "uint16", "rgba", "tensor", "tensor-hw", "float", "pil-L", "pil-LA", "pil-P", "cmyk"],
)
def test_forms_become_float_pixels_with_grey_kept_one_channel(item, channels, mode):
    image = coerce_image(item)
    assert image.pixels.dtype == torch.float32 and image.pixels.shape == (channels, 20, 24)
    assert 0 <= float(image.pixels.min()) and float(image.pixels.max()) <= 1
    assert image.form.mode == mode


@pytest.mark.parametrize(
    "item",
    [
        U8,
        U8[..., 0],
        np.moveaxis(U8, -1, 0),
        U8[..., 0].astype(np.uint16) * 257 + 3,
        np.dstack([U8, U8[..., :1]]),
        U8.astype(np.float32) / 255,
        torch.from_numpy(U8).permute(2, 0, 1),
        torch.from_numpy(U8[..., :2]).permute(2, 0, 1).contiguous(),
        torch.from_numpy(U8).permute(2, 0, 1).half() / 255,
    ],
    ids=["hwc", "hw", "chw", "uint16", "rgba", "float-hwc", "tensor", "tensor-la", "tensor-half"],
)
def test_restore_of_unchanged_pixels_gives_the_input_back_exactly(item):
    image = coerce_image(item)
    back = image.restore(image.pixels)
    assert type(back) is type(item) and back.dtype == item.dtype and back.shape == item.shape
    if isinstance(item, torch.Tensor):
        assert torch.equal(back, item)
    else:
        assert np.array_equal(back, item)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
def test_restore_gives_a_pil_image_of_the_same_mode_and_alpha(mode):
    array = U8[..., 0].astype(np.uint16) * 250 if mode == "I;16" else U8
    picture = Image.fromarray(array) if mode == "I;16" else Image.fromarray(U8).convert(mode)
    image = coerce_image(picture)
    back = image.restore(torch.zeros_like(image.pixels))
    assert back.mode == picture.mode and back.size == picture.size
    if "A" in mode:
        assert np.array_equal(np.asarray(back)[..., -1], np.asarray(picture)[..., -1])  # alpha untouched


def test_sixteen_bit_results_keep_their_range():
    image = coerce_image(np.full((20, 20), 40000, np.uint16))
    back = image.restore(image.pixels * 0 + 0.9)
    assert back.dtype == np.uint16 and int(back.max()) == round(0.9 * 65535)


def test_caller_data_is_never_written():
    data = np.full((20, 20, 3), 0.5, np.float32)
    image = coerce_image(data)
    image.pixels.add_(0.25)
    assert float(data.max()) == 0.5


@pytest.mark.parametrize(
    ("item", "error", "match"),
    [
        ("image.png", TypeError, "cannot read an image from str"),
        (np.zeros((20, 20), np.int32), TypeError, "uint8, uint16, bool or float"),
        (np.zeros((20, 20, 7), np.uint8), ValueError, "1 to 4 channels"),
        (np.zeros((2, 20, 20, 3), np.uint8), ValueError, "got shape"),
        (np.full((20, 20), np.nan, np.float32), ValueError, "NaN"),
        (np.full((20, 20), 255.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.zeros((0, 20), np.uint8), ValueError, "empty"),
        ({"mask": 1}, KeyError, "'image' key"),
    ],
)
def test_bad_input_is_a_clear_error(item, error, match):
    with pytest.raises(error, match=match):
        coerce_image(item)


def test_dataset_items_are_unwrapped():
    assert coerce_image({"image": U8}).pixels.shape == (3, 20, 24)
    assert coerce_image((U8[..., 0], 1)).pixels.shape == (1, 20, 24)


def test_grey_detection_and_rgb_view():
    grey = torch.rand(1, 8, 8)
    assert is_grey(grey) and is_grey(grey.expand(3, -1, -1))
    colour = grey.repeat(3, 1, 1)
    colour[1, 0, 0] += 0.1
    assert not is_grey(colour)
    assert as_rgb(grey).shape == (3, 8, 8)


def test_load_image_refuses_images_smaller_than_a_pattern(tmp_path):
    Image.fromarray(U8[:15]).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="small.png is 24x15: smaller than any usable pattern"):
        load_image(tmp_path / "small.png")
