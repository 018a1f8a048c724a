"""CrossDomainAnomaly inside an albumentations Compose, and the pipeline saved and loaded as JSON.

Run: ``python examples/albumentations_compose.py [--out out/examples/albumentations_compose]``. Writes
``compose.png`` (the outputs with their ``mask`` outlined) and ``pipeline.json`` under ``--out``.
"""

from __future__ import annotations

import os

import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
from _preamble import start  # noqa: E402  (examples run as scripts: their folder is on sys.path)

from cai_aug.albumentations import CrossDomainAnomaly  # noqa: E402
from cai_aug.io.demo_data import demo_images  # noqa: E402
from cai_aug.io.preview import save_contact_sheet  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    out, bank = start("albumentations_compose", __doc__, argv)

    pipeline = A.Compose(
        [
            A.Resize(128, 128),
            A.HorizontalFlip(p=0.5),
            CrossDomainAnomaly(bank=bank, mode="normal", p=0.75),  # before Normalize: needs [0, 1] or uint8
            A.Normalize(mean=(0, 0, 0), std=(1, 1, 1)),  # use your usual mean/std; this one keeps [0, 1]
        ],
        seed=0,
    )
    A.save(pipeline, str(out / "pipeline.json"))
    pipeline = A.load(str(out / "pipeline.json"))  # the bank travels as its path
    pipeline.set_random_seed(0)

    sources = (demo_images(8, 160) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images, masks = [], []
    for image in sources:
        result = pipeline(image=image, mask=np.zeros(image.shape[:2], np.uint8))
        images.append(torch.from_numpy(result["image"]).permute(2, 0, 1))
        masks.append(torch.from_numpy(result["mask"]).float()[None])
    sheet = save_contact_sheet(out / "compose.png", torch.stack(images), torch.stack(masks), columns=4)
    print(f"{sum(int(m.any()) for m in masks)}/8 with an anomaly -> {sheet}; pipeline -> {out / 'pipeline.json'}")


if __name__ == "__main__":
    main()
