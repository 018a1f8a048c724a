"""CAIAugment on collated batches inside a training loop (GPU when there is one, else CPU).

Run: ``python examples/batch_transform.py [--out out/examples/batch_transform]``. Writes ``step0.png`` and
``step1.png``: a half-precision, channels-last batch with its pseudo anomalies outlined.
"""

from __future__ import annotations

import torch
from _preamble import start  # examples run as scripts: their folder is on sys.path

from cai_aug import CAIAugment
from cai_aug.io.demo_data import demo_images
from cai_aug.io.preview import save_contact_sheet


def main(argv: list[str] | None = None) -> None:
    out, bank = start("batch_transform", __doc__, argv)

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
        sheet = save_contact_sheet(out / f"step{step}.png", images.float(), masks.float(), captions, columns=4)
        print(f"step {step}: {images.dtype} on {images.device}, {int(labels.sum())}/8 anomalous -> {sheet}")


if __name__ == "__main__":
    main()
