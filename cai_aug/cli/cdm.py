"""``cai-aug cdm-train`` and ``cai-aug cdm-sample``: the diffusion extension (optional extra ``cdm``).

Nothing heavy is imported here at parser-building time: diffusers loads only when a CDM sub-command
runs, so ``cai-aug`` works without the extra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cai_aug.io.images import is_image_file


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "cdm-train",
        help="train CDM (masked textual inversion) on `cai-aug synth` output",
        description="Learn one embedding per anomaly class plus a mask encoder for a frozen local "
        'Stable-Diffusion-style model, from CAI pseudo anomalies. Needs pip install "cai_aug[cdm]".',
    )
    train.add_argument("--pseudo", required=True, type=Path, help="output folder of `cai-aug synth`")
    train.add_argument("--pretrained", required=True, type=Path, help="local SD-style diffusers folder")
    train.add_argument("--out", required=True, type=Path, help="checkpoint folder (small files)")
    train.add_argument("--classes", nargs="+", default=None, help="anomaly classes to learn (default: all)")
    train.add_argument("--steps", type=int, default=3000, help="total optimiser steps")
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=5e-3, help="learning rate of the class embeddings")
    train.add_argument("--encoder-lr", type=float, default=1e-3, help="learning rate of the spatial encoder")
    train.add_argument("--tokens", type=int, default=8, help="k: tokens per class embedding")
    train.add_argument("--spatial-tokens", type=int, default=4, help="n: tokens from the spatial encoder")
    train.add_argument("--resolution", type=int, default=None, help="training side (default: the model's)")
    train.add_argument("--save-every", type=int, default=500)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    train.add_argument(
        "--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="dtype of the frozen networks"
    )
    train.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    train.set_defaults(func=run_train)

    sample = subparsers.add_parser(
        "cdm-sample",
        help="make pseudo anomalies of normal images with a trained CDM",
        description="Blended latent diffusion inside masks (from --masks or CAI's location sampling "
        "with --bank); pixels outside the masks are the input's. Writes images/, masks/, manifest.jsonl.",
    )
    sample.add_argument("--normal", required=True, type=Path, help="folder of normal images")
    sample.add_argument("--pretrained", required=True, type=Path, help="local SD-style diffusers folder")
    sample.add_argument("--checkpoint", required=True, type=Path, help="folder written by cdm-train")
    sample.add_argument("--out", required=True, type=Path)
    where = sample.add_mutually_exclusive_group(required=True)
    where.add_argument("--masks", type=Path, help="folder of <stem>_mask.png beside the normal images' names")
    where.add_argument("--bank", type=Path, help="anomaly bank: masks from CAI's location sampling")
    sample.add_argument("--classes", nargs="+", default=None, help="classes to draw from (e.g. CDM-5)")
    sample.add_argument("--per-image", type=int, default=1, help="pseudo anomalies per normal image")
    sample.add_argument("--steps", type=int, default=50, help="DDIM steps")
    sample.add_argument("--guidance-scale", type=float, default=1.0)
    sample.add_argument("--adaptive-attention", action="store_true", help="adaptive attention re-weighting")
    sample.add_argument("--resolution", type=int, default=None)
    sample.add_argument("--batch-size", type=int, default=4)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default=None)
    sample.set_defaults(func=run_sample)


def run_train(args: argparse.Namespace) -> int:
    from cai_aug.cdm import CDMTrainConfig, train_cdm

    config = CDMTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        encoder_lr=args.encoder_lr,
        tokens_per_class=args.tokens,
        spatial_tokens=args.spatial_tokens,
        resolution=args.resolution,
        save_every=args.save_every,
        seed=args.seed,
        dtype=args.dtype,
    )
    result = train_cdm(
        args.pseudo,
        args.pretrained,
        args.out,
        classes=args.classes,
        config=config,
        resume=args.resume,
        device=args.device,
    )
    print(
        f"cdm-train: step {result.step}, last loss {result.last_loss:.4f}, "
        f"{result.seconds_per_step:.3f} s/step, classes {result.classes} -> {result.out}"
    )
    return 0


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"normal image folder {str(folder)!r} does not exist")
    images = sorted(p for p in folder.rglob("*") if is_image_file(p) and not p.stem.endswith("_mask"))
    if not images:
        raise ValueError(f"no images in {str(folder)!r}")
    return images


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from cai_aug.cdm import CDMSampler

    paths = _list_images(args.normal)
    sampler = CDMSampler(
        args.pretrained,
        args.checkpoint,
        classes=args.classes,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        adaptive_attention=args.adaptive_attention,
        resolution=args.resolution,
        bank=args.bank,
        seed=args.seed,
        device=args.device,
    )
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(p, k) for p in paths for k in range(args.per_image)]
    with (args.out / "manifest.jsonl").open("w") as manifest, tqdm(total=len(jobs), desc="cdm-sample") as bar:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            arrays = [np.asarray(Image.open(p).convert("RGB")) for p, _ in chunk]
            if len({a.shape for a in arrays}) > 1:  # one batch needs one size: fall back to singles
                results = [_one(sampler, a, p, k, args) for a, (p, k) in zip(arrays, chunk)]
            else:
                images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
                masks = _read_masks(args.masks, [p for p, _ in chunk], images.shape) if args.masks else None
                keys = [f"{p.relative_to(args.normal).as_posix()}#{k}" for p, k in chunk]
                result = sampler.generate(images, masks=masks, keys=keys)
                results = [(result.images[i], result.masks[i], result.classes[i]) for i in range(len(chunk))]
            for (path, k), (image, mask, cls) in zip(chunk, results):
                name = f"{path.stem}_cdm{k:03d}"
                Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(args.out / "images" / f"{name}.png")
                mask_u8 = (mask[0].cpu().numpy() > 0).astype(np.uint8) * 255
                Image.fromarray(mask_u8).save(args.out / "masks" / f"{name}_mask.png")
                record = {
                    "image": f"images/{name}.png",
                    "mask": f"masks/{name}_mask.png",
                    "normal": str(path),
                    "source_class": cls,
                    "synthesiser": "cdm",
                }
                manifest.write(json.dumps(record) + "\n")
            bar.update(len(chunk))
    print(f"cdm-sample: {len(jobs)} pseudo anomalies -> {args.out}")
    return 0


def _one(sampler, array, path: Path, k: int, args: argparse.Namespace):
    import torch

    image = torch.from_numpy(array).permute(2, 0, 1)[None]
    masks = _read_masks(args.masks, [path], image.shape) if args.masks else None
    result = sampler.generate(image, masks=masks, keys=[f"{path.relative_to(args.normal).as_posix()}#{k}"])
    return result.images[0], result.masks[0], result.classes[0]


def _read_masks(folder: Path, paths: list[Path], shape: tuple[int, ...]):
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for path in paths:
        mask_path = folder / f"{path.stem}_mask.png"
        if not mask_path.is_file():
            raise FileNotFoundError(f"no mask {mask_path} for {path}")
        mask = np.asarray(Image.open(mask_path).convert("L")) > 0
        if mask.shape != tuple(shape[-2:]):
            raise ValueError(f"mask {mask_path} is {mask.shape}, image is {tuple(shape[-2:])}")
        out.append(torch.from_numpy(mask.astype(np.float32))[None])
    return torch.stack(out)
