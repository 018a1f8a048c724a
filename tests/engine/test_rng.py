import subprocess
import sys

import torch

from cai_aug.engine import rng


def test_same_key_and_stream_give_same_draws():
    keys = rng.sample_keys(0, ["a.png", "b.png"])
    assert torch.equal(rng.uniform(keys, 1, 4), rng.uniform(keys.clone(), 1, 4))


def test_streams_and_keys_are_distinct():
    keys = rng.sample_keys(0, ["a.png", "b.png"])
    draws = rng.uniform(keys, 1, 1)
    assert draws[0, 0] != draws[1, 0]
    assert not torch.equal(rng.uniform(keys, 1), rng.uniform(keys, 2))


def test_every_key_part_changes_the_key():
    base = rng.sample_key(0, "a.png", 0, 0)
    assert (
        len(
            {
                base,
                rng.sample_key(1, "a.png", 0, 0),
                rng.sample_key(0, "b.png", 0, 0),
                rng.sample_key(0, "a.png", 1, 0),
                rng.sample_key(0, "a.png", 0, 1),
            }
        )
        == 5
    )


def test_uniform_is_in_unit_interval_and_flat():
    draws = rng.uniform(torch.arange(50_000), 3)[:, 0]
    assert draws.min() >= 0 and draws.max() < 1
    counts = torch.histc(draws.float(), bins=10, min=0, max=1)
    assert (counts - 5000).abs().max() < 300


def test_randint_stays_below_per_sample_bound():
    high = torch.tensor([1, 2, 7, 1000]).repeat(500)
    values = rng.randint(torch.arange(2000), 1, high)
    assert (values >= 0).all() and (values < high).all()


def test_keys_are_stable_across_processes():
    code = "from cai_aug.engine import rng; print(rng.sample_key(7, 'dir/img.png', 3, 2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == rng.sample_key(7, "dir/img.png", 3, 2)


def test_fold_gives_distinct_keys_per_position():
    keys = rng.fold(torch.tensor(rng.sample_key(0, "call", 1)), torch.arange(1000))
    assert keys.unique().numel() == 1000
