"""Contact sheets: pseudo anomalies with their mask outlines, for people to look at."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cai_aug.io.images import to_uint8_array, write_image


def outline(masks: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Inner outline of ``(B, 1, H, W)`` masks, bool of the same shape."""
    masks = masks > 0.5
    size = 1 + 2 * max(width // 2, 1)
    # erosion as a max-pool of the complement; outside the image counts as inside the mask
    eroded = ~(F.max_pool2d((~masks).float(), size, stride=1, padding=size // 2) > 0.5)
    return masks & ~eroded


def contact_sheet(
    images: torch.Tensor | Sequence[torch.Tensor],
    masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
    captions: Sequence[str] | None = None,
    *,
    columns: int | None = None,
    tile: int = 160,
    colour: tuple[int, int, int] = (255, 40, 40),
) -> Image.Image:
    """Grid of images in [0, 1] with mask outlines and optional captions.

    ``images`` is a ``(B, C, H, W)`` tensor or a sequence of ``(C, H, W)`` tensors of any sizes (each is
    shown as a ``tile x tile`` square); ``masks`` matches it with one channel.
    """
    count = len(images)
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    caption_h = 14 if captions else 0
    sheet = Image.new("RGB", (columns * (tile + 4) + 4, rows * (tile + 4 + caption_h) + 4), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for index in range(count):
        array = to_uint8_array(images[index].float().cpu().expand(3, -1, -1))
        if masks is not None:
            edge = outline(masks[index].float().cpu()[None])[0, 0]
            array = array.copy()
            array[edge.numpy()] = colour
        picture = Image.fromarray(np.ascontiguousarray(array)).resize((tile, tile), Image.Resampling.NEAREST)
        x = 4 + (index % columns) * (tile + 4)
        y = 4 + (index // columns) * (tile + 4 + caption_h)
        sheet.paste(picture, (x, y))
        if captions:
            draw.text((x + 2, y + tile + 1), str(captions[index])[:28], fill=(230, 230, 230))
    return sheet


def save_contact_sheet(path: str | Path, *args, **kwargs) -> Path:
    """Write :func:`contact_sheet` (same arguments) to ``path`` as PNG, atomically; returns ``path``."""
    path = Path(path)
    write_image(path, contact_sheet(*args, **kwargs))
    return path
