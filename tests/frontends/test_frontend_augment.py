"""CAIAugment: a batch transform that keeps dtype and memory format, keyed per sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_cuda

from cai_aug.engine import rng
from cai_aug.frontends.augment import CAIAugment
from cai_aug.io.demo_data import demo_images
from cai_aug.io.images import write_image, write_mask

SIZE = 64


def write_tiny_bank(root: Path, seed: int = 0) -> Path:
    """Six small synthetic defects (dark blobs and lines on noise) in three classes, in milliseconds."""
    generator = np.random.default_rng(seed)
    for index in range(6):
        cls = ("crack", "stain", "hole")[index % 3]
        size = int(generator.integers(40, 96))
        yy, xx = np.mgrid[:size, :size] / size - 0.5
        if cls == "crack":
            mask = np.abs(yy - 0.4 * xx * generator.uniform(-1, 1)) < 0.04
        else:
            mask = (yy / generator.uniform(0.1, 0.3)) ** 2 + (xx / generator.uniform(0.1, 0.3)) ** 2 < 1
        image = generator.uniform(0.4, 0.7, (size, size, 3)) * np.where(mask[..., None], 0.3, 1.0)
        (root / cls).mkdir(parents=True, exist_ok=True)
        write_image(root / cls / f"tiny_{cls}_{index}.png", (image * 255).astype(np.uint8))
        write_mask(root / cls / f"tiny_{cls}_{index}_mask.png", mask)
    return root


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return demo_images(4, SIZE)


def _check(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, batch: int) -> None:
    assert masks.shape == (batch, 1, SIZE, SIZE) and labels.shape == (batch,)
    assert set(masks.float().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(labels.float(), (masks.flatten(1).amax(1) > 0).float())


def test_p_respected(bank: Path, images: torch.Tensor) -> None:
    out, masks, labels = CAIAugment(bank, p=0.0)(images)
    assert torch.equal(out, images) and masks.sum() == 0 and labels.sum() == 0
    out, masks, labels = CAIAugment(bank, p=1.0)(images)
    _check(out, masks, labels, 4)
    assert labels.sum() >= 3  # every sample is synthesised; an unlucky one may come back labelled normal
    changed = (out - images).abs().flatten(1).amax(1) > 0
    assert torch.equal(changed, labels.bool())
    # 0 < p < 1: exactly the samples whose keyed APPLY draw is below p are touched.
    augment = CAIAugment(bank, p=0.5, seed=11)
    keys = augment.make_keys(4)
    out, masks, labels = augment(images)
    drawn = rng.uniform(keys, rng.Stream.APPLY)[:, 0] < 0.5
    assert torch.equal(out[~drawn], images[~drawn]) and masks[~drawn].sum() == 0
    with pytest.raises(ValueError, match="p must lie"):
        CAIAugment(bank, p=-0.1)


def test_dtypes_and_memory_formats(bank: Path, images: torch.Tensor) -> None:
    images = images[:2]
    augment = CAIAugment(bank, p=1.0)
    keys = augment.make_keys(2)
    reference, ref_masks, _ = augment(images, keys=keys)
    with torch.no_grad():
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            x = images.to(dtype).contiguous(memory_format=torch.channels_last)
            out, masks, labels = augment(x, keys=keys)
            assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
            assert masks.dtype == dtype and labels.dtype == torch.float32
            _check(out, masks, labels, 2)
            # Computed in float32: the same anomaly up to the input's rounding.
            assert (masks.float() != ref_masks).float().mean() < 0.02
    x = (images * 255).round().to(torch.uint8)
    out, masks, labels = augment(x, keys=keys)
    assert out.dtype == torch.uint8 and masks.dtype == torch.float32
    _check(out, masks, labels, 2)
    # Autograd and autocast around the call change nothing.
    leaf = images.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, masks, _ = augment(leaf, keys=keys)
    assert out.dtype == torch.float32 and torch.equal(masks, ref_masks)
    # One image (C, H, W) -> mask (1, H, W), label ().
    out, masks, labels = augment(images[0], keys=keys[:1])
    assert out.shape == images[0].shape and masks.shape == (1, SIZE, SIZE) and labels.shape == ()


def test_keys_calls_and_epochs(bank: Path, images: torch.Tensor) -> None:
    images = images[:3]
    augment = CAIAugment(bank, p=1.0, seed=5)
    first = augment(images)[1]
    second = augment(images)[1]
    assert augment.calls == 2 and not torch.equal(first, second)  # the call counter is in the key
    augment.set_epoch(0)
    assert torch.equal(augment(images)[1], first)  # (seed, rank, epoch, call, position)
    augment.set_epoch(1)
    assert not torch.equal(augment(images)[1], first)
    assert torch.equal(CAIAugment(bank, p=1.0, seed=5)(images)[1], first)  # reproducible
    assert not torch.equal(CAIAugment(bank, p=1.0, seed=6)(images)[1], first)
    # A sample's anomaly depends on its key, not on its batch companions or position.
    keys = augment.make_keys(3)
    batch = augment(images, keys=keys)
    alone = augment(images[2:3], keys=keys[2:3])
    assert torch.equal(alone[1][0], batch[1][2]) and torch.allclose(alone[0][0], batch[0][2], atol=1e-6)
    # Image keys (str/int) are hashed with the seed and the epoch.
    named = augment(images, keys=["a.png", "b.png", "c.png"])[1]
    assert torch.equal(named, augment(images, keys=["a.png", "b.png", "c.png"])[1])
    with pytest.raises(ValueError, match="keys"):
        augment(images, keys=["a.png"])


def test_is_a_module(bank: Path, images: torch.Tensor) -> None:
    augment = CAIAugment(bank, p=1.0, mode="mixed")
    pipeline = torch.nn.Sequential(torch.nn.Identity())
    pipeline.add_module("cai", augment)
    assert dict(augment.state_dict()) == {} and list(augment.parameters()) == []
    augment.eval()
    out, masks, labels = pipeline[1](images)
    _check(out, masks, labels, 4)


@requires_cuda
def test_cuda_batch(bank: Path, images: torch.Tensor) -> None:
    augment = CAIAugment(bank, p=1.0)
    keys = augment.make_keys(4)
    x = images.cuda().half().contiguous(memory_format=torch.channels_last)
    out, masks, labels = augment(x, keys=keys)
    assert out.is_cuda and masks.is_cuda and labels.is_cuda
    assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)
    cpu_masks = augment(images, keys=keys)[1]
    assert (masks.float().cpu() != cpu_masks).float().mean() < 0.01


def test_readme_frontends_section_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's front-end snippets run as written (on a tiny bank and small images, for time)."""
    from conftest import readme_blocks

    import cai_aug.io.demo_data

    blocks = readme_blocks("frontends")
    assert len(blocks) == 3  # set-up, CAIDataset, CAIAugment (each host op has its own tested section)
    small_images, small_normals = cai_aug.io.demo_data.demo_images, cai_aug.io.demo_data.write_demo_normals
    monkeypatch.setattr(cai_aug.io.demo_data, "write_demo_bank", lambda path, *a, **k: write_tiny_bank(Path(path)))
    monkeypatch.setattr(cai_aug.io.demo_data, "demo_images", lambda n=8, size=256, seed=0: small_images(n, SIZE, seed))
    monkeypatch.setattr(
        cai_aug.io.demo_data, "write_demo_normals", lambda path, n=8, size=256: small_normals(path, 4, SIZE)
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["masks"].shape == (8, 1, SIZE, SIZE) and namespace["labels"].shape == (8,)


# ---------------------------------------------------------------------- configuration


def test_missing_bank_folder_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CAIAugment(tmp_path / "no_bank")


@pytest.mark.parametrize(("option", "match"), [({"mode": "weird"}, "mode"), ({"quotas": "1:2"}, "quotas")])
def test_bad_engine_option_fails_at_construction(bank: Path, option: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CAIAugment(bank, **option)


def test_takes_a_config_and_shares_the_engine_with_equal_keywords(bank: Path) -> None:
    from cai_aug import CAIConfig

    by_config = CAIAugment(bank, p=1.0, config=CAIConfig(mode="mixed", quotas="1:1:1"))
    by_keywords = CAIAugment(bank, p=1.0, mode="mixed", quotas=(1, 1, 1))
    assert by_config.config == by_keywords.config and by_config.engine.config.mode == "mixed"
    assert by_config.engine is by_keywords.engine  # one engine per (bank, config, device) and process
