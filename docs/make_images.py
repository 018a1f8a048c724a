"""Draw the documentation's pictures with the package itself: ``python docs/make_images.py``.

Writes into ``docs/images/``: ``demo.png`` (normal image, pseudo anomaly, mask; an object and a texture),
``sheet_object.png`` and ``sheet_texture.png`` (eight pseudo anomalies on one image, mask outlines), and
``overlay.png`` (masks filled in red over their pseudo anomalies). Everything comes from the built-in demo
data (``cai_aug.io.demo_data``), so the pictures can be redrawn anywhere, byte for byte with the same torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from PIL import Image

from cai_aug import CAI, AnomalyBank
from cai_aug.io.demo_data import demo_images, write_demo_bank
from cai_aug.io.preview import save_contact_sheet

IMAGES = Path(__file__).resolve().parent / "images"
SIZE = 192


def overlay(images: torch.Tensor, masks: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """``(B, 3, H, W)`` images with their ``(B, 1, H, W)`` masks blended in red."""
    red = torch.tensor([1.0, 0.1, 0.1])[None, :, None, None]
    return torch.where(masks > 0.5, (1 - alpha) * images + alpha * red, images)


def main() -> None:
    torch.set_num_threads(1)
    IMAGES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        bank = AnomalyBank.from_folder(write_demo_bank(Path(folder) / "bank"))
    cai = CAI(bank, seed=0)
    normals = demo_images(2, SIZE, seed=1)  # index 0: an object on a plain background, 1: a texture
    result = cai(normals, keys=cai.sample_keys(["object.png", "texture.png"]))
    tiles = [normals[0], result.images[0], result.masks[0].expand(3, -1, -1)]
    tiles += [normals[1], result.images[1], result.masks[1].expand(3, -1, -1)]
    captions = ["normal", "pseudo anomaly", "mask"] * 2
    save_contact_sheet(IMAGES / "demo.png", tiles, captions=captions, columns=3, tile=SIZE)

    for index, name in enumerate(["object", "texture"]):
        batch = normals[index : index + 1].expand(8, -1, -1, -1)
        out = cai(batch, keys=cai.sample_keys([f"{name}_{k}.png" for k in range(8)]))
        save_contact_sheet(IMAGES / f"sheet_{name}.png", out.images, out.masks, columns=4, tile=SIZE)
        if name == "object":
            save_contact_sheet(IMAGES / "overlay.png", overlay(out.images[:4], out.masks[:4]), columns=4, tile=SIZE)
    for path in IMAGES.glob("*.png"):  # 256 colours: a few tens of kB each in git
        Image.open(path).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


if __name__ == "__main__":
    main()
