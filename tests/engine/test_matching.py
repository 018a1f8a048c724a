import warnings

import pytest
import torch

from cai_aug.engine import rng
from cai_aug.engine.algorithm1 import plan_types, quota_counts
from cai_aug.engine.matching import (
    LARGE,
    MEDIUM,
    RANGE_HIGH,
    RANGE_LOW,
    SMALL,
    TRIVIAL,
    QuotaWarning,
    bbox_size,
    draw_ratio,
    draw_source,
    draw_synthesis_type,
    plan_synthesis,
    size_ratios,
    source_type,
)


def test_bbox_size_is_the_longer_side_of_the_tight_box():
    mask = torch.zeros(2, 1, 20, 30, dtype=torch.bool)
    mask[0, 0, 3:8, 10:25] = True  # 5 x 15
    mask[0, 0, 12, 2] = True  # extends rows to 3..12 -> 10 rows, cols 2..24 -> 23 cols
    assert bbox_size(mask).tolist() == [23.0, 0.0]


@pytest.mark.parametrize(
    ("sa", "sf", "expected"),
    [
        (9, 100, TRIVIAL),
        (10, 100, SMALL),
        (29, 100, SMALL),
        (30, 100, MEDIUM),
        (69, 100, MEDIUM),
        (70, 100, LARGE),
        (250, 100, LARGE),
    ],
)
def test_source_type_from_hand_computed_ratio(sa, sf, expected):
    assert int(source_type(torch.tensor(sa / sf))) == expected


def test_trivial_sources_are_never_drawn():
    types = torch.tensor([[TRIVIAL, SMALL, TRIVIAL, LARGE]]).repeat(500, 1)
    wanted = torch.full((500,), SMALL)
    source, _, _ = draw_source(torch.arange(500), types, wanted)
    assert set(source.tolist()) == {1, 3}


def test_a_source_never_makes_a_larger_type_than_its_own():
    types = torch.tensor([[SMALL, MEDIUM, LARGE, SMALL]]).repeat(900, 1)
    wanted = draw_synthesis_type(torch.arange(900), (4, 3, 3))
    source, synthesis, _ = draw_source(torch.arange(900), types, wanted)
    assert (types[0][source] >= synthesis).all()
    assert (synthesis == wanted).all()


def test_missing_type_falls_back_to_the_next_smaller():
    types = torch.tensor([[SMALL, MEDIUM]]).repeat(3, 1)
    source, synthesis, fallback = draw_source(torch.arange(3), types, torch.tensor([LARGE, MEDIUM, SMALL]))
    assert synthesis.tolist() == [MEDIUM, MEDIUM, SMALL]
    assert fallback.tolist() == [True, False, False]
    assert source[0] == 1


def test_no_usable_source_returns_minus_one():
    types = torch.tensor([[TRIVIAL, TRIVIAL]])
    source, synthesis, _ = draw_source(torch.arange(1), types, torch.tensor([SMALL]))
    assert source.tolist() == [-1] and synthesis.tolist() == [0]


@pytest.mark.parametrize(("synthesis", "low", "high"), [(SMALL, 0.1, 0.3), (MEDIUM, 0.3, 0.7), (LARGE, 0.7, 1.0)])
def test_ratio_prime_stays_in_its_range(synthesis, low, high):
    keys = torch.arange(4000)
    types = torch.full((4000,), synthesis)
    continuous = draw_ratio(keys, types, torch.ones(4000), decimals=None)
    assert continuous.min() >= low and continuous.max() <= high
    grid = draw_ratio(keys, types, torch.ones(4000), decimals=1)
    assert grid.min() >= low - 1e-9 and grid.max() <= high + 1e-9
    expected = {SMALL: [0.1, 0.2], MEDIUM: [0.3, 0.4, 0.5, 0.6], LARGE: [0.7, 0.8, 0.9, 1.0]}[synthesis]
    assert torch.allclose(grid.unique(), torch.tensor(expected, dtype=torch.float64))


def test_no_upscale_caps_ratio_prime_at_the_source_ratio():
    keys = torch.arange(1000)
    ratio = torch.full((1000,), 0.45)
    values = draw_ratio(keys, torch.full((1000,), MEDIUM), ratio, decimals=None, allow_upscale=False)
    assert values.max() <= 0.45 and values.min() >= 0.3


def test_online_type_frequencies_follow_the_quotas():
    types = draw_synthesis_type(torch.arange(20_000), (4, 3, 3))
    share = torch.bincount(types, minlength=4)[1:].double() / 20_000
    assert torch.allclose(share, torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64), atol=0.02)


def test_quota_counts_of_ten_are_three_three_four():
    assert quota_counts((4, 3, 3), 10) == [3, 3, 4]
    assert sum(quota_counts((4, 3, 3), 7)) == 7


