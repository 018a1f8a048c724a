"""Every front end is the engine with the same options, and every host writes masks by the same rule."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_frontend_augment import write_tiny_bank

from cai_aug.engine.config import CAIConfig
from cai_aug.frontends.anomalib import CAIAnomalyGenerator
from cai_aug.frontends.augment import CAIAugment
from cai_aug.frontends.dataset import CAIDataset
from cai_aug.io.demo_data import demo_images

A = pytest.importorskip("albumentations", reason="needs albumentations")
K = pytest.importorskip("kornia.augmentation", reason="needs kornia")
tv_tensors = pytest.importorskip("torchvision.tv_tensors", reason="needs torchvision")

from cai_aug.frontends.albumentations import CrossDomainAnomaly  # noqa: E402
from cai_aug.frontends.kornia import RandomCrossDomainAnomaly as KorniaOp  # noqa: E402
from cai_aug.frontends.torchvision import RandomCrossDomainAnomaly as TorchvisionOp  # noqa: E402

SIZE = 48
# A valid value other than the default for every CAIConfig field (a new field fails the first test).
OTHER = {
    "mode": "normal",
    "quotas": (1.0, 2.0, 3.0),
    "foreground": "none",
    "threshold": 0.1,
    "margin": 4,
    "median": 5,
    "min_mask_pixels": 4,
    "allow_upscale": False,
    "ratio_decimals": None,
    "max_attempts": 3,
    "anomalies": 2,
    "overlap": "apart",
    "use_poisson": False,
    "use_stm": False,
    "use_ils": False,
    "atol": None,
    "grey_injection": False,
    "paste_weight": 0.5,
    "rtol": 1e-3,
    "max_iter": 50,
    "backend": "torch",
    "mask_rule": "majority",
}


def _draem(bank: Path, **options: object) -> object:
    pytest.importorskip("anomalib", reason="CAIDraem needs anomalib")
    from cai_aug.anomalib import CAIDraem

    return CAIDraem(bank, evaluator=False, visualizer=False, **options)


def _mapper(bank: Path, **options: object) -> object:
    pytest.importorskip("ray", reason="CAIMapper needs Ray")
    from cai_aug.frontends.ray import CAIMapper

    return CAIMapper(bank, **options)


FRONT_ENDS: dict[str, Callable[..., object]] = {
    "CAIAugment": lambda bank, **o: CAIAugment(bank, **o),
    "CAIAnomalyGenerator": lambda bank, **o: CAIAnomalyGenerator(bank, **o),
    "CAIDataset": lambda bank, **o: CAIDataset(list(demo_images(2, SIZE)), bank, **o),
    "albumentations": lambda bank, **o: CrossDomainAnomaly(bank, **o),
    "kornia": lambda bank, **o: KorniaOp(bank, **o),
    "torchvision": lambda bank, **o: TorchvisionOp(bank, **o),
    "CAIDraem": _draem,
    "CAIMapper": _mapper,
}


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


def _config(front_end: object) -> CAIConfig:
    if hasattr(front_end, "augmenter"):
        return front_end.augmenter.config
    return front_end.cai.config if hasattr(front_end, "cai") else front_end.config


def _engine(front_end: object) -> object:
    if hasattr(front_end, "augmenter"):
        return front_end.augmenter.engine
    return front_end.cai if hasattr(front_end, "cai") else front_end.engine


def test_every_field_has_another_value() -> None:
    assert set(OTHER) == set(CAIConfig.fields())
    assert all(getattr(CAIConfig(), name) != value for name, value in OTHER.items())


@pytest.mark.parametrize("name", sorted(FRONT_ENDS))
def test_each_field_reaches_the_engine(bank: Path, name: str) -> None:
    for field, value in OTHER.items():
        front_end = FRONT_ENDS[name](bank, **{field: value})
        expected = CAIConfig().replace(**{field: value})
        assert _config(front_end) == expected, field
        assert _engine(front_end).config == expected, field


@pytest.mark.parametrize("name", sorted(FRONT_ENDS))
def test_defaults_preset_and_config(bank: Path, name: str) -> None:
    build = FRONT_ENDS[name]
    assert _config(build(bank)) == CAIConfig()  # the library's defaults, from CAIConfig alone
    assert _config(build(bank, preset="paper")) == CAIConfig.preset("paper")
    given = CAIConfig(mode="mixed", anomalies=1)
    assert _config(build(bank, config=given, margin=2)) == given.replace(margin=2)
    assert _config(build(bank, config=given.to_dict())) == given
    with pytest.raises(ValueError, match="threshold"):
        build(bank, threshold=3.0)
    with pytest.raises(TypeError, match="unknown engine option"):
        build(bank, modes="normal")


def test_caidraem_takes_draems_beta(bank: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _draem(bank, beta=(0.1, 1.0))
    assert model.augmenter.config == CAIConfig()


def _albumentations(bank: Path, image: torch.Tensor, mask: np.ndarray, **kw: object) -> np.ndarray:
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return A.Compose([CrossDomainAnomaly(bank, p=1.0, **kw)], seed=3)(image=array, mask=mask)["mask"]


def _kornia(bank: Path, image: torch.Tensor, mask: np.ndarray, **kw: object) -> np.ndarray:
    op = K.AugmentationSequential(KorniaOp(bank, p=1.0, seed=0, **kw), data_keys=["input", "mask"])
    return op(image[None], torch.from_numpy(mask)[None, None])[1][0, 0].numpy()


def _torchvision(bank: Path, image: torch.Tensor, mask: np.ndarray, **kw: object) -> np.ndarray:
    return TorchvisionOp(bank, p=1.0, **kw)(image, tv_tensors.Mask(torch.from_numpy(mask)))[1].numpy()


HOSTS = {"albumentations": _albumentations, "kornia": _kornia, "torchvision": _torchvision}


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("prefilled", [0, 1, 255], ids=["empty", "prefilled-1", "prefilled-255"])
def test_one_mask_rule_in_every_host(bank: Path, host: str, dtype: type, prefilled: int) -> None:
    """1 where the anomaly is, or ``mask_value``, whatever the mask's dtype or what it held before."""
    image = demo_images(1, SIZE, seed=4)[0]
    mask = np.zeros((SIZE, SIZE), dtype=dtype)
    mask[:4, :4] = prefilled
    for mask_value, written in ((None, 1), (255, 255)):
        out = HOSTS[host](bank, image, mask, mask_value=mask_value)
        written_now = out != mask
        assert out.dtype == dtype and written_now.sum() > 16 and (out[written_now] == written).all()
        assert (out[:4, :4] >= prefilled).all()  # a union: what the mask held stays
        assert set(np.unique(out).tolist()) <= {0, written, prefilled}


def test_albumentations_output_keys_never_depend_on_the_draw(bank: Path) -> None:
    image = (demo_images(1, SIZE, seed=5)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    pipeline = A.Compose([CrossDomainAnomaly(bank, p=0.5)], seed=0)
    applied = []
    for _ in range(8):
        out = pipeline(image=image)
        assert set(out) == {"image", "mask"} and out["mask"].shape == (SIZE, SIZE)
        applied.append(bool(pipeline.transforms[0].get_applied_params()))
    assert any(applied) and not all(applied)


@pytest.mark.parametrize("name", ["CAIAugment", "CAIAnomalyGenerator", "kornia", "torchvision"])
def test_modules_follow_the_device_they_are_moved_to(bank: Path, name: str) -> None:
    op = FRONT_ENDS[name](bank)
    assert op.engine_device is None  # the images' device
    torch.nn.Sequential(op).to("meta")  # a parent's move, as Lightning's, reaches the op
    assert op.engine_device == torch.device("meta")
    op.to_empty(device="cpu")
    assert op.engine_device == torch.device("cpu")
