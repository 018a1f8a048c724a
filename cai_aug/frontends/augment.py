"""``CAIAugment``: CAI as a batch transform for collated batches, on the GPU or the CPU.

Keys (see ``docs/design.md``): a sample's anomaly is a pure function of its int64 key. Where the
caller passes no keys, the key of position ``i`` in the ``n``-th call since the last ``set_epoch`` is
``rng.sample_key(seed, "CAIAugment", rank, epoch, n, i)``; pass ``keys`` (int64 ``(B,)`` or str/int
image keys) to make anomalies a function of the images instead.

The helpers shared by every front end live in :mod:`cai_aug.frontends.common`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cai_aug.engine import rng
from cai_aug.engine.cai import CAI
from cai_aug.engine.config import CAIConfig, check_device
from cai_aug.frontends.common import (
    BankLike,
    apply_draws,
    check_bank,
    check_p,
    current_rank,
    get_engine,
    rank_keys,
)
from cai_aug.io.coerce import as_float_batch, restore_layout


class CAIAugment(nn.Module):
    """Pseudo anomalies for a collated batch: ``(images, masks, labels) = augment(images)``.

    Args:
        bank: anomaly bank folder (loaded once per process) or an ``AnomalyBank``.
        p: probability that a sample gets an anomaly (a keyed draw per sample, not a global RNG).
        seed: seed of the keys when the caller passes none.
        classes, exclude: restrict the bank (see ``AnomalyBank.from_folder``).
        per_rank: fold the ``torch.distributed`` rank into keys given as image keys, so ranks that see
            the same images still get different anomalies (keys made here always include the rank).
        rank: force the rank (default: ``torch.distributed`` when initialised, else ``$RANK``, else 0).
        config: the engine options, a :class:`~cai_aug.engine.config.CAIConfig` (or its ``to_dict()``).
        device: the engine's compute device (default: the images' device).
        **cai_kwargs: engine options on top of ``config`` (``mode``, ``quotas``, ``foreground``,
            ``threshold``, ``margin`` ...), see ``CAIConfig``.

    The bank folder and every engine option are checked here, at construction; the bank is read on
    first use, once per process.

    ``forward(images, keys=None)``: images ``(B, C, H, W)`` (or ``(C, H, W)``), C = 1 or 3, float in
    [0, 1] of any float dtype or uint8, any memory format, any device. Returns images of the same
    shape, dtype and memory format, masks ``(B, 1, H, W)`` in {0, 1} (float, the input dtype for float
    input, float32 for uint8) and labels ``(B,)`` float32 in {0, 1}. Samples not drawn by ``p`` come
    back unchanged with an empty mask and label 0. The engine computes in float32 without autograd.
    """

    def __init__(
        self,
        bank: BankLike,
        p: float = 0.5,
        seed: int = 0,
        *,
        config: CAIConfig | Mapping[str, Any] | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        per_rank: bool = True,
        rank: int | None = None,
        device: torch.device | str | None = None,
        **cai_kwargs: Any,
    ) -> None:
        super().__init__()
        self.bank = check_bank(bank)
        self.p = check_p(p)
        self.seed = int(seed)
        self.config = CAIConfig.build(config, **cai_kwargs)
        self.classes = classes
        self.exclude = exclude
        self.per_rank = per_rank
        self.rank = rank
        self.device = check_device(device)
        self.epoch = 0
        self.calls = 0

    @property
    def engine(self) -> CAI:
        return get_engine(self.bank, self.classes, self.exclude, self.config, device=self.device)

    def resolved_rank(self) -> int:
        return current_rank() if self.rank is None else int(self.rank)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: keys made here restart from call 0 of that epoch."""
        self.epoch = int(epoch)
        self.calls = 0

    def make_keys(self, batch: int) -> torch.Tensor:
        """Keys ``(batch,)`` of the next call: ``(seed, "CAIAugment", rank, epoch, call, position)``."""
        rank = self.resolved_rank()
        keys = [rng.sample_key(self.seed, "CAIAugment", rank, self.epoch, self.calls, i) for i in range(batch)]
        return torch.tensor(keys, dtype=torch.int64)

    def _resolve_keys(self, keys: torch.Tensor | Sequence[int | str] | None, batch: int) -> torch.Tensor:
        if keys is None:
            return self.make_keys(batch)
        if isinstance(keys, torch.Tensor):
            if keys.dtype != torch.int64 or keys.shape != (batch,):
                raise ValueError(f"keys must be int64 of shape ({batch},), got {keys.dtype} {tuple(keys.shape)}")
            return keys.cpu()
        if len(keys) != batch:
            raise ValueError(f"got {len(keys)} keys for a batch of {batch}")
        made = rng.sample_keys(self.seed, list(keys), 0, self.epoch)
        return rank_keys(made, self.resolved_rank()) if self.per_rank else made

    def forward(
        self, images: torch.Tensor, keys: torch.Tensor | Sequence[int | str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch_in, layout = as_float_batch(images)
        batch = batch_in.shape[0]
        keys = self._resolve_keys(keys, batch)
        self.calls += 1
        chosen = apply_draws(keys, self.p)
        out = batch_in.clone()
        masks = torch.zeros((batch, 1, *batch_in.shape[-2:]), dtype=torch.float32, device=batch_in.device)
        labels = torch.zeros(batch, dtype=torch.float32, device=batch_in.device)
        if chosen.any():
            index = chosen.nonzero()[:, 0].to(batch_in.device)
            with torch.no_grad(), torch.autocast(batch_in.device.type, enabled=False):
                result = self.engine(batch_in[index], keys=keys[chosen])
            out[index] = result.images.to(out.dtype)
            masks[index] = result.masks.to(masks.dtype)
            labels[index] = result.labels.to(labels.dtype)
        images_out = restore_layout(out, layout)
        if layout.dtype.is_floating_point:
            masks = masks.to(layout.dtype)
        return images_out, (masks if layout.batched else masks[0]), (labels if layout.batched else labels[0])
