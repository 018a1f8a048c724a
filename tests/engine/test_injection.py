"""PE on canvases: the injected canvases pasted back equal a Poisson solve on the full images."""

from __future__ import annotations

import pytest
import torch

from cai_aug.engine.injection import blend_region, inject, injection_mask
from cai_aug.engine.location import Placement
from cai_aug.engine.masks import difference_mask
from cai_aug.engine.resample import paste, render_patterns
from cai_aug.poisson import poisson_blend


def _placement(centres: list[tuple[int, int]], size: int) -> Placement:
    batch = len(centres)
    return Placement(
        centre=torch.tensor(centres, dtype=torch.int64),
        found=torch.ones(batch, dtype=torch.bool),
        ratio_prime=torch.full((batch,), 0.5, dtype=torch.float64),
        scale=torch.ones(batch, dtype=torch.float64),
        height=torch.full((batch,), size, dtype=torch.int64),
        width=torch.full((batch,), size, dtype=torch.int64),
    )


@pytest.fixture(scope="module")
def injected(demo_bank, demo_targets):
    # one pattern in the middle, one against the top-left border, one against the bottom-right border
    images = demo_targets[:3]
    foreground = torch.ones_like(images[:, :1], dtype=torch.bool)
    placement = _placement([(48, 48), (12, 12), (84, 84)], 24)
    source = torch.tensor([0, 1, 2])
    storage = demo_bank.storage_on("cpu")
    placed = torch.ones(3, dtype=torch.bool)
    return images, inject(images, foreground, storage, source, placement, placed, margin=8), storage, source, placement


def test_blend_region_closes_then_dilates_and_contains_the_pattern():
    mask = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    mask[..., 8:12, 5:8] = True
    mask[..., 8:12, 9:12] = True  # a one-pixel gap the closing fills
    region = blend_region(mask, 3)
    assert region[mask].all() and region[0, 0, 9, 8] and region.sum() > mask.sum()
    assert torch.equal(blend_region(mask, 0), mask)


def test_canvases_pasted_back_equal_a_full_image_poisson_solve(injected):
    images, injection, storage, source, placement = injected
    canvas_h, canvas_w = injection.images.shape[-2:]
    pad = 8 + 2  # margin + 2
    canvas_source, _ = render_patterns(storage, source, placement.height, placement.width, canvas_h, canvas_w, pad)
    full_source = paste(images, canvas_source, *_origin(injection))
    full_region = paste(torch.zeros_like(images[:, :1], dtype=torch.bool), injection.region, *_origin(injection))
    expected = poisson_blend(images, full_source, full_region).clamp(0, 1)
    assert (injection.paste(images) - expected).abs().max() < 1e-5


def test_canvas_mask_pasted_back_equals_the_full_image_mask(injected):
    images, injection, *_ = injected
    full_region = paste(torch.zeros_like(images[:, :1], dtype=torch.bool), injection.region, *_origin(injection))
    expected = difference_mask(injection.paste(images), images, full_region, 7 / 255)
    got = paste(torch.zeros_like(full_region), injection_mask(injection, 7 / 255), *_origin(injection))
    assert torch.equal(got, expected) and got.any()


def test_region_stays_inside_the_image_and_empty_when_not_placed(demo_bank, demo_targets):
    images = demo_targets[:2]
    placed = torch.tensor([True, False])
    injection = inject(
        images,
        torch.ones_like(images[:, :1], dtype=torch.bool),
        demo_bank.storage_on("cpu"),
        torch.tensor([0, 1]),
        _placement([(12, 12), (48, 48)], 24),
        placed,
    )
    assert not injection.region[1].any() and torch.equal(injection.paste(images)[1], images[1])
    rows = injection.origin_y[0] + torch.arange(injection.region.shape[-2])
    assert not injection.region[0, 0][rows < 0].any()


def _origin(injection):
    return injection.origin_y, injection.origin_x


def test_grey_images_are_those_with_equal_channels():
    from cai_aug.engine.injection import grey_images

    images = torch.rand(4, 3, 16, 16)
    images[1] = images[1, :1]
    images[2, 1] = images[2, 0]  # two equal channels of three: still colour
    images[3] = 0.5
    expected = (images[:, :1] == images[:, 1:]).flatten(1).all(dim=1)
    assert grey_images(images).tolist() == [False, True, False, True] and torch.equal(grey_images(images), expected)


def test_paste_weight_moves_the_pattern_towards_the_source_and_keeps_the_rim(injected, demo_targets):
    images, poisson, storage, source, placement = injected
    args = (images, torch.ones_like(images[:, :1], dtype=torch.bool), storage, source, placement)
    placed = torch.ones(3, dtype=torch.bool)
    weight = torch.tensor([0.0, 0.5, 1.0])
    mixed = inject(*args, placed, margin=8, paste_weight=weight)
    pasted = inject(*args, placed, margin=8, use_poisson=False)  # the source under its pattern mask
    pad = 8 + 2
    _, pattern = render_patterns(storage, source, placement.height, placement.width, *poisson.images.shape[-2:], pad)
    under = pattern.expand_as(poisson.images)
    assert torch.equal(mixed.images[0], poisson.images[0])  # weight 0: Poisson alone
    assert torch.allclose(mixed.images[2][under[2]], pasted.images[2][under[2]])  # weight 1: the source there
    half = 0.5 * (poisson.images[1] + pasted.images[1])
    assert torch.allclose(mixed.images[1][under[1]], half[under[1]], atol=1e-6)
    assert torch.equal(mixed.images[~under], poisson.images[~under])  # Omega's rim stays the Poisson solve


def test_paste_weights_are_drawn_per_sample_up_to_the_largest():
    from cai_aug.engine import rng
    from cai_aug.engine.injection import paste_weights

    keys = rng.sample_keys(0, list(range(2000)))
    weights = paste_weights(keys, 0.6)
    assert weights.shape == (2000,) and 0.0 <= weights.min() and weights.max() <= 0.6
    assert 0.27 < weights.mean().item() < 0.33
    assert paste_weights(keys, 0.0) == 0.0
