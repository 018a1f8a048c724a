"""Time CDM training steps and sampling with a randomly initialised model (configs only, no weights).

``--size full`` builds Stable Diffusion 1.5's shapes (UNet 860M, VAE 84M, CLIP-L text encoder 123M
parameters; 77-token prompts), so the times are those of real SD-1.5 weights; ``--size tiny`` is the
test model, for a smoke run on a CPU. Nothing is downloaded. Examples::

    python benchmarks/cdm_timing.py --size tiny --device cpu                  # seconds, on a CPU
    python benchmarks/cdm_timing.py --size full --device cuda --dtype float16 # on a GPU

Prints a markdown table and, with ``--json PATH``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cai_aug.cdm import (  # noqa: E402
    CDMSampler,
    CDMTrainConfig,
    CDMTrainer,
    build_components,
    new_embeddings,
    sd15_configs,
    tiny_configs,
    tiny_tokenizer,
)
from cai_aug.cdm.train import step_generator  # noqa: E402

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(b: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ``(b,3,size,size)`` and rectangle masks covering about 6 % of each image."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, size, size, generator=gen)
    masks = torch.zeros(b, 1, size, size)
    side = max(2, size // 4)
    for i in range(b):
        top, left = (torch.randint(0, size - side, (2,), generator=gen)).tolist()
        masks[i, :, top : top + side, left : left + side] = 1
    return images, masks


def time_training(trainer: CDMTrainer, batch: int, size: int, steps: int, device: torch.device) -> dict:
    images, masks = _batch(batch, size)
    classes = torch.zeros(batch, dtype=torch.int64)
    trainer.train_step(images, masks, classes, step_generator(0, 0))  # warm-up (allocations, kernels)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for step in range(steps):
        trainer.train_step(images, masks, classes, step_generator(0, step + 1))
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    out = {"train_s_per_step": seconds, "train_batch": batch}
    if device.type == "cuda":
        out["train_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def time_sampling(sampler: CDMSampler, batch: int, size: int, device: torch.device, label: str) -> dict:
    images, masks = _batch(batch, size, seed=1)
    warm_steps, sampler.steps = sampler.steps, 2
    sampler(images, masks)  # warm-up with 2 steps
    sampler.steps = warm_steps
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    sampler(images, masks)
    _sync(device)
    seconds = time.perf_counter() - start
    out = {f"{label}_s_per_batch": seconds, f"{label}_s_per_image": seconds / batch}
    if device.type == "cuda":
        out[f"{label}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="default: float16 on cuda")
    parser.add_argument("--resolution", type=int, default=None, help="default: 512 full, 32 tiny")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--sample-batch", type=int, default=4)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--no-aar", action="store_true", help="skip timing adaptive attention re-weighting")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype_name = args.dtype or ("float16" if device.type == "cuda" else "float32")
    full = args.size == "full"
    size = args.resolution or (512 if full else 32)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_tokenizer(Path(tmp) / "tokenizer", model_max_length=77 if full else 16)
    configs = sd15_configs() if full else tiny_configs(size)
    build_start = time.perf_counter()
    components = build_components(configs, tokenizer).to(device=device, dtype=_DTYPES[dtype_name])
    build_s = time.perf_counter() - build_start
    _say(f"built {args.size} model in {build_s:.1f} s")
    config = CDMTrainConfig(dtype=dtype_name, resolution=size, mask_size=128 if full else 32)
    embeddings = new_embeddings(components, ["crack", "stain"], config)
    trainable = sum(p.numel() for p in embeddings.parameters())
    frozen = sum(p.numel() for m in (components.unet, components.vae, components.text_encoder) for p in m.parameters())
    row: dict = {
        "size": args.size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "resolution": size,
        "frozen_params_m": frozen / 1e6,
        "trainable_params_m": trainable / 1e6,
        "build_s": build_s,
        "ddim_steps": args.ddim_steps,
        "torch": torch.__version__,
    }
    trainer = CDMTrainer(components, embeddings, config, device=device)
    row.update(time_training(trainer, args.train_batch, size, args.train_steps, device))
    _say(f"training: {row['train_s_per_step']:.3f} s/step")
    embeddings.eval()
    for label, aar in (("sample", False), ("sample_aar", True)):
        if aar and args.no_aar:
            continue
        sampler = CDMSampler(
            components,
            embeddings,
            steps=args.ddim_steps,
            adaptive_attention=aar,
            resolution=size,
            seed=0,
            device=device,
        )
        row.update(time_sampling(sampler, args.sample_batch, size, device, label))
        _say(f"{label}: {row[label + '_s_per_batch']:.3f} s/batch")
    print("| " + " | ".join(row) + " |")
    print("|" + "---|" * len(row))
    print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
