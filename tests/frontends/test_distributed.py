"""``CAI`` with keys=None under torch.distributed: 2 gloo processes on CPU.

Each rank keys its samples by (seed, rank, call counter, position), so ranks get different anomalies
from the same seed and each rank's stream can be replayed from those numbers alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cai_aug.engine import rng

SEED = 13
WORLD = 2
CALLS = 2


def _worker(rank: int, bank_dir: str, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from cai_aug.engine.bank import AnomalyBank
        from cai_aug.engine.cai import CAI
        from cai_aug.io.demo_data import demo_images

        cai = CAI(AnomalyBank.from_folder(bank_dir), seed=SEED)  # the same seed on every rank
        images = demo_images(4, 48, seed=6)  # the same images on every rank
        results = []
        for _ in range(CALLS):
            out = cai(images)
            results.append({"images": out.images, "masks": out.masks, "labels": out.labels, "info": out.info})
        # the ranks really run together: both have made their anomalies before either saves
        flag = torch.ones(1)
        dist.all_reduce(flag)
        assert int(flag) == WORLD
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(demo_bank_dir, tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(demo_bank_dir), str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _decisions(info: list[dict]) -> list[tuple]:
    return [(i["source_id"], i["synthesis_type"], i["R_prime"], tuple(i["location"])) for i in info]


def test_ranks_get_different_anomalies(ranks):
    for call in range(CALLS):
        a, b = _decisions(ranks[0][call]["info"]), _decisions(ranks[1][call]["info"])
        assert sum(x != y for x, y in zip(a, b)) >= 3
        assert not torch.equal(ranks[0][call]["masks"], ranks[1][call]["masks"])


def test_each_call_gives_fresh_anomalies(ranks):
    for rank in range(WORLD):
        first, second = _decisions(ranks[rank][0]["info"]), _decisions(ranks[rank][1]["info"])
        assert sum(x != y for x, y in zip(first, second)) >= 3


def test_rank_streams_replay_from_seed_rank_and_call_counter(ranks, demo_bank):
    """Outside any process group, explicit keys (seed, rank, call, position) give each rank's result."""
    from cai_aug.engine.cai import CAI
    from cai_aug.io.demo_data import demo_images

    images = demo_images(4, 48, seed=6)
    cai = CAI(demo_bank, seed=SEED)
    for rank in range(WORLD):
        for call in range(CALLS):
            keys = rng.fold(torch.tensor(rng.sample_key(SEED, "rank", rank, "call", call)), torch.arange(4))
            replay = cai(images, keys=keys)
            got = ranks[rank][call]
            assert _decisions(replay.info) == _decisions(got["info"])
            diff = (replay.images.mul(255).round() - got["images"].mul(255).round()).abs().max()
            assert diff <= 1
            assert (replay.masks != got["masks"]).float().mean() <= 1e-3
            assert torch.equal(replay.labels, got["labels"])
