"""Coercion of images to what the engine takes, and back: one set of rules for every front end.

:func:`as_float_batch` / :func:`restore_layout` check batches of tensors for the engine;
:func:`coerce_image` / :func:`restore_image` take one image in any usual form (tensor, numpy array, PIL
image, dataset item) and give the result back in that form. Bad input is a clear error, never a silent
wrong result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from cai_aug.io.images import open_image

MIN_IMAGE_SIDE = 16


# an antialiased bicubic resize overshoots [0, 1] by a few thousandths; ImageNet normalisation or 0-255
# floats stray far further, so the two are told apart by this margin
UNIT_TOLERANCE = 0.05


def unit_range(images: torch.Tensor, name: str = "images", tolerance: float = UNIT_TOLERANCE) -> torch.Tensor:
    """``images`` clamped into [0, 1] when they stray at most ``tolerance`` outside; a clear error otherwise.

    uint8 and non-tensor input are returned as given (the engine's own checks name their problems).
    """
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point or images.numel() == 0:
        return images
    low, high = torch.aminmax(images.detach().float())
    low, high = float(low), float(high)
    if not (torch.isfinite(torch.tensor([low, high])).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    if low >= 0 and high <= 1:
        return images
    if low >= -tolerance and high <= 1 + tolerance:
        return images.clamp(0, 1)
    if low < -tolerance:
        raise ValueError(
            f"{name} look normalised (values in [{low:.3g}, {high:.3g}], e.g. ImageNet mean/std): CAI needs "
            "images in [0, 1]; apply it before Normalize (or undo the normalisation first)"
        )
    if 2 < high <= 255 + tolerance:
        raise ValueError(
            f"float {name} look like 0-255 values (max {high:.3g}): CAI needs float images in [0, 1] "
            "(divide by 255) or uint8"
        )
    raise ValueError(f"float {name} must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]")


@dataclass(frozen=True)
class ImageLayout:
    """How the caller's images were given, so results come back in the same form."""

    batched: bool
    dtype: torch.dtype
    channels_last: bool


def as_float_batch(images: torch.Tensor, name: str = "images") -> tuple[torch.Tensor, ImageLayout]:
    """Validate images and return ``(B, C, H, W)`` float32 in [0, 1] plus the caller's layout.

    Accepts float tensors in [0, 1] (any float dtype) or uint8 tensors, shaped ``(B, C, H, W)`` or
    ``(C, H, W)`` with C = 1 or 3.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be float in [0, 1] or uint8, got dtype {images.dtype}")
    if images.ndim == 3:
        batched, images = False, images.unsqueeze(0)
    elif images.ndim == 4:
        batched = True
    else:
        raise ValueError(f"{name} must be (B, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if batch == 0:
        raise ValueError(f"{name} is an empty batch")
    if channels not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (dim 1), got {channels} (shape {tuple(images.shape)})")
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} are {height}x{width}: smaller than any usable pattern (min side {MIN_IMAGE_SIDE})")
    layout = ImageLayout(
        batched=batched,
        dtype=images.dtype,
        channels_last=images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous(),
    )
    if images.dtype == torch.uint8:
        return images.float().div(255.0).contiguous(), layout
    return unit_range(images.float(), name).contiguous(), layout


def restore_layout(images: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
    """Inverse of :func:`as_float_batch` for results: same dtype, batching and memory format."""
    if layout.dtype == torch.uint8:
        images = images.clamp(0, 1).mul(255).round().to(torch.uint8)
    else:
        images = images.to(layout.dtype)
    if layout.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images if layout.batched else images[0]


# ------------------------------------------------------------------------------------------ one image
# Pillow modes and what they are read as: the colour plane(s) the engine sees, plus an alpha plane that
# is carried through unchanged. Modes not listed are converted to RGB first (CMYK, YCbCr, LAB, HSV...).
_PIL_READ_AS = {
    "1": "L",  # a bilevel image cannot hold a blended anomaly: it comes back as 8-bit grey
    "L": "L",
    "LA": "LA",
    "La": "LA",
    "I;16": "I;16",
    "I;16L": "I;16",
    "I;16B": "I;16",
    "I;16N": "I;16",
    "I": "I;16",
    "F": "F",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
}
_INTEGER_SCALE = {"uint8": 255.0, "uint16": 65535.0}


@dataclass(frozen=True)
class ImageForm:
    """How one image was given (type, dtype, axes, mode), so a result can be handed back the same way.

    Attributes
    ----------
    kind
        ``"tensor"``, ``"numpy"`` or ``"pil"``.
    dtype
        The value type as given: ``"uint8"``, ``"uint16"``, ``"bool"`` or a float name (``"float32"``...).
    channels
        Channels as given, alpha included (1 to 4).
    axis
        Where the channels were: ``"none"`` (``(H, W)``), ``"first"`` (``(C, H, W)``) or ``"last"``.
    mode
        The Pillow mode results come back in (``"L"``, ``"LA"``, ``"I;16"``, ``"F"``, ``"RGB"``, ``"RGBA"``),
        also set for arrays and tensors (what a file of them would be).
    """

    kind: str
    dtype: str
    channels: int
    axis: str
    mode: str

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def colour_channels(self) -> int:
        """1 (grey) or 3 (RGB): the channels the engine works on."""
        return 1 if self.channels <= 2 else 3


@dataclass(frozen=True, eq=False)
class CoercedImage:
    """One image as the engine takes it, and the way back to the caller's form.

    Attributes
    ----------
    pixels
        ``(C, H, W)`` float32 in [0, 1], C = 1 (grey) or 3 (RGB), on the input's device.
    form
        How it was given.
    alpha
        The input's alpha plane, exactly as given (array or tensor, own dtype), or None.
    """

    pixels: torch.Tensor
    form: ImageForm
    alpha: np.ndarray | torch.Tensor | None = None

    def restore(self, pixels: torch.Tensor) -> torch.Tensor | np.ndarray | Image.Image:
        """``pixels`` (the engine's ``(C, H, W)`` float result for this image) in the input's form."""
        return restore_image(pixels, self)


def _unwrap(item: Any) -> Any:
    """The image inside a dataset item: a dict's ``"image"``, a tuple's first element, ``.image``."""
    if isinstance(item, dict):
        if "image" not in item:
            raise KeyError(f"dataset items that are dicts need an 'image' key, got keys {sorted(item)}")
        return item["image"]
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("an image item cannot be an empty tuple or list")
        return item[0]
    if not isinstance(item, (torch.Tensor, np.ndarray, Image.Image)) and hasattr(item, "image"):
        return item.image  # anomalib's ImageItem and the like
    return item


def _pil_to_array(image: Image.Image) -> tuple[np.ndarray, str]:
    mode = _PIL_READ_AS.get(image.mode)
    if mode is None:
        has_alpha = image.mode in ("PA",) or (image.mode == "P" and "transparency" in image.info)
        mode = "RGBA" if has_alpha else "RGB"
        image = image.convert(mode)
    elif mode != image.mode and mode not in ("I;16",):
        image = image.convert(mode)
    array = np.asarray(image)
    if mode == "I;16":
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"a 32-bit integer image must hold 16-bit values, got [{array.min()}, {array.max()}]")
        array = array.astype(np.uint16)
    return array, mode


def _channel_axis(shape: tuple[int, ...], kind: str) -> str:
    if len(shape) == 2:
        return "none"
    if len(shape) != 3:
        layout = "(C, H, W) or (H, W)" if kind == "tensor" else "(H, W, C), (C, H, W) or (H, W)"
        raise ValueError(f"an image must be {layout}, got shape {shape}")
    if kind == "tensor":
        return "first"
    if shape[-1] in (1, 2, 3, 4):
        return "last"
    if shape[0] in (1, 2, 3, 4):
        return "first"
    raise ValueError(f"an image must have 1 to 4 channels (first or last axis), got shape {shape}")


def _to_float(values: torch.Tensor, dtype: str, name: str) -> torch.Tensor:
    if dtype in _INTEGER_SCALE:
        return values.float().div_(_INTEGER_SCALE[dtype])
    if dtype == "bool":
        return values.float()
    # clone: unit_range returns in-range input as is, and the caller's float data is never changed
    return unit_range(values.float(), name).clone()


def coerce_image(item: Any, name: str = "image") -> CoercedImage:
    """One image in any usual form -> ``(C, H, W)`` float32 in [0, 1] (C = 1 or 3), alpha and form.

    The one set of rules for a single image, used by every front end.

    Parameters
    ----------
    item
        A tensor ``(C, H, W)`` or ``(H, W)``; a numpy array ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``; a
        PIL image; or a dataset item holding one (a dict with ``"image"``, a tuple/list whose first
        element is the image, an object with ``.image``). Values: uint8 (/255), uint16 (/65535), bool,
        or float in [0, 1]. Channels: 1 grey, 2 grey + alpha, 3 RGB, 4 RGB + alpha. Pillow modes keep
        their depth (``I;16`` is 16-bit grey); palette images become RGB(A), CMYK and the like RGB.
    name
        How error messages name the image.

    Returns
    -------
    CoercedImage
        Grey stays one channel; alpha is split off unchanged; ``restore`` gives a result back in the
        input's form.

    Raises
    ------
    TypeError
        Not an image type, or an integer dtype other than uint8/uint16.
    ValueError
        A shape with no channel axis of 1 to 4 channels, an empty image, float values outside [0, 1]
        or not finite.
    """
    item = _unwrap(item)
    mode = None
    if isinstance(item, Image.Image):
        kind = "pil"
        item, mode = _pil_to_array(item)
    if isinstance(item, np.ndarray):
        kind = "numpy" if mode is None else "pil"
        if item.dtype.kind == "f":
            dtype = str(item.dtype)
        elif item.dtype in (np.uint8, np.uint16, np.bool_):
            dtype = str(item.dtype)
        else:
            raise TypeError(f"{name} must be uint8, uint16, bool or float in [0, 1], got dtype {item.dtype}")
        axis = _channel_axis(item.shape, "numpy")
        array = item.astype(np.float32) if dtype == "uint16" or item.dtype.byteorder not in ("=", "|") else item
        array = np.ascontiguousarray(array)
        # torch cannot wrap a read-only array (PIL's arrays are): copy it, never write to the caller's data
        values = torch.from_numpy(array if array.flags.writeable else array.copy())
        if axis == "none":
            values = values[None]
        elif axis == "last":
            values = values.permute(2, 0, 1)
    elif isinstance(item, torch.Tensor):
        kind = "tensor"
        if item.dtype == torch.uint8 or item.dtype == torch.bool or item.dtype.is_floating_point:
            dtype = str(item.dtype).removeprefix("torch.")
        elif item.dtype == getattr(torch, "uint16", None):
            dtype = "uint16"
        else:
            raise TypeError(f"{name} must be uint8, uint16, bool or float in [0, 1], got dtype {item.dtype}")
        axis = _channel_axis(tuple(item.shape), "tensor")
        values = item.detach()
        values = values[None] if axis == "none" else values
        if dtype == "uint16":
            values = values.to(torch.int32)
    else:
        raise TypeError(
            f"cannot read an image from {type(item).__name__}: expected a tensor, a numpy array, a PIL image "
            "or a dict/tuple holding one"
        )
    channels, height, width = values.shape
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"{name} must have 1 to 4 channels, got {channels} (shape {tuple(values.shape)})")
    if height == 0 or width == 0:
        raise ValueError(f"{name} is empty (shape {tuple(values.shape)})")
    colour = 1 if channels <= 2 else 3
    if mode is None:
        mode = {"uint16": "I;16"}.get(dtype, "F" if dtype.startswith("float") and colour == 1 else None)
        mode = mode or ("L", "LA", "RGB", "RGBA")[[1, 2, 3, 4].index(channels)]
        if mode == "F" and channels == 2:
            mode = "LA"
    form = ImageForm(kind=kind, dtype=dtype, channels=channels, axis=axis, mode=mode)
    alpha = None
    if form.has_alpha:
        if kind == "tensor":
            alpha = item.detach()[colour:].clone() if axis == "first" else None
        else:
            alpha = np.array(item[..., colour] if axis == "last" else item[colour])
    pixels = _to_float(values[:colour], dtype, name).contiguous()
    return CoercedImage(pixels=pixels, form=form, alpha=alpha)


def restore_image(pixels: torch.Tensor, like: CoercedImage) -> torch.Tensor | np.ndarray | Image.Image:
    """An engine result ``(C, H, W)`` float in [0, 1] back in the form of ``like`` (see :func:`coerce_image`).

    Integer forms are rounded (uint8 to /255 steps, uint16 to /65535 steps, so 16-bit stays 16-bit);
    the alpha plane is put back as it was given; arrays and tensors keep their axes and dtype, PIL images
    their mode.
    """
    form = like.form
    if pixels.ndim != 3 or pixels.shape[0] != form.colour_channels:
        raise ValueError(
            f"a result for a {form.colour_channels}-channel image must be ({form.colour_channels}, H, W), "
            f"got {tuple(pixels.shape)}"
        )
    values = pixels.detach().float().clamp(0, 1)
    if form.kind == "tensor":
        if form.dtype in _INTEGER_SCALE:
            values = values.mul(_INTEGER_SCALE[form.dtype]).round_()
            values = values.to(torch.uint8 if form.dtype == "uint8" else torch.int32)
        elif form.dtype == "bool":
            values = values > 0.5
        else:
            values = values.to(getattr(torch, form.dtype))
        if like.alpha is not None:
            values = torch.cat([values.to(like.alpha.device), like.alpha.to(values.dtype)])
        if form.dtype == "uint16":
            values = values.to(torch.uint16)
        return values[0] if form.axis == "none" else values
    array = values.cpu().numpy()
    if form.dtype in _INTEGER_SCALE:
        array = np.rint(array * _INTEGER_SCALE[form.dtype]).astype(form.dtype)
    elif form.dtype == "bool":
        array = array > 0.5
    else:
        array = array.astype(form.dtype)
    if like.alpha is not None:
        array = np.concatenate([array, np.asarray(like.alpha, dtype=array.dtype)[None]])
    if form.axis == "none":
        array = array[0]
    elif form.axis == "last":
        array = np.moveaxis(array, 0, -1)
    array = np.ascontiguousarray(array)
    if form.kind == "pil":
        return Image.fromarray(array, form.mode) if form.mode not in ("I;16", "F") else Image.fromarray(array)
    return array


def is_grey(pixels: torch.Tensor) -> bool:
    """True for a ``(C, H, W)`` image that is grey: one channel, or three equal ones."""
    if pixels.shape[0] == 1:
        return True
    return bool((pixels[0] == pixels[1]).all() and (pixels[0] == pixels[2]).all())


def as_rgb(pixels: torch.Tensor) -> torch.Tensor:
    """``(1 or 3, H, W)`` -> ``(3, H, W)`` (grey repeated), for consumers that need colour."""
    return pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels


def load_image(path: str | os.PathLike, *, name: str | None = None, min_side: int = MIN_IMAGE_SIDE) -> CoercedImage:
    """An image file as :func:`coerce_image` gives it (own mode and depth, upright), checked usable.

    ``name`` is how error messages call the file (default: its path).

    Raises
    ------
    ValueError
        Unreadable, empty, truncated or too large (see :func:`cai_aug.io.images.open_image`), an
        unsupported mode, or smaller than ``min_side`` on a side (no pattern fits).
    """
    name = name or str(path)
    return require_min_side(coerce_image(open_image(path, name), name=f"image {name}"), f"image {name}", min_side)


def require_min_side(image: CoercedImage, name: str = "image", min_side: int = MIN_IMAGE_SIDE) -> CoercedImage:
    """``image`` itself, or a ``ValueError`` when a side is under ``min_side`` (no pattern fits)."""
    height, width = image.pixels.shape[-2:]
    if min(height, width) < min_side:
        raise ValueError(f"{name} is {width}x{height}: smaller than any usable pattern (min side {min_side})")
    return image
