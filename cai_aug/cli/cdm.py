"""``cai-aug cdm-train`` and ``cai-aug cdm-sample``: the diffusion extension (optional extra ``cdm``).

Nothing heavy is imported here at parser-building time: diffusers loads only when a CDM sub-command
runs, so ``cai-aug`` works without the extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath


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
        "with --bank); pixels outside the masks are the input's, in its own mode and depth. Writes images/, "
        "masks/, manifest.jsonl (paths relative to --out), skipped.jsonl; atomic files, --resume.",
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
    sample.add_argument("--resume", action="store_true", help="continue a run that was stopped")
    sample.add_argument(
        "--strict", action="store_true", help="stop at the first input that cannot be used (default: skip it)"
    )
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


def run_sample(args: argparse.Namespace) -> int:
    from cai_aug.cli.synth import check_folders
    from cai_aug.io.output import folder_lock

    if args.per_image < 1 or args.batch_size < 1:
        raise ValueError(f"--per-image and --batch-size must be at least 1, got {args.per_image}, {args.batch_size}")
    inputs = {name: getattr(args, name) for name in ("normal", "masks", "bank") if getattr(args, name) is not None}
    check_folders(args.out, **inputs)
    with folder_lock(args.out):
        return _sample(args)


def _sample(args: argparse.Namespace) -> int:
    from cai_aug.io.images import image_keys
    from cai_aug.io.output import OutputFolder, describe_inputs, run_offline

    keys = image_keys(args.normal, what="normal image folder")
    run = {
        "synthesiser": "cdm",
        **{name: getattr(args, name) for name in ("seed", "per_image", "steps", "guidance_scale", "resolution")},
        "adaptive_attention": args.adaptive_attention,
        "classes": args.classes,
        **{name: str(Path(getattr(args, name)).resolve()) for name in ("pretrained", "checkpoint")},
        "masks": None if args.masks is None else str(args.masks.resolve()),
        "bank": None if args.bank is None else str(args.bank.resolve()),
        "inputs": describe_inputs(keys),
    }
    output = OutputFolder(args.out, resume=args.resume, run=run)  # refuse a used folder before loading the model
    from cai_aug.cdm import CDMSampler

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
    produce = _producer(sampler, args, output)
    run_offline(output, keys, produce, per_image=args.per_image, strict=args.strict, desc="cdm-sample")
    skipped = f"; skipped {len(output.skipped)} input(s), see {output.root / 'skipped.jsonl'}" if output.skipped else ""
    total = len(output.records())
    print(f"cdm-sample: wrote {output.written} pseudo anomalies ({total} in all) -> {args.out}{skipped}")
    return 0


def _producer(sampler, args: argparse.Namespace, output):
    """The outcomes of the keys to do: read, generated in batches of one image shape, one per key."""
    import torch

    from cai_aug.io.coerce import load_image
    from cai_aug.io.output import Outcome, new_record

    def produce(todo: list[str]):
        step = max(1, args.batch_size // args.per_image)  # whole inputs per chunk: one outcome per key
        for start in range(0, len(todo), step):
            read, made = [], {}
            for key in todo[start : start + step]:
                try:
                    image = load_image(args.normal / key, name=key)
                    mask = _read_mask(args.masks, key, image.pixels.shape[-2:]) if args.masks else None
                except ValueError as error:
                    made[key] = Outcome(key, reason=str(error))
                    continue
                made[key] = Outcome(key)
                done = output.done_indices(key)
                read += [(key, k, image, mask) for k in range(args.per_image) if k not in done]
            for group in _same_size_groups(read):
                for first in range(0, len(group), args.batch_size):
                    batch = group[first : first + args.batch_size]
                    images = torch.stack([image.pixels for _, _, image, _ in batch])
                    masks = torch.stack([mask for *_, mask in batch]) if args.masks else None
                    result = sampler.generate(images, masks=masks, keys=[f"{key}#{k}" for key, k, _, _ in batch])
                    for i, (key, k, image, _) in enumerate(batch):
                        record = new_record(key, k, args.seed, "cdm", source_class=result.classes[i], synthesiser="cdm")
                        # the input's own mode and depth (grey stays grey, 16-bit stays 16-bit, alpha kept)
                        made[key].made.append((record, image.restore(result.images[i]), result.masks[i]))
            yield from made.values()

    return produce


def _same_size_groups(jobs: list[tuple]) -> list[list[tuple]]:
    """Jobs split into batches of one image size and channel count (one batch needs one shape)."""
    groups: dict[tuple[int, ...], list[tuple]] = {}
    for job in jobs:
        groups.setdefault(tuple(job[2].pixels.shape), []).append(job)
    return list(groups.values())


def _read_mask(folder: Path, key: str, size: tuple[int, int]):
    """The ``--masks`` mask of image ``key``: ``<folder>/<key's folders>/<stem>_mask.png``, or
    ``<folder>/<stem>_mask.png``; ``(1, H, W)`` float in {0, 1}.

    Raises
    ------
    ValueError
        No mask, an unreadable one, or one whose size is not the image's.
    """
    import torch

    from cai_aug.io.images import read_mask

    name = f"{PurePosixPath(key).stem}_mask.png"
    candidates = [folder / PurePosixPath(key).with_name(name), folder / name]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise ValueError(f"no mask for image {key} (looked for {candidates[0]})")
    mask = read_mask(path)
    if mask.shape != tuple(size):
        raise ValueError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but image {key} is {size[1]}x{size[0]}: "
            "a mask must match its image"
        )
    return torch.from_numpy(mask.astype("float32"))[None]
