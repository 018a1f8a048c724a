"""Randomness keyed per sample: a pseudo anomaly depends on (seed, image key, anomaly index,
epoch) only, never on its batch companions, its position, or what the engine processed before; online
keys change with the epoch or the call counter."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_record

from cai_aug.engine import rng
from cai_aug.engine.cai import CAI
from cai_aug.frontends.offline import make_records, manifest_record


def default_keys(seed: int, rank: int, call: int, batch: int) -> torch.Tensor:
    """The documented keys of a batch without image keys: (seed, rank, call counter) folded with the position."""
    return rng.fold(torch.tensor(rng.sample_key(seed, "rank", rank, "call", call)), torch.arange(batch))


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.clamp(0, 1).mul(255).round().to(torch.int16)


def same_sample(result_a, i: int, result_b, j: int) -> None:
    assert_same_record(result_a.info[i], result_b.info[j])
    assert (as_uint8(result_a.images[i]) - as_uint8(result_b.images[j])).abs().max() <= 1
    assert (result_a.masks[i] != result_b.masks[j]).float().mean() <= 1e-3
    assert result_a.labels[i] == result_b.labels[j]


@pytest.fixture(scope="module")
def images():
    from cai_aug.io.demo_data import demo_images

    return demo_images(64, 48, seed=4)


@pytest.fixture(scope="module")
def image_keys():
    return [f"line_a/normal_{i:03d}.png" for i in range(64)]


@pytest.fixture(scope="module")
def batch_of_64(demo_bank, images, image_keys):
    cai = CAI(demo_bank, seed=21)
    return cai(images, keys=cai.sample_keys(image_keys))


def test_sample_alone_equals_sample_in_batch_of_64(demo_bank, images, image_keys, batch_of_64):
    assert batch_of_64.labels.sum() >= 56  # nearly all are anomalies: the comparison means something
    for i in (0, 17, 40, 63):
        cai = CAI(demo_bank, seed=21)  # a fresh engine, as on another worker
        alone = cai(images[i : i + 1], keys=cai.sample_keys(image_keys[i : i + 1]))
        same_sample(alone, 0, batch_of_64, i)


def test_position_and_companions_do_not_matter(demo_bank, images, image_keys, batch_of_64):
    order = [50, 3, 63, 0, 17, 9, 40, 31]  # other companions, other positions
    cai = CAI(demo_bank, seed=21)
    shuffled = cai(images[order], keys=cai.sample_keys([image_keys[i] for i in order]))
    for position, i in enumerate(order):
        same_sample(shuffled, position, batch_of_64, i)


def test_sequence_of_keys_is_hashed_with_the_seed(demo_bank, images, image_keys, batch_of_64):
    cai = CAI(demo_bank, seed=21)
    by_name = cai(images[:4], keys=image_keys[:4])
    for i in range(4):
        same_sample(by_name, i, batch_of_64, i)


def test_offline_records_do_not_depend_on_what_was_processed_before(demo_bank, images):
    fresh = CAI(demo_bank, seed=5)
    alone = [manifest_record(r, 5) for r in make_records(fresh, images[7], "b/7.png", 3)]
    busy = CAI(demo_bank, seed=5)
    for i in (1, 2):
        make_records(busy, images[i], f"b/{i}.png", 3)
    busy(images[:4])  # online calls in between (call counter, foreground cache)
    after = [manifest_record(r, 5) for r in make_records(busy, images[7], "b/7.png", 3)]
    assert len(alone) == len(after) == 3
    for a, b in zip(alone, after):
        assert_same_record(a, b)


def test_epoch_gives_fresh_anomalies_and_is_reproducible(demo_bank, images, image_keys):
    cai = CAI(demo_bank, seed=21)
    subset, keys = images[:6], image_keys[:6]
    epoch0 = cai(subset, keys=cai.sample_keys(keys, epoch=0))
    epoch1 = cai(subset, keys=cai.sample_keys(keys, epoch=1))
    changed = sum(
        (a["source_id"], a["location"], a["R_prime"]) != (b["source_id"], b["location"], b["R_prime"])
        for a, b in zip(epoch0.info, epoch1.info)
    )
    assert changed >= 4
    again = CAI(demo_bank, seed=21)(subset, keys=rng.sample_keys(21, keys, epoch=1))
    for i in range(6):
        same_sample(again, i, epoch1, i)


def test_default_keys_are_seed_rank_call_counter_position(demo_bank, images):
    subset = images[:6]
    cai = CAI(demo_bank, seed=8)
    first, second = cai(subset), cai(subset)  # keys=None: call counter 0, then 1
    changed = sum(
        a["location"] != b["location"] or a["source_id"] != b["source_id"] for a, b in zip(first.info, second.info)
    )
    assert changed >= 4, "a second call must give fresh anomalies"
    # reproducible from (seed, rank, call counter, position) alone
    for call, result in ((0, first), (1, second)):
        explicit = CAI(demo_bank, seed=8)(subset, keys=default_keys(8, 0, call, 6))
        for i in range(6):
            same_sample(explicit, i, result, i)
