"""A front end checks its batch once: the engine behind it does not read the whole batch again."""

from __future__ import annotations

import pytest
import torch
from test_frontend_augment import write_tiny_bank

import cai_aug.io.coerce as coerce
from cai_aug.frontends.augment import CAIAugment
from cai_aug.io.demo_data import demo_images


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    check = coerce.unit_range

    def counting(*args, **kwargs):
        calls.append(1)
        return check(*args, **kwargs)

    monkeypatch.setattr(coerce, "unit_range", counting)
    return calls


def test_the_batch_transform_reads_its_batch_once(tmp_path, counted) -> None:
    augment = CAIAugment(write_tiny_bank(tmp_path), p=1.0, seed=0, anomalies=1)
    images = torch.stack(list(demo_images(2, 48)))
    _, _, labels = augment(images)
    assert labels.shape == (2,)
    assert len(counted) == 1


def test_the_engine_called_directly_still_checks_its_input(tmp_path) -> None:
    augment = CAIAugment(write_tiny_bank(tmp_path), p=1.0, seed=0)
    with pytest.raises(ValueError, match="0-255"):
        augment.engine(torch.full((1, 3, 48, 48), 200.0))
