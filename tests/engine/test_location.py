import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from cai_aug.engine.location import pick_uniform, place_pattern, valid_centres


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(8, 24),
    width=st.integers(8, 24),
    box_h=st.integers(1, 10),
    box_w=st.integers(1, 10),
    seed=st.integers(0, 2**31),
)
def test_chosen_centre_is_on_foreground_and_box_is_inside(height, width, box_h, box_w, seed):
    generator = torch.Generator().manual_seed(seed)
    foreground = torch.rand(1, 1, height, width, generator=generator) > 0.5
    valid = valid_centres(foreground, torch.tensor([box_h]), torch.tensor([box_w]))
    centre, found = pick_uniform(torch.tensor([seed]), valid)
    if not found[0]:
        assert not valid.any()
        return
    y, x = centre[0].tolist()
    assert foreground[0, 0, y, x]
    top, left = y - box_h // 2, x - box_w // 2
    assert top >= 0 and left >= 0 and top + box_h <= height and left + box_w <= width


def test_valid_set_matches_a_hand_computed_case():
    foreground = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    foreground[0, 0, 0:4, 0:6] = True
    valid = valid_centres(foreground, torch.tensor([3]), torch.tensor([4]))
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:4, 2:5] = True  # rows: y-1 >= 0 and y+2 <= 6 and on fg; cols: x-2 >= 0 and x+2 <= 6
    assert torch.equal(valid[0], expected)


def test_choice_is_uniform_over_the_valid_set():
    foreground = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    foreground[0, 0, 2:6, 3:8] = True
    valid = valid_centres(foreground, torch.tensor([1]), torch.tensor([1])).expand(20_000, -1, -1)
    centre, _ = pick_uniform(torch.arange(20_000), valid)
    counts = torch.bincount(centre[:, 0] * 10 + centre[:, 1], minlength=100)[valid[0].flatten()]
    assert counts.numel() == 20 and counts.min() > 0
    assert chisquare(counts.numpy()).pvalue > 1e-3


def test_no_valid_location_is_reported_not_raised():
    foreground = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    foreground[1, 0, 4, 4] = True
    valid = valid_centres(foreground, torch.tensor([3, 20]), torch.tensor([3, 3]))
    _, found = pick_uniform(torch.arange(2), valid)
    assert found.tolist() == [False, False]


# ---------------------------------------------------------------------- place_pattern


def _square_foreground(size: int = 40) -> torch.Tensor:
    return torch.ones(1, 1, size, size, dtype=torch.bool)


def test_place_pattern_keeps_r_prime_when_the_pattern_fits():
    bbox = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    placement = place_pattern(
        torch.tensor([1]), _square_foreground(), bbox, torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([2])
    )
    assert placement.found.all() and placement.ratio_prime.item() == 0.5
    assert (placement.height.item(), placement.width.item()) == (10, 10)


def test_place_pattern_shrinks_r_prime_to_its_type_lower_bound_when_nothing_fits():
    bbox = torch.tensor([[0.0, 0.0, 50.0, 50.0]])  # 50 px at r = 1: larger than the 40 px image; 35 px at 0.7
    ratio, ratio_prime, large = torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64), torch.tensor([3])
    placement = place_pattern(torch.tensor([1]), _square_foreground(), bbox, ratio, ratio_prime, large)
    assert placement.found.all()
    assert placement.ratio_prime.item() == pytest.approx(0.7) and placement.scale.item() == pytest.approx(0.7)
    assert (placement.height.item(), placement.width.item()) == (35, 35)


def test_place_pattern_without_types_does_not_shrink():
    bbox = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    placement = place_pattern(
        torch.tensor([1]), _square_foreground(), bbox, torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64)
    )
    assert not placement.found.any() and placement.ratio_prime.item() == 1.0


def _pick_by_running_count_over_all_pixels(keys, valid):
    """The implementation pick_uniform replaced: one running count over the flattened H x W pixels."""
    from cai_aug.engine import rng

    batch, _, cols = valid.shape
    running = valid.reshape(batch, -1).long().cumsum(dim=1)
    count = running[:, -1]
    pick = rng.randint(keys, rng.Stream.LOCATION, count.clamp(min=1))
    index = torch.searchsorted(running, (pick + 1)[:, None]).squeeze(1).clamp(max=running.shape[1] - 1)
    index = torch.where(count > 0, index, 0)
    return torch.stack([index // cols, index % cols], dim=1), count > 0


@pytest.mark.parametrize("density", [0.0, 0.002, 0.3, 1.0])
def test_pick_uniform_equals_a_running_count_over_all_pixels(density):
    valid = torch.rand(64, 13, 17, generator=torch.Generator().manual_seed(7)) < density
    keys = torch.arange(64) * 7919
    centre, found = pick_uniform(keys, valid)
    expected_centre, expected_found = _pick_by_running_count_over_all_pixels(keys, valid)
    assert torch.equal(found, expected_found) and torch.equal(centre, expected_centre)


def test_pick_in_ranges_equals_pick_uniform_on_the_valid_centres():
    from cai_aug.engine.location import centre_ranges, pick_in_ranges

    foreground = torch.rand(32, 1, 20, 24, generator=torch.Generator().manual_seed(3)) > 0.6
    height, width = torch.randint(1, 22, (32,)), torch.randint(1, 26, (32,))
    keys = torch.arange(32) + 11
    expected = pick_uniform(keys, valid_centres(foreground, height, width))
    got = pick_in_ranges(keys, foreground, *centre_ranges(foreground.shape, height, width))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_row_counts_count_the_valid_centres_of_each_row():
    from cai_aug.engine.location import centre_ranges, row_counts

    foreground = torch.rand(5, 1, 20, 24, generator=torch.Generator().manual_seed(5)) > 0.4
    height, width = torch.tensor([1, 5, 12, 20, 30]), torch.tensor([3, 24, 7, 1, 2])
    expected = valid_centres(foreground, height, width).sum(dim=2)
    assert torch.equal(row_counts(foreground, *centre_ranges(foreground.shape, height, width)), expected)
