"""cai_aug.io.images: the one folder listing, reading in the file's own format, atomic writing."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from cai_aug.io import images as images_module
from cai_aug.io.images import image_keys, list_images, open_image, read_image, read_mask, write_bytes, write_image


def _png(path, size=(20, 20), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def test_list_images_is_recursive_sorted_and_keyed_by_relative_posix_path(tmp_path):
    for name in ("b.png", "a.JPG", "sub/z.png", "sub/deeper/c.tif"):
        _png(tmp_path / name)
    assert image_keys(tmp_path) == ["a.JPG", "b.png", "sub/deeper/c.tif", "sub/z.png"]
    assert list_images(tmp_path) == [tmp_path / k for k in image_keys(tmp_path)]


def test_list_images_leaves_out_hidden_masks_and_non_images(tmp_path):
    _png(tmp_path / "keep.png")
    for name in (".hidden.png", ".cache/a.png", "a_mask.png", "masks/b.png", "sub/masks/c.png"):
        _png(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".x.png.tmp").write_bytes(b"a writer's temporary file")
    assert image_keys(tmp_path) == ["keep.png"]


def test_list_images_follows_symlinks_once(tmp_path):
    real = tmp_path / "real"
    _png(real / "a.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(real, target_is_directory=True)
    (root / "file.png").symlink_to(real / "a.png")
    (real / "loop").symlink_to(root, target_is_directory=True)  # a cycle must not hang the listing
    keys = image_keys(root)
    assert keys[:2] == ["file.png", "linked/a.png"] and len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: p / "absent", FileNotFoundError, "does not exist"),
        (lambda p: p, ValueError, "no images under"),
        (lambda p: _png(p / "a.png"), ValueError, "is not a folder"),
    ],
)
def test_list_images_errors_name_the_folder(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        list_images(make(tmp_path), what="normal image folder")


def test_read_image_keeps_16_bit_and_scales_it_for_8_bit_modes(tmp_path):
    values = np.array([[0, 257, 65535, 32896]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    native = read_image(tmp_path / "g16.png", None)
    assert native.dtype == np.uint16 and np.array_equal(native, values)
    # Pillow's own conversion clips 16-bit values at 255; the reader scales them
    assert read_image(tmp_path / "g16.png", "L")[0].tolist() == [0, 1, 255, 128]


def test_read_image_applies_exif_orientation(tmp_path):
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(array).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=100)
    upright = read_image(tmp_path / "rotated.jpg")
    assert upright.shape == (20, 10, 3)
    assert upright[:5].mean() > 200 and upright[-5:].mean() < 50  # the white band is now on top


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty file"), (b"not an image", "cannot identify"), ("truncated", "truncated")],
)
def test_bad_files_are_clear_value_errors(tmp_path, content, match):
    path = tmp_path / "bad.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"cannot read image .*bad.png.*{match}"):
        read_image(path)


def test_a_decompression_bomb_is_a_clear_value_error(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10^10 grey pixels claimed
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="huge.png.*exceeds limit"):
        read_image(tmp_path / "huge.png")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(400, dtype=np.uint8).reshape(20, 20),
        (np.arange(400, dtype=np.uint16) * 163).reshape(20, 20),
        np.random.default_rng(1).integers(0, 255, (20, 20, 3), dtype=np.uint8),
        np.random.default_rng(2).integers(0, 255, (20, 20, 4), dtype=np.uint8),
        np.random.default_rng(3).integers(0, 255, (20, 20, 2), dtype=np.uint8),
    ],
    ids=["L", "I;16", "RGB", "RGBA", "LA"],
)
def test_write_then_read_is_lossless_in_every_kept_mode(tmp_path, array):
    write_image(tmp_path / "x.png", array)
    assert np.array_equal(read_image(tmp_path / "x.png", None), array)


def test_read_mask_is_true_where_non_zero_at_any_depth(tmp_path):
    values = np.zeros((16, 16), np.uint16)
    values[2, 3] = 1  # 1/65535: would round to 0 in 8 bit
    Image.fromarray(values).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 1


def test_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path, monkeypatch):
    calls = []

    def full_disk(descriptor, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data) // 2  # the first call takes half, as a filling disk does

    monkeypatch.setattr(images_module.os, "write", full_disk)
    with pytest.raises(OSError, match="cannot write .*x.png: No space left") as caught:
        write_bytes(tmp_path / "x.png", b"0123456789")
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_write_error_keeps_its_class(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(images_module.os, "open", read_only)
    with pytest.raises(OSError, match="Read-only file system") as caught:
        write_bytes(tmp_path / "x.png", b"data")
    assert caught.value.errno == errno.EROFS


def test_names_that_are_not_utf8_are_listed_and_usable_as_keys(tmp_path, demo_bank):
    from cai_aug.engine import rng
    from cai_aug.frontends.dataset import CAIDataset

    raw = os.fsencode(tmp_path) + b"/\xff\xfe.png"
    with open(raw, "wb") as handle:
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(handle, format="PNG")
    (key,) = image_keys(tmp_path)
    assert os.fsencode(key) == b"\xff\xfe.png" and read_image(tmp_path / key).shape == (32, 32, 3)
    # the key is hashed from the name's own bytes; a UTF-8 name keeps the key it always had
    assert rng.sample_key(0, key) == rng.sample_key(0, b"\xff\xfe.png")
    assert rng.sample_key(0, "é.png") == rng.sample_key(0, "é.png".encode())
    item = CAIDataset(tmp_path, bank=demo_bank, p_anomaly=1.0)[0]
    assert item["augmented_image"].shape == (3, 32, 32)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big.png: 300x200 is 0.1 megapixels, over the limit of 0.1 megapixels"):
        open_image(tmp_path / "big.png", max_pixels=300 * 200 - 1)
    assert open_image(tmp_path / "big.png", max_pixels=300 * 200).size == (300, 200)
