"""CDM end to end: train on CAI pseudo anomalies, then make new ones from normal images.

With real inputs (a local SD-1.5-style diffusers folder and the output of `cai-aug synth`)::

    python examples/cdm_train_and_sample.py --pretrained ~/models/sd15 --pseudo synth_out \
        --normal data/train/good --steps 3000 --out cdm_run

With nothing at hand (a tiny random model and synthetic pseudo anomalies; shows the mechanics only,
the pictures are noise)::

    python examples/cdm_train_and_sample.py --tiny --out /tmp/cdm_demo

Writes ``<out>/checkpoint/`` (embeddings + encoder, loss.csv) and ``<out>/sheet.png`` (rows: normal,
mask, CDM pseudo anomaly).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cai_aug.cdm import CDMSampler, CDMTrainConfig, make_tiny_pretrained, train_cdm  # noqa: E402


def synthetic_pseudo(folder: Path, n: int = 8, size: int = 32) -> Path:
    """A stand-in for `cai-aug synth` output: textured squares with dark 'stains' under their masks."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    gen = np.random.default_rng(0)
    records = []
    for i in range(n):
        image = np.full((size, size, 3), 180, np.uint8) + gen.integers(0, 20, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        top, left = gen.integers(2, size // 2, 2)
        mask[top : top + size // 4, left : left + size // 3] = 255
        image[mask > 0] //= 3
        Image.fromarray(image).save(folder / "images" / f"p{i:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"p{i:03d}_mask.png")
        records.append({"image": f"images/p{i:03d}.png", "source_class": "stain"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def load_normals(folder: Path, count: int, size: int) -> torch.Tensor:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:count]
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def centre_masks(batch: int, size: int) -> torch.Tensor:
    """Simple elliptical masks; in real use they come from CAI (`CDMSampler(..., bank=...)`)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(batch, 1, size, size)
    for i in range(batch):
        cy, cx = size * (0.35 + 0.3 * (i % 2)), size * (0.3 + 0.1 * (i % 4))
        masks[i, 0] = (((yy - cy) / (size * 0.12)) ** 2 + ((xx - cx) / (size * 0.2)) ** 2 <= 1).float()
    return masks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny random model + synthetic data")
    parser.add_argument("--pretrained", type=Path)
    parser.add_argument("--pseudo", type=Path)
    parser.add_argument("--normal", type=Path)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--ddim-steps", type=int, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    if args.tiny:
        pretrained = make_tiny_pretrained(args.out / "tiny-sd")
        pseudo = synthetic_pseudo(args.out / "pseudo")
        steps, ddim, size = args.steps or 20, args.ddim_steps or 10, 32
        config = CDMTrainConfig(steps=steps, batch_size=4, tokens_per_class=4, mask_size=32, save_every=10)
    else:
        if not (args.pretrained and args.pseudo and args.normal):
            parser.error("give --pretrained, --pseudo and --normal, or --tiny")
        pretrained, pseudo = args.pretrained, args.pseudo
        steps, ddim, size = args.steps or 3000, args.ddim_steps or 50, None
        config = CDMTrainConfig(steps=steps)
    checkpoint = args.out / "checkpoint"
    result = train_cdm(pseudo, pretrained, checkpoint, config=config, resume=True, device=args.device)
    print(f"trained {result.step} steps, last loss {result.last_loss:.4f}, classes {result.classes}")

    sampler = CDMSampler(pretrained, checkpoint, steps=ddim, seed=0, device=args.device)
    size = size or sampler.resolution
    normals = torch.full((4, 3, size, size), 0.7) if args.tiny else load_normals(args.normal, 4, size)
    masks = centre_masks(normals.shape[0], size)
    images, masks, _ = sampler(normals, masks, keys=[f"demo{i}" for i in range(normals.shape[0])])
    rows = [normals, masks.expand(-1, 3, -1, -1), images]
    sheet = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    Image.fromarray((sheet.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(args.out / "sheet.png")
    print(f"wrote {args.out / 'sheet.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