def test_algorithm_one_meets_the_quotas_exactly_when_the_bank_allows():
    types = torch.tensor([SMALL, MEDIUM, LARGE, TRIVIAL, SMALL, LARGE])
    sources, synthesis, moved = plan_types(rng.sample_key(0, "x"), types, [3, 3, 4])
    assert sorted(synthesis) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert all(types[s] >= k for s, k in zip(sources, synthesis))
    assert TRIVIAL not in [int(types[s]) for s in sources]
    assert not moved


def test_algorithm_one_makes_the_largest_type_still_open():
    # a single large source: the first draws fill large, then medium, then small
    types = torch.tensor([LARGE])
    _, synthesis, _ = plan_types(0, types, [3, 3, 4])
    assert synthesis == [3, 3, 3, 3, 2, 2, 2, 1, 1, 1]


def test_bank_without_large_sources_terminates_with_smaller_types():
    types = torch.tensor([SMALL, MEDIUM, SMALL])
    sources, synthesis, moved = plan_types(0, types, [3, 3, 4])
    assert moved
    assert len(synthesis) == 10 and max(synthesis) == MEDIUM
    assert synthesis.count(MEDIUM) == 7


def test_synthesize_warns_once_when_quotas_cannot_be_met(demo_bank, demo_targets):
    from cai_aug import synthesize

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        synthesize(demo_targets[1], demo_bank, 4, image_key="t", seed=0, quotas=(1, 0, 0), foreground="none")
    quota_warnings = [w for w in caught if issubclass(w.category, QuotaWarning)]
    assert len(quota_warnings) <= 1


def test_synthesize_meets_four_three_three_when_the_bank_allows(demo_bank, demo_targets):
    from collections import Counter

    from cai_aug import synthesize

    anomalies = synthesize(demo_targets[1], demo_bank, 10, image_key="t.png", seed=3, foreground="none")
    assert len(anomalies) == 10
    assert Counter(a.info["synthesis_type"] for a in anomalies) == {"large": 4, "medium": 3, "small": 3}
    assert all(a.label == 1 and a.mask.sum() >= 10 for a in anomalies)


# ---------------------------------------------------------------------- plan_synthesis, size_ratios


def test_size_ratios_are_source_size_over_foreground_size():
    foreground = torch.zeros(2, 1, 20, 20, dtype=torch.bool)
    foreground[0, :, 0:10, 0:5] = True  # sf = 10
    foreground[1, :, 0:20, 0:20] = True  # sf = 20
    ratios = size_ratios(torch.tensor([5.0, 10.0, 20.0]), foreground)
    assert ratios.tolist() == [[0.5, 1.0, 2.0], [0.25, 0.5, 1.0]]


def test_plan_makes_a_type_the_source_allows_and_r_prime_in_its_range():
    keys = torch.arange(200)
    ratios = torch.tensor([[0.2, 0.5, 0.9]]).repeat(200, 1)  # a small, a medium and a large source
    plan = plan_synthesis(keys, ratios, (4, 3, 3))
    types = source_type(ratios.gather(1, plan.source[:, None])[:, 0])
    assert (plan.synthesis <= types).all() and (plan.synthesis >= 1).all()
    low = torch.tensor(RANGE_LOW, dtype=torch.float64)[plan.synthesis]
    high = torch.tensor(RANGE_HIGH, dtype=torch.float64)[plan.synthesis]
    assert ((plan.ratio_prime >= low - 1e-9) & (plan.ratio_prime <= high + 1e-9)).all()
    assert torch.equal(plan.ratio, ratios.gather(1, plan.source[:, None])[:, 0].double())


def test_plan_keeps_a_forced_source_and_type():
    keys = torch.arange(4)
    ratios = torch.tensor([[0.2, 0.5, 0.9]]).repeat(4, 1)
    forced = (torch.tensor([2, 2, 1, 0]), torch.tensor([3, 1, 2, 1]))
    plan = plan_synthesis(keys, ratios, (4, 3, 3), forced=forced)
    assert torch.equal(plan.source, forced[0]) and torch.equal(plan.synthesis, forced[1])
    assert not plan.fallback.any()


def test_plan_without_stm_draws_r_prime_in_the_whole_range_and_reads_the_type_from_it():
    keys = torch.arange(500)
    ratios = torch.tensor([[0.05, 2.0]]).repeat(500, 1)  # STM would never use the trivial source
    plan = plan_synthesis(keys, ratios, (4, 3, 3), use_stm=False)
    assert set(plan.source.tolist()) == {0, 1}
    assert plan.ratio_prime.min() >= 0.1 - 1e-9 and plan.ratio_prime.max() <= 1.0 + 1e-9
    assert torch.equal(plan.synthesis, source_type(plan.ratio_prime.float()).clamp(1, 3))


@pytest.mark.parametrize("dim", [1, 2])
def test_any_along_equals_any(dim):
    from cai_aug.engine.matching import any_along

    mask = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(dim)) > 0.995
    mask[0] = False
    assert torch.equal(any_along(mask, dim), mask.any(dim=dim))
