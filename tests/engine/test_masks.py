import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter

from cai_aug.engine.masks import difference_mask, majority_filter


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
