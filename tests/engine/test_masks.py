import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter

from cai_aug.engine.masks import difference_mask, majority_filter, reconstruct


def test_mask_is_thresholded_channel_mean_difference_inside_region():
    generator = torch.Generator().manual_seed(0)
    normal = torch.rand(2, 3, 20, 20, generator=generator)
    synthesized = (normal + 0.05 * torch.randn(2, 3, 20, 20, generator=generator)).clamp(0, 1)
    region = torch.zeros(2, 1, 20, 20, dtype=torch.bool)
    region[:, :, 5:15, 3:17] = True
    mask = difference_mask(synthesized, normal, region, threshold=0.03, median=1)
    expected = ((synthesized - normal).abs().mean(1, keepdim=True) > 0.03) & region
    assert torch.equal(mask, expected)


def test_majority_filter_equals_a_median_filter_on_binary_masks():
    generator = np.random.default_rng(1)
    binary = generator.random((3, 30, 40)) > 0.6
    ours = majority_filter(torch.from_numpy(binary)[:, None], 7)[:, 0].numpy()
    reference = np.stack([median_filter(b.astype(np.uint8), size=7, mode="constant") for b in binary]) > 0
    assert np.array_equal(ours, reference)


def test_identical_images_give_an_empty_mask():
    image = torch.rand(1, 3, 16, 16)
    region = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    assert not difference_mask(image, image.clone(), region, threshold=7 / 255).any()


@pytest.mark.parametrize("size", [3, 5, 17])
def test_majority_filter_equals_a_median_filter_at_other_sizes(size):
    # 17 x 17 = 289 pixels: counts no longer fit in a byte
    binary = np.random.default_rng(size).random((2, 41, 37)) > 0.5
    ours = majority_filter(torch.from_numpy(binary)[:, None], size)[:, 0].numpy()
    reference = np.stack([median_filter(b.astype(np.uint8), size=size, mode="constant") for b in binary]) > 0
    assert np.array_equal(ours, reference)


# ---- the "hysteresis" rule: the majority mask plus what the filter erodes from a clearly visible change


def _one_channel_pair(change: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A normal image of zeros and a pseudo anomaly changed by ``change (H, W)`` in every channel."""
    normal = torch.zeros(1, 3, *change.shape)
    return normal + torch.from_numpy(change).float()[None, None], normal


def test_hysteresis_keeps_a_thin_visible_line_the_majority_filter_erases():
    change = np.zeros((15, 15))
    change[7, 2:13] = 30 / 255  # one pixel wide, clearly visible
    synthesized, normal = _one_channel_pair(change)
    region = torch.ones(1, 1, 15, 15, dtype=torch.bool)
    assert not difference_mask(synthesized, normal, region, 7 / 255, 7, rule="majority").any()
    mask = difference_mask(synthesized, normal, region, 7 / 255, 7, rule="hysteresis")[0, 0].numpy()
    assert np.array_equal(mask, change > 0)


def test_hysteresis_drops_faint_speckle_like_the_majority_rule():
    change = np.zeros((15, 15))
    change[3, 3] = change[10, 11] = change[6, 12] = 15 / 255  # above T = 7/255, below 3T = 21/255
    synthesized, normal = _one_channel_pair(change)
    region = torch.ones(1, 1, 15, 15, dtype=torch.bool)
    assert not difference_mask(synthesized, normal, region, 7 / 255, 7, rule="hysteresis").any()


def test_hysteresis_grows_into_faint_change_within_the_filter_radius_only():
    # a strong pixel at column 2, then a faint line to the right; median 7: radius 3 -> columns 3, 4, 5
    change = np.zeros((9, 12))
    change[4, 2] = 30 / 255
    change[4, 3:10] = 10 / 255
    synthesized, normal = _one_channel_pair(change)
    region = torch.ones(1, 1, 9, 12, dtype=torch.bool)
    mask = difference_mask(synthesized, normal, region, 7 / 255, 7, rule="hysteresis")[0, 0].numpy()
    expected = np.zeros((9, 12), bool)
    expected[4, 2:6] = True
    assert np.array_equal(mask, expected)


def test_hysteresis_stays_inside_the_region_and_contains_the_majority_mask():
    generator = torch.Generator().manual_seed(3)
    normal = torch.rand(2, 3, 32, 32, generator=generator)
    synthesized = (normal + 0.08 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(0, 1)
    region = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    region[:, :, 4:28, 6:30] = True
    majority = difference_mask(synthesized, normal, region, 7 / 255, 7, rule="majority")
    hysteresis = difference_mask(synthesized, normal, region, 7 / 255, 7, rule="hysteresis")
    assert not (hysteresis & ~region).any() and not (majority & ~hysteresis).any()


def test_reconstruct_to_convergence_equals_binary_propagation():
    from scipy.ndimage import binary_propagation

    generator = np.random.default_rng(4)
    within = generator.random((2, 40, 50)) > 0.45
    seeds = generator.random((2, 40, 50)) > 0.995
    ours = reconstruct(torch.from_numpy(seeds)[:, None], torch.from_numpy(within)[:, None])[:, 0].numpy()
    reference = np.stack([binary_propagation(s & w, structure=np.ones((3, 3)), mask=w) for s, w in zip(seeds, within)])
    assert np.array_equal(ours, reference)


def test_unknown_mask_rule_is_refused():
    image = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="mask rule"):
        difference_mask(image, image, torch.ones(1, 1, 8, 8, dtype=torch.bool), 7 / 255, rule="median")


def test_the_paper_preset_keeps_the_paper_rule():
    from cai_aug.engine.config import CAIConfig

    assert CAIConfig().mask_rule == "hysteresis" and CAIConfig.preset("paper").mask_rule == "majority"
    with pytest.raises(ValueError, match="mask_rule"):
        CAIConfig(mask_rule="median")
