"""CAIAugment on collated batches inside a training loop (GPU when there is one, else CPU).

Run: ``python examples/batch_transform.py [--out out/examples/batch_transform]``. Writes ``step0.png`` and
``step1.png``: a half-precision, channels-last batch with its pseudo anomalies outlined.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cai_aug import CAIAugment
from cai_aug.io.demo_data import demo_images, write_demo_bank
from cai_aug.io.preview import save_contact_sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/examples/batch_transform"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bank = args.out / "bank"
    if not (bank / "MANIFEST.csv").exists():
        write_demo_bank(bank)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    augment = CAIAugment(bank, p=0.5, seed=0)
    augment.set_epoch(0)
    for step in range(2):
        batch = demo_images(8, 128, seed=step).to(device, dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            images, masks, labels = augment(batch)  # same dtype and memory format as the batch
        # ... the model would train on (images, masks, labels) here ...
        captions = [f"label={int(label)}" for label in labels.tolist()]
        sheet = save_contact_sheet(args.out / f"step{step}.png", images.float(), masks.float(), captions, columns=4)
        print(f"step {step}: {images.dtype} on {images.device}, {int(labels.sum())}/8 anomalous -> {sheet}")


if __name__ == "__main__":
    main()
