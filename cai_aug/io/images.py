"""Image files: one listing of a folder, one reader, one atomic writer.

Every part of the package that reads a folder of images (``cai-aug synth`` locally and on Ray,
``cai-aug cdm-sample``, CDM training data, ``CAIDataset``, the detector harness) lists it with
:func:`list_images`, so they all see the same files under the same keys.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIX = "_mask"
MASK_FOLDER = "masks"

# 16-bit modes as Pillow names them (PNG/TIFF); "I" is a 32-bit integer plane that 16-bit files often
# arrive as, read with the 16-bit range.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def is_image_file(path: Path) -> bool:
    """True when ``path`` has an image suffix (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _listed(relative: Path) -> bool:
    """The listing rules, on a path relative to the listed folder."""
    if any(part.startswith(".") for part in relative.parts):
        return False  # hidden files and folders, and the writers' own ".<name>.tmp" files
    if MASK_FOLDER in relative.parts[:-1]:
        return False  # an MVTec-style masks/ folder beside the images
    return is_image_file(relative) and not relative.stem.endswith(MASK_SUFFIX)


def _walk(root: Path) -> Iterator[Path]:
    """Files under ``root`` following symbolic links, each real folder visited once (no link cycles)."""
    seen: set[str] = set()
    for current, folders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        # prune here so hidden and masks/ folders are never read, however large
        folders[:] = sorted(f for f in folders if not f.startswith(".") and f != MASK_FOLDER)
        for name in files:
            yield Path(current, name)


def list_images(folder: str | os.PathLike, *, what: str = "image folder") -> list[Path]:
    """Image files under ``folder``: the one listing every reader of a folder uses.

    Parameters
    ----------
    folder
        The folder, searched recursively (symbolic links to files and folders are followed).
    what
        How error messages name the folder (``"normal image folder"``...).

    Returns
    -------
    list of Path
        ``folder / key`` for every image, sorted by its key (the POSIX path relative to ``folder``,
        see :func:`image_keys`). Left out: files without an image suffix, hidden files and folders
        (a name starting with ``.``), ``*_mask`` files and anything inside a ``masks/`` folder.

    Raises
    ------
    FileNotFoundError
        ``folder`` does not exist.
    ValueError
        ``folder`` is not a folder, or holds no image.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"{what} {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{what} {root} is not a folder")
    found = [p for p in _walk(root) if _listed(p.relative_to(root)) and p.is_file()]
    if not found:
        raise ValueError(
            f"no images under {what} {root} (looked for {', '.join(IMAGE_SUFFIXES)}; hidden files, "
            f"*{MASK_SUFFIX} files and {MASK_FOLDER}/ folders are left out)"
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def image_keys(folder: str | os.PathLike, *, what: str = "image folder") -> list[str]:
    """The keys of :func:`list_images`: sorted POSIX paths relative to ``folder`` (``"sub/a.png"``)."""
    root = Path(folder)
    return [p.relative_to(root).as_posix() for p in list_images(root, what=what)]


# The largest image read (8192 x 8192, 64 Mi pixels): larger ones are refused from their header, before
# any pixel is decoded (a 100-megapixel RGB file takes over a gigabyte and many seconds to decode).
MAX_IMAGE_PIXELS = 8192 * 8192


def open_image(path: str | os.PathLike, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file completely, upright (EXIF orientation applied), in its own mode.

    ``name`` is how error messages call the file (default: its path). An image of more than
    ``max_pixels`` pixels (default :data:`MAX_IMAGE_PIXELS`, 8192 x 8192) is refused from its header,
    without decoding it.

    Raises
    ------
    ValueError
        The file is missing, empty, truncated, not an image or over the pixel limit, with the path and
        the reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with our limit
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"cannot read image {name or path}: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                    f"over the limit of {max_pixels / 1e6:.1f} megapixels (not decoded)"
                )
            image.load()  # decode now: a truncated file fails here, not later in the engine
            upright = ImageOps.exif_transpose(image)
            return upright if upright is not None else image
    except Image.DecompressionBombError as error:
        raise ValueError(f"cannot read image {name or path}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        # SyntaxError: what some Pillow plugins raise on a corrupt header
        reason = "empty file" if _is_empty(path) else str(error) or type(error).__name__
        raise ValueError(f"cannot read image {name or path}: {reason}") from error


def _is_empty(path: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit planes to 8 bit by their range (Pillow's own conversion clips at 255 instead)."""
    if image.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((array + 128) // 257).astype(np.uint8), "L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(np.rint(np.nan_to_num(array) * 255), 0, 255).astype(np.uint8), "L")
    return image


def read_image(path: str | os.PathLike, mode: str | None = "RGB") -> np.ndarray:
    """Image file -> array, upright, with a clear error if unreadable.

    Parameters
    ----------
    path
        The file.
    mode
        ``"RGB"``: ``(H, W, 3)`` uint8; ``"L"``: ``(H, W)`` uint8 (16-bit files are scaled to 8 bit,
        not clipped). ``None``: the file's own values (``(H, W)`` uint8 or uint16 for grey, ``(H, W, C)``
        uint8 for colour and alpha); see :func:`cai_aug.io.coerce.coerce_image` for how they become tensors.

    Raises
    ------
    ValueError
        See :func:`open_image`.
    """
    image = open_image(path)
    if mode is None:
        return np.asarray(image)
    return np.asarray(_to_8bit(image).convert(mode))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Mask file -> ``(H, W)`` bool (non-zero = anomaly, at any bit depth)."""
    image = open_image(path)
    return np.asarray(image if image.mode in SIXTEEN_BIT_MODES else image.convert("L")) > 0


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` or ``(H, W)`` uint8 (or uint16) array -> ``(C, H, W)`` float tensor in [0, 1]."""
    scale = 65535.0 if array.dtype == np.uint16 else 255.0
    tensor = torch.from_numpy(np.array(array, dtype=np.float32 if scale > 255 else None, copy=True))
    if tensor.ndim == 2:
        tensor = tensor[..., None]
    return tensor.permute(2, 0, 1).float().div_(scale)


def to_uint8_array(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float tensor in [0, 1] -> ``(H, W, C)`` uint8 (``(H, W)`` when C = 1)."""
    array = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


_ARRAY_MODES = {(2, "uint8"): "L", (2, "uint16"): "I;16", (2, "bool"): "L"}
_CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def to_pil(image: torch.Tensor | np.ndarray | Image.Image) -> Image.Image:
    """A PIL image of a ``(C, H, W)`` float tensor, an ``(H, W[, C])`` uint8/uint16 array or a PIL image."""
    if isinstance(image, Image.Image):
        return image
    array = to_uint8_array(image) if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype.kind == "f":  # [0, 1]: a grey plane keeps its precision (see encode_png), colour is 8 bit
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1):
            return Image.fromarray(np.ascontiguousarray(array.reshape(array.shape[:2]), dtype=np.float32), "F")
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2 and array.dtype in (np.uint8, np.uint16):
        return Image.fromarray(np.ascontiguousarray(array.astype(array.dtype.newbyteorder("="))))
    if array.ndim == 3 and array.dtype == np.uint8 and array.shape[-1] in _CHANNEL_MODES:
        return Image.fromarray(np.ascontiguousarray(array), _CHANNEL_MODES[array.shape[-1]])
    raise ValueError(
        f"cannot write an image of shape {array.shape} and dtype {array.dtype}: expected (H, W) uint8/uint16 "
        "or (H, W, C) uint8 with C = 1..4"
    )


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: it appears under its name only once complete.

    The bytes go to ``.<name>.tmp`` beside it, which is then renamed, so an interrupted run never
    leaves a partial file that looks done; on an error (disk full, read-only folder) the temporary
    file is removed.

    Raises
    ------
    OSError
        Of the errno's own class (``PermissionError``...), naming the file and what to do.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                if written == 0:  # a full device may report 0 bytes instead of failing
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except OSError as error:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from error


def encode_png(image: torch.Tensor | np.ndarray | Image.Image) -> bytes:
    """PNG bytes of an image (see :func:`to_pil` for what it accepts); 16-bit stays 16-bit."""
    picture = to_pil(image)
    if picture.mode == "F":  # PNG holds no float plane: the closest lossless-range form is 16-bit grey
        values = np.clip(np.rint(np.nan_to_num(np.asarray(picture, dtype=np.float64)) * 65535), 0, 65535)
        picture = Image.fromarray(values.astype(np.uint16))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(path: str | os.PathLike, image: torch.Tensor | np.ndarray | Image.Image) -> None:
    """Write an image as PNG, atomically (see :func:`write_bytes`).

    ``image``: a ``(C, H, W)`` float tensor in [0, 1] (written as 8 bit), an ``(H, W)`` uint8/uint16 or
    ``(H, W, C)`` uint8 array, or a PIL image (written in its own mode: ``L``, ``LA``, ``I;16``, ``RGB``,
    ``RGBA``).
    """
    write_bytes(path, encode_png(image))


def write_mask(path: str | os.PathLike, mask: torch.Tensor | np.ndarray) -> None:
    """Write a binary mask ``(1, H, W)`` / ``(H, W)`` as a 0/255 PNG, atomically."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    array = (np.asarray(mask).reshape(np.asarray(mask).shape[-2:]) > 0).astype(np.uint8) * 255
    write_image(path, array)
