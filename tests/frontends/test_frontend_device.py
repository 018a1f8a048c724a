"""``device=`` is checked at construction, in the engine and in every front end that takes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_frontend_augment import write_tiny_bank

from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.frontends.anomalib import CAIAnomalyGenerator
from cai_aug.frontends.augment import CAIAugment
from cai_aug.frontends.dataset import CAIDataset
from cai_aug.frontends.kornia import RandomCrossDomainAnomaly as KorniaOp
from cai_aug.frontends.torchvision import RandomCrossDomainAnomaly as TorchvisionOp


def _draem(bank: Path, device: str) -> object:
    pytest.importorskip("anomalib", reason="CAIDraem needs anomalib")
    from cai_aug.anomalib import CAIDraem

    return CAIDraem(bank, device=device, evaluator=False, visualizer=False)


BAD = ["gpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


BUILDERS: dict[str, Callable[[Path, str], object]] = {
    "CAI": lambda bank, device: CAI(AnomalyBank.from_folder(bank), device=device),
    "CAIAugment": lambda bank, device: CAIAugment(bank, device=device),
    "kornia": lambda bank, device: KorniaOp(bank, device=device),
    "torchvision": lambda bank, device: TorchvisionOp(bank, device=device),
    "CAIAnomalyGenerator": lambda bank, device: CAIAnomalyGenerator(bank, device=device),
    "CAIDataset": lambda bank, device: CAIDataset([torch.zeros(3, 32, 32)], bank, device=device),
    "CAIDraem": lambda bank, device: _draem(bank, device=device),
}


@pytest.mark.parametrize("device", BAD)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_bad_device_fails_at_construction(bank: Path, name: str, device: str) -> None:
    with pytest.raises(ValueError, match="device"):
        BUILDERS[name](bank, device)
