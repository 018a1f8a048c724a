"""CAIDataset: DRAEM item layout, keyed randomness in real DataLoader workers and under torch.distributed."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from test_frontend_augment import write_tiny_bank
from torch.utils.data import DataLoader, DistributedSampler

from cai_aug.engine import rng
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.frontends.augment import CAIAugment
from cai_aug.frontends.dataset import CAIDataset, to_image_tensor
from cai_aug.io.demo_data import demo_images, write_demo_normals

SIZE = 64
N_IMAGES = 8
N_DIST = 4  # images in the distributed test


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module")
def normals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_normals(tmp_path_factory.mktemp("normals"), n=N_IMAGES, size=SIZE)


def _epoch(loader: DataLoader) -> dict[int, dict[str, torch.Tensor]]:
    """idx -> item of one pass over ``loader`` (batches split back into items)."""
    items: dict[int, dict[str, torch.Tensor]] = {}
    for batch in loader:
        for row, idx in enumerate(batch["idx"].tolist()):
            items[idx] = {key: value[row] for key, value in batch.items() if key != "idx"}
    return items


def _same(a: dict[int, dict[str, torch.Tensor]], b: dict[int, dict[str, torch.Tensor]]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[i][key], b[i][key], atol=1e-6) for i in a for key in a[i])


def test_items_have_draem_layout(normals: Path, bank: Path) -> None:
    dataset = CAIDataset(normals, bank, p_anomaly=1.0, seed=0)
    assert len(dataset) == N_IMAGES
    item = dataset[0]
    assert set(item) == {"image", "augmented_image", "anomaly_mask", "has_anomaly", "idx"}
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["augmented_image"].shape == (3, SIZE, SIZE) and item["augmented_image"].dtype == torch.float32
    assert item["anomaly_mask"].shape == (1, SIZE, SIZE) and item["anomaly_mask"].dtype == torch.float32
    assert item["has_anomaly"].shape == (1,) and item["has_anomaly"].dtype == torch.float32
    assert set(item["anomaly_mask"].unique().tolist()) <= {0.0, 1.0}
    assert 0 <= item["augmented_image"].min() and item["augmented_image"].max() <= 1
    for index in range(len(dataset)):
        item = dataset[index]
        assert float(item["has_anomaly"][0]) == float(item["anomaly_mask"].any())
        if item["has_anomaly"][0] == 1:
            changed = (item["augmented_image"] - item["image"]).abs().amax(0) > 0
            assert changed.any()
    # Rank 0, epoch 0: the keys of offline synthesis (the image's path relative to the folder, seed).
    engine = CAI(AnomalyBank.from_folder(bank), seed=0)
    offline = engine(dataset[0]["image"][None], keys=[dataset.image_key(0)])
    assert dataset.image_key(0) == "normal_000.png"
    assert torch.equal(offline.masks[0], dataset[0]["anomaly_mask"])
    # Collation gives DRAEM's batch layout.
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["anomaly_mask"].shape == (4, 1, SIZE, SIZE)
    assert batch["has_anomaly"].shape == (4, 1)


def test_p_anomaly_respected(normals: Path, bank: Path) -> None:
    never = CAIDataset(normals, bank, p_anomaly=0.0)
    for index in range(len(never)):
        item = never[index]
        assert torch.equal(item["augmented_image"], item["image"])
        assert item["anomaly_mask"].sum() == 0 and item["has_anomaly"][0] == 0
    always = CAIDataset(normals, bank, p_anomaly=1.0)
    labels = [float(always[i]["has_anomaly"][0]) for i in range(len(always))]
    assert sum(labels) >= len(always) - 1  # the engine may label an unlucky sample normal, never skip it
    half = CAIDataset(normals, bank, p_anomaly=0.5, seed=3)
    drawn = rng.uniform(half.keys(range(len(half))), rng.Stream.APPLY)[:, 0] < 0.5
    for index in range(len(half)):
        if not drawn[index]:
            assert half[index]["anomaly_mask"].sum() == 0
    with pytest.raises(ValueError, match="p_anomaly"):
        CAIDataset(normals, bank, p_anomaly=1.5)


def test_dataloader_workers_reproducible_distinct_and_epochs(normals: Path, bank: Path) -> None:
    dataset = CAIDataset(normals, bank, p_anomaly=1.0, seed=0)
    reference = _epoch(DataLoader(dataset, batch_size=3, num_workers=0))

    dataset = CAIDataset(normals, bank, p_anomaly=1.0, seed=0)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, persistent_workers=True, shuffle=True)
    epoch0 = _epoch(loader)
    # Same items whatever the worker, batch and order: reproducible across runs and worker counts.
    assert _same(epoch0, reference)
    # Distinct across workers and images: no two items share an anomaly.
    masks = torch.stack([epoch0[i]["anomaly_mask"] for i in sorted(epoch0)])
    assert len({m.numpy().tobytes() for m in masks}) == len(masks)

    dataset.set_epoch(1)  # reaches the persistent workers through shared memory
    epoch1 = _epoch(loader)
    changed = sum(not torch.equal(epoch0[i]["anomaly_mask"], epoch1[i]["anomaly_mask"]) for i in epoch0)
    assert changed >= len(epoch0) - 1
    for i in epoch0:
        assert torch.equal(epoch0[i]["image"], epoch1[i]["image"])

    dataset.set_epoch(0)
    assert _same(_epoch(loader), reference)


def test_wraps_map_style_datasets(bank: Path) -> None:
    images = demo_images(4, SIZE)
    as_uint8 = (images * 255).round().to(torch.uint8)
    variants = {
        "tensor": list(images),
        "uint8 tensor": list(as_uint8),
        "hwc array": [img.permute(1, 2, 0).numpy() for img in as_uint8],
        "pil": [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in as_uint8],
        "dict": [{"image": img, "label": 0} for img in images],
        "tuple": [(img, 0) for img in images],
    }
    reference = None
    for name, data in variants.items():
        dataset = CAIDataset(data, bank, p_anomaly=1.0, seed=1)
        item = dataset[2]
        assert item["augmented_image"].shape == (3, SIZE, SIZE), name
        if reference is None:
            reference = item
        # Same image, same key (the index): same anomaly whatever the container (up to 8-bit rounding).
        assert (item["anomaly_mask"] != reference["anomaly_mask"]).float().mean() < 0.01, name
    gray = to_image_tensor(np.zeros((SIZE, SIZE), dtype=np.uint8))
    assert gray.shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_image_tensor(torch.full((3, SIZE, SIZE), 2.0))


def test_image_size_and_pickling(normals: Path, bank: Path) -> None:
    dataset = CAIDataset(normals, bank, p_anomaly=1.0, image_size=(48, 40), mode="mixed")
    item = dataset[1]
    assert item["image"].shape == (3, 48, 40) and item["anomaly_mask"].shape == (1, 48, 40)
    # Pickled for workers: paths and settings only (the bank is loaded lazily, once per process).
    blob = pickle.dumps(dataset)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    assert torch.equal(clone[1]["anomaly_mask"], item["anomaly_mask"])
    assert clone.engine is dataset.engine  # same process: the same engine and bank


def test_rank_is_pinned_for_spawned_workers(normals: Path, bank: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = CAIDataset(normals, bank, p_anomaly=1.0)
    monkeypatch.setattr("cai_aug.frontends.common.current_rank", lambda: 1)
    clone = pickle.loads(pickle.dumps(dataset))  # what a spawned worker receives
    monkeypatch.setattr("cai_aug.frontends.common.current_rank", lambda: 0)  # workers are no ranks
    assert clone.resolved_rank() == 1 and dataset.resolved_rank() == 0
    assert torch.equal(clone.keys([0]), CAIDataset(normals, bank, rank=1).keys([0]))
    assert not torch.equal(clone.keys([0]), dataset.keys([0]))


def _distributed_worker(rank: int, world: int, init: str, normals: str, bank: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        dataset = CAIDataset(normals, bank, p_anomaly=1.0, seed=0)
        sampler = DistributedSampler(dataset, shuffle=True, seed=0)
        loader = DataLoader(
            dataset,
            batch_size=2,
            sampler=sampler,
            num_workers=2,
            persistent_workers=True,
            multiprocessing_context="fork",  # torchrun ranks default to fork too; spawn is slow here
        )
        result: dict[str, object] = {"rank": dataset.resolved_rank()}
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            items = _epoch(loader)
            result[f"loader{epoch}"] = {i: item["anomaly_mask"] for i, item in items.items()}
        dataset.set_epoch(0)
        result["all"] = torch.stack([dataset[i]["anomaly_mask"] for i in range(len(dataset))])
        augment = CAIAugment(bank, p=1.0, seed=0)
        result["augment"] = augment(demo_images(2, SIZE))[1]
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_torch_distributed_ranks_differ_and_reproduce(bank: Path, tmp_path: Path) -> None:
    normals = write_demo_normals(tmp_path / "normals", n=N_DIST, size=SIZE)
    init = f"file://{tmp_path / 'store'}"
    # Forked ranks (spawned ones re-import torch: 3x slower here); each initialises its own gloo group,
    # so the rank comes from torch.distributed exactly as under torchrun.
    mp.start_processes(
        _distributed_worker,
        args=(2, init, str(normals), str(bank), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    # Both ranks read every image: their anomalies differ (the rank is in the key).
    differ = sum(not torch.equal(a, b) for a, b in zip(ranks[0]["all"], ranks[1]["all"]))
    assert differ >= N_DIST - 1
    assert not torch.equal(ranks[0]["augment"], ranks[1]["augment"])
    # DistributedSampler: the ranks split each epoch, and every item is the one keyed by
    # (seed, image, epoch, rank) whatever the sampler order.
    for epoch in (0, 1):
        seen = [set(r[f"loader{epoch}"]) for r in ranks]
        assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(N_DIST))
    # Reproducible for (seed, rank, epoch): this process, told the rank, makes the same items.
    for rank, result in enumerate(ranks):
        dataset = CAIDataset(normals, bank, p_anomaly=1.0, seed=0, rank=rank)
        assert torch.equal(torch.stack([dataset[i]["anomaly_mask"] for i in range(N_DIST)]), result["all"])
        for epoch in (0, 1):
            dataset.set_epoch(epoch)
            for index, mask in result[f"loader{epoch}"].items():
                assert torch.equal(dataset[index]["anomaly_mask"], mask)
        augment = CAIAugment(bank, p=1.0, seed=0, rank=rank)
        assert torch.equal(augment(demo_images(2, SIZE))[1], result["augment"])


# ---------------------------------------------------------------------- configuration


def test_missing_bank_folder_fails_at_construction(normals: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CAIDataset(normals, tmp_path / "no_bank")


def test_bad_engine_option_fails_at_construction(normals: Path, bank: Path) -> None:
    with pytest.raises(ValueError, match="threshold"):
        CAIDataset(normals, bank, threshold=3.0)


def test_takes_a_config(normals: Path, bank: Path) -> None:
    from cai_aug import CAIConfig

    dataset = CAIDataset(normals, bank, p_anomaly=1.0, config=CAIConfig(mode="mixed"))
    assert dataset.config.mode == "mixed" and dataset.engine.config == CAIConfig(mode="mixed")
    as_dict = CAIDataset(normals, bank, p_anomaly=1.0, config={"mode": "mixed"}, classes=["crack", "stain"])
    assert as_dict.config == dataset.config and set(as_dict.engine.bank.classes) == {"crack", "stain"}
