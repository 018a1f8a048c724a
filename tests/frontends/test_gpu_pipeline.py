"""The whole CAI pipeline on CUDA (skipped without a GPU): same decisions as on the CPU, and host
synchronisations bounded per batch, not per sample."""

import pytest
from cuda_syncs import count_cuda_syncs

from cai_aug import CAI
from cai_aug.io.demo_data import demo_images

pytestmark = pytest.mark.gpu


_syncs = count_cuda_syncs


def test_cuda_pipeline_makes_the_same_decisions_as_the_cpu(demo_bank):
    images = demo_images(8, 128, seed=1)
    keys = [f"img_{i}.png" for i in range(8)]
    cpu = CAI(demo_bank, seed=0, foreground="none")(images, keys=keys)
    cuda = CAI(demo_bank, seed=0, foreground="none", device="cuda")(images.cuda(), keys=keys)
    decisions = lambda info: {k: v for k, v in info.items() if not k.startswith("poisson")}  # noqa: E731
    assert [decisions(i) for i in cpu.info] == [decisions(i) for i in cuda.info]
    assert ((cpu.images - cuda.images.cpu()).abs() * 255).max() <= 1.0
    assert (cpu.masks != cuda.masks.cpu()).float().mean() <= 0.001


def test_host_syncs_do_not_grow_with_the_batch(demo_bank):
    cai = CAI(demo_bank, seed=0, foreground="none", device="cuda")
    small, large = demo_images(8, 128).cuda(), demo_images(256, 128).cuda()
    cai(small)  # warm-up: kernels compiled, bank copied to the device
    syncs_small, syncs_large = _syncs(lambda: cai(small)), _syncs(lambda: cai(large))
    assert syncs_large <= syncs_small + 40, (syncs_small, syncs_large)
    assert syncs_large < 256
