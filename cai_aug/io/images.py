"""Reading and writing images, and conversions between arrays and tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Image file -> ``(H, W, C)`` uint8 array (``(H, W)`` for ``mode="L"``), clear error if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Mask file -> ``(H, W)`` bool (non-zero = anomaly)."""
    return read_image(path, mode="L") > 0


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` or ``(H, W)`` uint8 array -> ``(C, H, W)`` float tensor in [0, 1]."""
    tensor = torch.from_numpy(np.array(array, copy=True))
    if tensor.ndim == 2:
        tensor = tensor[..., None]
    return tensor.permute(2, 0, 1).float().div_(255.0)


def to_uint8_array(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float tensor in [0, 1] -> ``(H, W, C)`` uint8 (``(H, W)`` when C = 1)."""
    array = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def write_image(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Write a ``(C, H, W)`` float tensor or an ``(H, W[, C])`` uint8 array as PNG, atomically.

    The file appears under its name only once complete (write to a temporary name, then rename), so an
    interrupted run never leaves a partial file that looks done.
    """
    array = to_uint8_array(image) if isinstance(image, torch.Tensor) else image
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_mask(path: str | os.PathLike, mask: torch.Tensor | np.ndarray) -> None:
    """Write a binary mask ``(1, H, W)`` / ``(H, W)`` as a 0/255 PNG, atomically."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    array = (np.asarray(mask).reshape(np.asarray(mask).shape[-2:]) > 0).astype(np.uint8) * 255
    write_image(path, array)
