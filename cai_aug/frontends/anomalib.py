"""``CAIAnomalyGenerator``: a drop-in for anomalib's DRAEM anomaly generator.

anomalib 2.x DRAEM (``anomalib.models.image.draem.lightning_model.Draem``) makes its training anomalies
with ``self.augmenter = PerlinAnomalyGenerator(anomaly_source_path=..., blend_factor=beta)`` and calls
``augmented_image, anomaly_mask = self.augmenter(batch.image)``. This class has the same call contract
(``anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator.forward``):

- ``forward(img)``: ``img`` ``(C, H, W)`` or ``(B, C, H, W)``, float in [0, 1] (DRAEM uses no
  ``Normalize``); returns ``(augmented, mask)`` with ``augmented`` the shape/dtype of ``img`` and
  ``mask`` ``(1, H, W)`` or ``(B, 1, H, W)`` float in {0, 1} on the same device;
- ``probability``: chance that each image gets an anomaly (the others come back unchanged with an
  empty mask).

Swap it in with ``model.augmenter = CAIAnomalyGenerator(bank, probability=0.5)``. This module imports
neither anomalib nor torchvision (it is an ``nn.Module``, which is also what anomalib's
``v2.Transform`` is); its tests check a faithful copy of the contract, since anomalib cannot be
imported on the development machines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cai_aug.frontends.augment import BankLike, CAIAugment


class CAIAnomalyGenerator(CAIAugment):
    """CAI pseudo anomalies behind anomalib's ``PerlinAnomalyGenerator`` call contract.

    Args:
        bank: anomaly bank folder or ``AnomalyBank`` (``anomaly_source_path`` is accepted as an alias,
            as in anomalib).
        probability: chance of an anomaly per image (a keyed draw, see ``CAIAugment``).
        seed: seed of the keys ``(seed, rank, epoch, call, position)``; call ``set_epoch`` from a
            Lightning hook (``on_train_epoch_start``) to key anomalies by epoch.
        **cai_kwargs: engine and bank options of ``CAIAugment`` (``mode``, ``classes``, ``exclude`` ...).
    """

    def __init__(
        self,
        bank: BankLike | None = None,
        probability: float = 0.5,
        seed: int = 0,
        *,
        anomaly_source_path: str | os.PathLike | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        **cai_kwargs: Any,
    ) -> None:
        if bank is None and anomaly_source_path is None:
            raise ValueError("CAIAnomalyGenerator needs an anomaly bank: pass bank= (or anomaly_source_path=)")
        if bank is not None and anomaly_source_path is not None:
            raise ValueError("pass bank= or anomaly_source_path=, not both")
        bank = bank if bank is not None else Path(anomaly_source_path)  # type: ignore[arg-type]
        super().__init__(bank, p=probability, seed=seed, classes=classes, exclude=exclude, **cai_kwargs)

    @property
    def probability(self) -> float:
        return self.p

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(C, H, W)`` -> ``(C, H, W), (1, H, W)``; ``(B, C, H, W)`` -> ``(B, C, H, W), (B, 1, H, W)``."""
        augmented, masks, _ = super().forward(img)
        if not masks.dtype.is_floating_point:
            masks = masks.float()
        return augmented, masks
