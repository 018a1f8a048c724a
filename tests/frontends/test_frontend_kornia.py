"""RandomCrossDomainAnomaly inside a real kornia AugmentationSequential(data_keys=["input", "mask"])."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import requires_cuda
from test_frontend_augment import write_tiny_bank

K = pytest.importorskip("kornia.augmentation", reason="needs kornia (the kornia extra)")

from cai_aug.frontends.kornia import RandomCrossDomainAnomaly  # noqa: E402
from cai_aug.io.demo_data import demo_images  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return demo_images(4, SIZE, seed=1)


def _sequential(op: RandomCrossDomainAnomaly) -> K.AugmentationSequential:
    return K.AugmentationSequential(K.RandomHorizontalFlip(p=0.0), op, data_keys=["input", "mask"])


def test_image_and_mask_in_augmentation_sequential(bank: Path, images: torch.Tensor) -> None:
    existing = torch.zeros(4, 1, SIZE, SIZE)
    existing[:, :, :6, :6] = 1
    out, mask = _sequential(RandomCrossDomainAnomaly(bank, p=1.0))(images, existing)
    assert out.shape == images.shape and mask.shape == existing.shape and mask.dtype == existing.dtype
    assert (mask[:, :, :6, :6] == 1).all()  # union with the mask already there
    anomaly = mask.clone()
    anomaly[:, :, :6, :6] = 0
    assert (anomaly.flatten(1).amax(1) > 0).sum() >= 3
    changed = (out - images).abs().amax(1, keepdim=True) > 1e-4
    assert changed.any() and changed[anomaly == 0].float().mean() < 0.05  # the anomaly lies in its mask


def test_p_zero_changes_nothing(bank: Path, images: torch.Tensor) -> None:
    out, mask = _sequential(RandomCrossDomainAnomaly(bank, p=0.0))(images, torch.zeros(4, 1, SIZE, SIZE))
    assert torch.equal(out, images) and not mask.any()


def test_p_gates_per_sample(bank: Path, images: torch.Tensor) -> None:
    torch.manual_seed(3)
    op = RandomCrossDomainAnomaly(bank, p=0.5)
    applied = 0
    for _ in range(4):
        _, mask = _sequential(op)(images, torch.zeros(4, 1, SIZE, SIZE))
        gate = op._params["batch_prob"] > 0.5
        assert not mask[~gate].any()  # a sample the gate skipped gets no anomaly
        applied += int(gate.sum())
    assert 0 < applied < 16


def test_same_on_batch_shares_one_key(bank: Path, images: torch.Tensor) -> None:
    op = RandomCrossDomainAnomaly(bank, p=1.0, same_on_batch=True)
    _sequential(op)(images, torch.zeros(4, 1, SIZE, SIZE))
    assert op._params["key"].unique().numel() == 1
    other = RandomCrossDomainAnomaly(bank, p=1.0)
    _sequential(other)(images, torch.zeros(4, 1, SIZE, SIZE))
    assert other._params["key"].unique().numel() == 4


def test_reproducible_under_torch_manual_seed(bank: Path, images: torch.Tensor) -> None:
    sequential = _sequential(RandomCrossDomainAnomaly(bank, p=0.5))
    torch.manual_seed(0)
    first = sequential(images, torch.zeros(4, 1, SIZE, SIZE))
    torch.manual_seed(0)
    second = sequential(images, torch.zeros(4, 1, SIZE, SIZE))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_keyed_seed_ignores_the_global_rng(bank: Path, images: torch.Tensor) -> None:
    op = RandomCrossDomainAnomaly(bank, p=0.5, seed=11)
    torch.manual_seed(1)
    first = _sequential(op)(images, torch.zeros(4, 1, SIZE, SIZE))
    op.set_epoch(0)
    torch.manual_seed(2)
    second = _sequential(op)(images, torch.zeros(4, 1, SIZE, SIZE))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    third = _sequential(op)(images, torch.zeros(4, 1, SIZE, SIZE))  # the next call: other keys
    assert not torch.equal(third[0], second[0])


def test_params_replay_the_same_anomaly(bank: Path, images: torch.Tensor) -> None:
    sequential = _sequential(RandomCrossDomainAnomaly(bank, p=1.0))
    out, mask = sequential(images, torch.zeros(4, 1, SIZE, SIZE))
    again, again_mask = sequential(images, torch.zeros(4, 1, SIZE, SIZE), params=sequential._params)
    assert torch.equal(out, again) and torch.equal(mask, again_mask)


def test_mask_without_its_image_is_a_clear_error(bank: Path, images: torch.Tensor) -> None:
    # kornia's containers always transform the image first; the op's own mask path, called with the
    # parameters of a call whose image it never saw, must say what is missing.
    op = RandomCrossDomainAnomaly(bank, p=1.0)
    params = op.forward_parameters(images.shape)
    with pytest.raises(ValueError, match="image"):
        op.transform_masks(torch.zeros(4, 1, SIZE, SIZE), params, op.flags)


def test_normalised_input_is_a_clear_error(bank: Path, images: torch.Tensor) -> None:
    normalise = K.Normalize(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))
    with pytest.raises(ValueError, match="normalised"):
        K.AugmentationSequential(normalise, RandomCrossDomainAnomaly(bank, p=1.0))(images)


def test_readme_kornia_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached_demo_bank: Path) -> None:
    from conftest import run_readme

    namespace = run_readme("kornia", tmp_path, monkeypatch)
    assert namespace["images"].shape == (4, 3, 128, 128) and namespace["masks"].shape == (4, 1, 128, 128)
    assert set(namespace["masks"].unique().tolist()) <= {0.0, 1.0}


@requires_cuda
def test_cuda_batch_stays_on_the_device(bank: Path, images: torch.Tensor) -> None:
    sequential = _sequential(RandomCrossDomainAnomaly(bank, p=1.0, seed=0)).cuda()
    out, mask = sequential(images.cuda(), torch.zeros(4, 1, SIZE, SIZE, device="cuda"))
    assert out.device.type == mask.device.type == "cuda"
    assert (mask.flatten(1).amax(1) > 0).sum() >= 3
    changed = (out - images.cuda()).abs().amax(1, keepdim=True) > 1e-4
    assert changed[mask == 0].float().mean() < 0.05
