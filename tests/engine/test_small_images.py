"""Images at the smallest sizes the engine accepts: a sample that cannot be injected comes back unchanged."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cai_aug import CAI
from cai_aug.io.coerce import MIN_IMAGE_SIDE


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE + 8),
    width=st.integers(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE + 8),
    seed=st.integers(0, 2**31 - 1),
    anomalies=st.sampled_from([1, 3]),
    foreground=st.sampled_from(["auto", "none"]),
)
def test_small_images_never_fail_a_batch_and_come_back_unchanged_when_not_injected(
    demo_bank, height, width, seed, anomalies, foreground
):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 3, height, width, generator=generator)
    result = CAI(demo_bank, seed=seed, anomalies=anomalies, foreground=foreground)(images)
    for image, out, mask, label in zip(images, result.images, result.masks, result.labels):
        if label == 0:
            assert torch.equal(out, image) and not mask.any()
        else:
            assert mask.any()
