"""``CAIAugment``: CAI as a batch transform for collated batches, on the GPU or the CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cai_aug.frontends.common import (
    BankLike,
    ConfigLike,
    EngineHolder,
    KeySchedule,
    ProbabilityGate,
    apply_draws,
    inject,
)
from cai_aug.io.coerce import as_float_batch, restore_layout


class CAIAugment(EngineHolder, KeySchedule, ProbabilityGate, nn.Module):
    """Pseudo anomalies for a collated batch: ``(images, masks, labels) = augment(images)``.

    Parameters
    ----------
    bank : path or AnomalyBank
        Anomaly bank folder (loaded once per process) or an ``AnomalyBank``.
    p : float
        Probability that a sample gets an anomaly (a keyed draw per sample, not a global RNG); a plain
        attribute, settable after construction.
    seed : int or None
        Seed of the keys when the caller passes none: ``(seed, "CAIAugment", rank, epoch, call,
        position)``. ``None`` follows the host (Lightning's ``$PL_GLOBAL_SEED``, else ``torch.manual_seed``).
    config, preset, **options
        The engine options: a ``CAIConfig`` (or its ``to_dict()``) or a preset name, and any ``CAIConfig``
        field on top (``mode``, ``quotas``, ``anomalies`` ...).
    classes, exclude : optional
        Restrict the bank (see ``AnomalyBank.from_folder``).
    per_rank : bool
        Fold the ``torch.distributed`` rank into keys given as image keys, so ranks that see the same
        images still get different anomalies (keys made here always include the rank).
    rank : int, optional
        Force the rank (default: ``torch.distributed`` when initialised, else ``$RANK``, else 0).
    device : str or torch.device, optional
        The engine's compute device (default: the images' device, or where ``.to()`` moved the module).

    Notes
    -----
    The bank folder, every engine option and the device are checked at construction; the bank is read
    on first use, once per process.

    ``forward(images, keys=None)``: images ``(B, C, H, W)`` (or ``(C, H, W)``), C = 1 or 3, float in
    [0, 1] of any float dtype or uint8, any memory format, any device; ``keys`` int64 ``(B,)`` or image
    keys (str/int, hashed with the seed and the epoch). Returns images of the same shape, dtype and
    memory format, masks ``(B, 1, H, W)`` in {0, 1} (the input dtype for float input, float32 for
    uint8) and labels ``(B,)`` float32 in {0, 1}. Samples not drawn by ``p`` come back unchanged with an
    empty mask and label 0. The engine computes in float32 without autograd.
    """

    def __init__(
        self,
        bank: BankLike,
        p: float = 0.5,
        seed: int | None = 0,
        *,
        config: ConfigLike = None,
        preset: str | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        per_rank: bool = True,
        rank: int | None = None,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.hold_engine(bank, config, preset, classes, exclude, device, options)
        self.start_keys(seed, rank, per_rank)
        self.p = p

    def forward(
        self, images: torch.Tensor, keys: torch.Tensor | Sequence[int | str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, layout = as_float_batch(images)
        keys = self.next_keys(batch.shape[0], keys)
        out, anomaly, labels = inject(self.engine, batch, keys, apply_draws(keys, self.p))
        masks = anomaly.to(layout.dtype if layout.dtype.is_floating_point else torch.float32)
        if not layout.batched:
            return restore_layout(out, layout), masks[0], labels[0]
        return restore_layout(out, layout), masks, labels
