"""CrossDomainAnomaly in a real albumentations Compose: targets, p, seeding, serialisation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_frontend_augment import write_tiny_bank

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
A = pytest.importorskip("albumentations")

from cai_aug.frontends import common as frontend  # noqa: E402
from cai_aug.frontends.albumentations import CrossDomainAnomaly  # noqa: E402
from cai_aug.io.demo_data import demo_images  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image, larger than the pipeline's output size."""
    return (demo_images(1, 96)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _pipeline(bank: Path, p: float = 1.0, seed: int | None = 7) -> A.Compose:
    return A.Compose(
        [
            A.Resize(SIZE, SIZE),
            A.HorizontalFlip(p=0.5),
            CrossDomainAnomaly(bank=bank, mode="normal", p=p),
            A.Normalize(),
        ],
        seed=seed,
    )


def test_in_compose_writes_image_and_mask(bank: Path, image: np.ndarray) -> None:
    pipeline = _pipeline(bank)
    plain = A.Compose([A.Resize(SIZE, SIZE), A.HorizontalFlip(p=0.5), A.Normalize()], seed=7)
    empty = np.zeros(image.shape[:2], dtype=np.uint8)
    hits = 0
    for _ in range(3):
        out = pipeline(image=image, mask=empty)
        ref = plain(image=image, mask=empty)
        assert out["image"].shape == (SIZE, SIZE, 3) and out["image"].dtype == np.float32
        assert out["mask"].shape == (SIZE, SIZE) and set(np.unique(out["mask"])) <= {0, 1}
        changed = np.abs(out["image"] - ref["image"]).max(axis=-1) > 1e-3
        if out["mask"].any():
            hits += 1
            # the anomalies sit in the mask (but for the sub-threshold rims of their solved regions)
            assert changed.any() and changed[out["mask"] == 0].mean() < 0.1
    assert hits >= 2
    params = pipeline.transforms[2].get_applied_params()
    assert {"key", "label", "info"} <= set(params)


def test_mask_union_and_missing_mask(bank: Path, image: np.ndarray) -> None:
    existing = np.zeros(image.shape[:2], dtype=np.uint8)
    existing[:10, :10] = 255
    op = CrossDomainAnomaly(bank=bank, p=1.0, mask_value=255)
    out = A.Compose([op], seed=3)(image=image, mask=existing)
    assert (out["mask"][:10, :10] == 255).all()  # the existing mask is kept
    assert set(np.unique(out["mask"])) <= {0, 255}
    assert (out["mask"] > 0).sum() >= (existing > 0).sum()
    # No mask in the call: the anomaly mask is added as `mask` (float32, 0/1), and later ops transform it.
    out = A.Compose([CrossDomainAnomaly(bank=bank, p=1.0), A.Resize(48, 48)], seed=3)(image=image)
    assert out["mask"].shape == (48, 48) and out["mask"].dtype == np.float32 and out["mask"].any()
    # After Normalize the image is no longer in [0, 1]: a clear error.
    with pytest.raises(ValueError, match="before Normalize"):
        A.Compose([A.Normalize(), CrossDomainAnomaly(bank=bank, p=1.0)])(image=image)
    # Float [0, 1] and grayscale images work too.
    gray = image[..., :1].astype(np.float32) / 255
    out = A.Compose([CrossDomainAnomaly(bank=bank, p=1.0)], seed=3)(image=gray, mask=np.zeros(gray.shape[:2]))
    assert out["image"].shape == gray.shape and out["image"].dtype == np.float32


def test_p_respected(bank: Path, image: np.ndarray) -> None:
    image = np.ascontiguousarray(image[:SIZE, :SIZE])
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    never = A.Compose([CrossDomainAnomaly(bank=bank, p=0.0)], seed=0)
    for _ in range(3):
        out = never(image=image, mask=mask)
        assert np.array_equal(out["image"], image) and not out["mask"].any()
    always = A.Compose([CrossDomainAnomaly(bank=bank, p=1.0)], seed=0)
    labels = []
    for _ in range(3):
        out = always(image=image, mask=mask)
        labels.append(always.transforms[0].get_applied_params()["label"])
        assert bool(out["mask"].any()) == bool(labels[-1])
    assert sum(labels) >= 2
    # 0 < p < 1 is decided by albumentations' own random state, as for any op.
    sometimes = A.Compose([CrossDomainAnomaly(bank=bank, p=0.5)], seed=0)
    applied = 0
    for _ in range(6):
        sometimes(image=image, mask=mask)
        applied += bool(sometimes.transforms[0].get_applied_params())  # empty when not applied
    assert 0 < applied < 6


def test_seeded_compose_is_reproducible(bank: Path, image: np.ndarray) -> None:
    mask = np.zeros(image.shape[:2], np.uint8)
    first = _pipeline(bank, seed=11)(image=image, mask=mask)
    second = _pipeline(bank, seed=11)(image=image, mask=mask)
    other = _pipeline(bank, seed=12)(image=image, mask=mask)
    assert np.array_equal(first["mask"], second["mask"]) and np.array_equal(first["image"], second["image"])
    assert not np.array_equal(first["mask"], other["mask"])


def test_serialisation_round_trip(bank: Path, image: np.ndarray, tmp_path: Path) -> None:
    pipeline = _pipeline(bank, seed=5)
    data = A.to_dict(pipeline)
    text = json.dumps(data)  # plain JSON: the bank is stored by its path
    op_dict = data["transform"]["transforms"][2]
    assert op_dict["__class_fullname__"].endswith("CrossDomainAnomaly")
    assert op_dict["bank"] == str(bank) and op_dict["p"] == 1.0 and op_dict["mode"] == "normal"
    loaded = A.from_dict(json.loads(text))
    loaded.set_random_seed(5)
    op = loaded.transforms[2]
    assert isinstance(op, CrossDomainAnomaly) and op.bank == str(bank) and op.config.quotas == (4, 3, 3)
    # The loaded pipeline makes the same anomalies, and shares the process's loaded bank.
    mask = np.zeros(image.shape[:2], np.uint8)
    assert np.array_equal(pipeline(image=image, mask=mask)["mask"], loaded(image=image, mask=mask)["mask"])
    assert op.engine is pipeline.transforms[2].engine
    assert sum(1 for key in frontend._BANKS if key[0] == str(bank.resolve())) == 1
    A.save(pipeline, str(tmp_path / "pipeline.json"))
    assert isinstance(A.load(str(tmp_path / "pipeline.json")).transforms[2], CrossDomainAnomaly)
    with pytest.raises(ValueError, match="mode"):
        CrossDomainAnomaly(bank=bank, mode="blend")


def test_bank_object_and_torch_input_rejected(bank: Path, image: np.ndarray) -> None:
    loaded = frontend.load_bank(bank)
    op = CrossDomainAnomaly(bank=loaded, p=1.0)
    assert op.bank == str(bank)
    with pytest.raises((TypeError, ValueError)):
        A.Compose([op])(image=torch.zeros(3, SIZE, SIZE).numpy().astype(np.int32))


class _AugmentedCopies(torch.utils.data.Dataset):
    """The same image through one seeded Compose, as a user's dataset would hold it."""

    def __init__(self, pipeline: A.Compose, image: np.ndarray) -> None:
        self.pipeline, self.image = pipeline, image

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> np.ndarray:
        return self.pipeline(image=self.image, mask=np.zeros(self.image.shape[:2], np.uint8))["mask"]


def test_dataloader_workers_get_different_anomalies(bank: Path, image: np.ndarray) -> None:
    # Albumentations 2.0 copies one random state into every worker; the worker id in the key still
    # makes item 0 (worker 0) and item 1 (worker 1) differ.
    dataset = _AugmentedCopies(A.Compose([CrossDomainAnomaly(bank=bank, p=1.0)], seed=0), image)
    masks = list(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2))
    assert not torch.equal(masks[0], masks[1])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"mode": "blend"}, "mode"),
        ({"quotas": (0, 0, 0)}, "quotas"),
        ({"quotas": (1, -1, 1)}, "quotas"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": 2}, "threshold"),
        ({"foreground": "sam"}, "foreground"),
        ({"margin": -1}, "margin"),
    ],
)
def test_bad_arguments_fail_at_construction(bank: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CrossDomainAnomaly(bank=bank, **arguments)


def test_missing_bank_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CrossDomainAnomaly(bank=tmp_path / "nowhere")


def test_unknown_arguments_are_rejected_strict_or_not(bank: Path) -> None:
    for strict in (True, False):
        with pytest.raises(TypeError, match="unknown engine option.*probability"):
            CrossDomainAnomaly(bank=bank, probability=0.3, strict=strict)
    assert CrossDomainAnomaly(bank=bank, p=0.3, strict=True).p == 0.3


def test_bank_is_serialised_as_an_absolute_path(bank: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(bank.parent)
    op = CrossDomainAnomaly(bank=bank.name)
    assert op.bank == str(bank.resolve())
    assert A.to_dict(A.Compose([op]))["transform"]["transforms"][0]["bank"] == str(bank.resolve())


def test_0_255_mask_stays_0_255_with_mask_value(bank: Path, image: np.ndarray) -> None:
    existing = np.zeros(image.shape[:2], dtype=np.uint8)
    existing[:4, :4] = 255
    out = A.Compose([CrossDomainAnomaly(bank=bank, p=1.0, mask_value=255)], seed=3)(image=image, mask=existing)
    assert set(np.unique(out["mask"])) == {0, 255}
    assert (out["mask"] > 0).sum() > 16


def test_masks_list_gets_the_anomaly_mask(bank: Path, image: np.ndarray) -> None:
    masks = [np.zeros(image.shape[:2], np.uint8), np.full(image.shape[:2], 0, np.uint8)]
    masks[1][:4, :4] = 255
    op = CrossDomainAnomaly(bank=bank, p=1.0, mask_value=255)
    out = A.Compose([op], seed=3)(image=image, masks=masks, mask=np.zeros(image.shape[:2], np.uint8))
    assert len(out["masks"]) == 2
    assert np.array_equal(out["masks"][0] > 0, out["mask"] > 0) and out["mask"].any()
    assert set(np.unique(out["masks"][0])) == {0, 255}
    assert (out["masks"][1][:4, :4] == 255).all()


def test_additional_image_target_gets_the_same_anomaly(bank: Path, image: np.ndarray) -> None:
    darker = (image * 0.8).astype(np.uint8)  # the same scene under other light
    pipeline = A.Compose([CrossDomainAnomaly(bank=bank, p=1.0)], additional_targets={"image2": "image"}, seed=3)
    out = pipeline(image=image, image2=darker, mask=np.zeros(image.shape[:2], np.uint8))
    changed = np.abs(out["image2"].astype(int) - darker).max(-1) > 2
    assert changed.any() and changed[out["mask"] == 0].mean() < 0.05  # same place as the main image's anomaly
    assert not np.array_equal(out["image2"], out["image"])  # its own pixels, not a copy of the main image
    alone = A.Compose([CrossDomainAnomaly(bank=bank, p=1.0)], seed=3)(image=image)
    assert np.array_equal(alone["image"], out["image"])  # the extra target does not change the main image


def test_replay_stores_parameters_not_pixels(bank: Path, image: np.ndarray) -> None:
    pipeline = A.ReplayCompose([CrossDomainAnomaly(bank=bank, p=1.0)])
    pipeline.set_random_seed(3)
    out = pipeline(image=image, mask=np.zeros(image.shape[:2], np.uint8))
    saved = out["replay"]["transforms"][0]
    assert saved["applied"] and not any(isinstance(value, np.ndarray) for value in saved["params"].values())
    assert json.dumps(saved["params"]["key"])  # a plain int64 key
    again = A.ReplayCompose.replay(out["replay"], image=image, mask=np.zeros(image.shape[:2], np.uint8))
    assert np.array_equal(again["image"], out["image"]) and np.array_equal(again["mask"], out["mask"])
    other = np.ascontiguousarray(image[::-1])
    replayed = A.ReplayCompose.replay(out["replay"], image=other, mask=np.zeros(image.shape[:2], np.uint8))
    assert replayed["mask"].any() and not np.array_equal(replayed["image"], other)  # applied to the new data


def test_bicubic_overshoot_is_clamped(bank: Path, image: np.ndarray) -> None:
    overshoot = image.astype(np.float32) / 255 * 1.004
    out = A.Compose([CrossDomainAnomaly(bank=bank, p=1.0)], seed=3)(image=overshoot)
    assert out["image"].max() <= 1.0 and out["mask"].any()


def test_readme_albumentations_snippet_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached_demo_bank: Path
) -> None:
    from conftest import run_readme

    namespace = run_readme("albumentations", tmp_path, monkeypatch)
    out = namespace["out"]
    assert out["image"].shape == (128, 128, 3) and out["reference"].shape == (128, 128, 3)
    assert A.load(str(tmp_path / "pipeline.json")).transforms[1].bank == str((tmp_path / "demo_bank").resolve())
