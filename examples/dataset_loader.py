"""CAIDataset in a DataLoader with 2 persistent workers: DRAEM-style items, new anomalies every epoch.

Run: ``python examples/dataset_loader.py [--out out/examples/dataset_loader]``. Writes ``epoch0.png`` and
``epoch1.png`` (the augmented images with the anomaly masks outlined) under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cai_aug import CAIDataset
from cai_aug.io.demo_data import write_demo_bank, write_demo_normals
from cai_aug.io.preview import save_contact_sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/examples/dataset_loader"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bank = args.out / "bank"
    if not (bank / "MANIFEST.csv").exists():
        write_demo_bank(bank)
    normals = write_demo_normals(args.out / "normals", n=8, size=128)

    dataset = CAIDataset(normals, bank, p_anomaly=0.75, seed=0)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        dataset.set_epoch(epoch)  # with DistributedSampler, call sampler.set_epoch(epoch) too
        items = {}
        for batch in loader:
            for row, idx in enumerate(batch["idx"].tolist()):
                items[idx] = {key: value[row] for key, value in batch.items()}
        order = sorted(items)
        images = torch.stack([items[i]["augmented_image"] for i in order])
        masks = torch.stack([items[i]["anomaly_mask"] for i in order])
        captions = [f"{i}: has_anomaly={int(items[i]['has_anomaly'][0])}" for i in order]
        sheet = save_contact_sheet(args.out / f"epoch{epoch}.png", images, masks, captions, columns=4)
        print(f"epoch {epoch}: {int(masks.flatten(1).amax(1).sum())}/{len(order)} anomalous -> {sheet}")


if __name__ == "__main__":
    main()
