"""RandomCrossDomainAnomaly as a torchvision transforms v2 op (torchvision imports through conftest's recipe)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_frontend_augment import write_tiny_bank

pytest.importorskip("torchvision", reason="needs torchvision (the anomalib extra)")

from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from cai_aug.frontends.torchvision import RandomCrossDomainAnomaly  # noqa: E402
from cai_aug.io.demo_data import demo_images  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture()
def image() -> tv_tensors.Image:
    return tv_tensors.Image(demo_images(1, SIZE, seed=2)[0])


def _sample(image: tv_tensors.Image) -> dict:
    return {
        "image": image,
        "mask": tv_tensors.Mask(torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)),
        "boxes": tv_tensors.BoundingBoxes([[1, 2, 10, 12]], format="XYXY", canvas_size=(SIZE, SIZE)),
        "label": 0,
        "path": "a.png",
    }


def test_image_gets_the_anomaly_and_mask_the_merged_mask(bank: Path, image: tv_tensors.Image) -> None:
    out = v2.Compose([v2.ToDtype(torch.float32, scale=True), RandomCrossDomainAnomaly(bank, p=1.0)])(_sample(image))
    assert isinstance(out["image"], tv_tensors.Image) and isinstance(out["mask"], tv_tensors.Mask)
    assert out["mask"].dtype == torch.uint8 and out["mask"].shape == (1, SIZE, SIZE)
    assert set(out["mask"].unique().tolist()) == {0, 1}
    changed = (out["image"] - image).abs().amax(0) > 1e-4
    # the anomalies lie in the mask (but for the sub-threshold rims of their solved regions, one per anomaly)
    assert changed.any() and changed[out["mask"][0] == 0].float().mean() < 0.1


def test_other_types_pass_through(bank: Path, image: tv_tensors.Image) -> None:
    sample = _sample(image)
    out = RandomCrossDomainAnomaly(bank, p=1.0)(sample)
    assert out["boxes"] is sample["boxes"] and out["label"] == 0 and out["path"] == "a.png"


def test_existing_mask_is_kept_and_0_255_stays_0_255_with_mask_value(bank: Path, image: tv_tensors.Image) -> None:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    mask[:8, :8] = 255
    _, out = RandomCrossDomainAnomaly(bank, p=1.0, mask_value=255)(image, tv_tensors.Mask(mask))
    assert (out[:8, :8] == 255).all() and set(out.unique().tolist()) == {0, 255}
    assert int((out > 0).sum()) > 64


def test_plain_tensor_is_the_image(bank: Path, image: tv_tensors.Image) -> None:
    plain = image.as_subclass(torch.Tensor)
    out = RandomCrossDomainAnomaly(bank, p=1.0)(plain)
    assert type(out) is torch.Tensor and out.shape == plain.shape and not torch.equal(out, plain)


def test_same_seed_same_output_and_seed_none_follows_torch(
    bank: Path, image: tv_tensors.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # no Lightning seed: seed=None follows torch's RNG
    first = RandomCrossDomainAnomaly(bank, p=1.0, seed=4)(image)
    assert torch.equal(RandomCrossDomainAnomaly(bank, p=1.0, seed=4)(image), first)
    host = RandomCrossDomainAnomaly(bank, p=1.0, seed=None)
    torch.manual_seed(1)
    a = host(image)
    torch.manual_seed(1)
    assert torch.equal(host(image), a)


def test_p_zero_changes_nothing(bank: Path, image: tv_tensors.Image) -> None:
    out = RandomCrossDomainAnomaly(bank, p=0.0)(_sample(image))
    assert torch.equal(out["image"], image) and not out["mask"].any()


def test_range_checks(bank: Path, image: tv_tensors.Image) -> None:
    op = RandomCrossDomainAnomaly(bank, p=0.0)
    assert float(op(tv_tensors.Image(image * 1.004)).max()) <= 1.0  # a bicubic overshoot is clamped
    with pytest.raises(ValueError, match="normalised"):
        op(v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(image))


def test_pil_image_is_a_clear_error(bank: Path, image: tv_tensors.Image) -> None:
    with pytest.raises(TypeError, match="ToImage"):
        RandomCrossDomainAnomaly(bank, p=1.0)(v2.ToPILImage()(image))


def test_as_anomalib_train_augmentations(bank: Path, tmp_path: Path) -> None:
    """anomalib applies it to (image, gt_mask) and keeps the folder's label: 0 (normal) on the train split."""
    pytest.importorskip("anomalib")
    from anomalib.data import Folder

    from cai_aug.io.demo_data import write_demo_normals

    write_demo_normals(tmp_path / "good", n=2, size=SIZE)
    write_demo_normals(tmp_path / "bad", n=2, size=SIZE, seed=1)
    write_demo_normals(tmp_path / "masks", n=2, size=SIZE, seed=1)  # any image, read as a mask
    datamodule = Folder(
        name="tv",
        root=tmp_path,
        normal_dir="good",
        abnormal_dir="bad",
        mask_dir="masks",
        train_augmentations=RandomCrossDomainAnomaly(bank, p=1.0),
        num_workers=0,
    )
    datamodule.setup()
    item = datamodule.train_data[0]
    assert int(item.gt_label) == 0  # anomalib's label, from the folder, not from the transform
    assert item.gt_mask is not None and item.gt_mask.any()  # the anomaly's mask, merged into the zero mask


def test_readme_torchvision_snippet_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached_demo_bank: Path
) -> None:
    from conftest import run_readme

    namespace = run_readme("torchvision", tmp_path, monkeypatch)
    assert isinstance(namespace["image"], tv_tensors.Image) and isinstance(namespace["mask"], tv_tensors.Mask)
    assert namespace["image"].dtype == torch.float32 and namespace["mask"].shape == (1, 128, 128)


def test_p_is_a_settable_attribute(bank: Path, image: tv_tensors.Image) -> None:
    """As on torchvision's own random transforms, ``t.p = ...`` after construction takes effect."""
    op = RandomCrossDomainAnomaly(bank, p=1.0)
    op.p = 0.0
    assert op.p == 0.0
    assert torch.equal(_sample(image)["image"], op(_sample(image))["image"])
    with pytest.raises(ValueError, match="p must lie in"):
        op.p = 2.0
