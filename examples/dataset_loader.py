"""CAIDataset in a DataLoader with 2 persistent workers: DRAEM-style items, new anomalies every epoch.

Run: ``python examples/dataset_loader.py [--out out/examples/dataset_loader]``. Writes ``epoch0.png`` and
``epoch1.png`` (the augmented images with the anomaly masks outlined) under ``--out``.
"""

from __future__ import annotations

import torch
from _preamble import start  # examples run as scripts: their folder is on sys.path
from torch.utils.data import DataLoader

from cai_aug import CAIDataset
from cai_aug.io.demo_data import write_demo_normals
from cai_aug.io.preview import save_contact_sheet


def main(argv: list[str] | None = None) -> None:
    out, bank = start("dataset_loader", __doc__, argv)
    normals = write_demo_normals(out / "normals", n=8, size=128)

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
        sheet = save_contact_sheet(out / f"epoch{epoch}.png", images, masks, captions, columns=4)
        print(f"epoch {epoch}: {int(masks.flatten(1).amax(1).sum())}/{len(order)} anomalous -> {sheet}")


if __name__ == "__main__":
    main()
