"""CrossDomainAnomaly inside an albumentations Compose, and the pipeline saved and loaded as JSON.

Run: ``python examples/albumentations_compose.py [--out out/examples/albumentations_compose]``. Writes
``compose.png`` (the outputs with their ``mask`` outlined) and ``pipeline.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

from cai_aug.frontends.albumentations import CrossDomainAnomaly  # noqa: E402
from cai_aug.io.demo_data import demo_images, write_demo_bank  # noqa: E402
from cai_aug.io.preview import save_contact_sheet  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/examples/albumentations_compose"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bank = args.out / "bank"
    if not (bank / "MANIFEST.csv").exists():
        write_demo_bank(bank)

    pipeline = A.Compose(
        [
            A.Resize(128, 128),
            A.HorizontalFlip(p=0.5),
            CrossDomainAnomaly(bank=bank, mode="normal", p=0.75),  # before Normalize: needs [0, 1] or uint8
            A.Normalize(mean=(0, 0, 0), std=(1, 1, 1)),  # use your usual mean/std; this one keeps [0, 1]
        ],
        seed=0,
    )
    A.save(pipeline, str(args.out / "pipeline.json"))
    pipeline = A.load(str(args.out / "pipeline.json"))  # the bank travels as its path
    pipeline.set_random_seed(0)

    sources = (demo_images(8, 160) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images, masks = [], []
    for image in sources:
        out = pipeline(image=image, mask=np.zeros(image.shape[:2], np.uint8))
        images.append(torch.from_numpy(out["image"]).permute(2, 0, 1))
        masks.append(torch.from_numpy(out["mask"]).float()[None])
    sheet = save_contact_sheet(args.out / "compose.png", torch.stack(images), torch.stack(masks), columns=4)
    print(f"{sum(int(m.any()) for m in masks)}/8 with an anomaly -> {sheet}; pipeline -> {args.out / 'pipeline.json'}")


if __name__ == "__main__":
    main()
