"""``CAIAugment``: CAI as a batch transform for collated batches, on the GPU or the CPU.

Also holds the small helpers every front end shares (no algorithm): resolving a bank given by path
once per process, building the engine, the ``torch.distributed`` rank, and keyed "apply or not" draws.

Keys (see ``docs/design.md``): a sample's anomaly is a pure function of its int64 key. Where the
caller passes no keys, the key of position ``i`` in the ``n``-th call since the last ``set_epoch`` is
``rng.sample_key(seed, "CAIAugment", rank, epoch, n, i)``; pass ``keys`` (int64 ``(B,)`` or str/int
image keys) to make anomalies a function of the images instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cai_aug.engine import rng
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.io.coerce import as_float_batch, restore_layout

BankLike = str | os.PathLike | AnomalyBank

# One bank and one engine per process and configuration: DataLoader workers, albumentations ops and
# modules that name the same bank share them, so sources are read from disk once per process.
_BANKS: dict[tuple, AnomalyBank] = {}
_ENGINES: dict[tuple, CAI] = {}


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, torch.device):
        return str(value)
    return ("id", id(value))


def load_bank(
    bank: BankLike, classes: Sequence[str] | None = None, exclude: str | Sequence[str] | None = None
) -> AnomalyBank:
    """The bank at ``bank`` (a folder), loaded once per process; an ``AnomalyBank`` is returned as is."""
    if isinstance(bank, AnomalyBank):
        return bank
    key = (str(Path(bank).expanduser().resolve()), _frozen(classes), _frozen(exclude))
    if key not in _BANKS:
        _BANKS[key] = AnomalyBank.from_folder(Path(key[0]), classes=classes, exclude=exclude)
    return _BANKS[key]


def bank_path(bank: BankLike) -> str:
    """The folder a bank was loaded from (how front ends serialise a bank)."""
    if isinstance(bank, AnomalyBank):
        if bank.root is None:
            raise ValueError("this AnomalyBank was not loaded from a folder: pass its path to serialise it")
        return str(bank.root)
    return str(Path(bank).expanduser())


def get_engine(
    bank: BankLike,
    classes: Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    **cai_kwargs: Any,
) -> CAI:
    """A ``CAI`` engine for ``bank`` and ``cai_kwargs``, built once per process and configuration.

    Front ends always pass keys, so the engine's own seed and call counter never matter and one engine
    can be shared.
    """
    loaded = load_bank(bank, classes, exclude)
    key = (id(loaded), tuple(sorted((name, _frozen(value)) for name, value in cai_kwargs.items())))
    if key not in _ENGINES:
        _ENGINES[key] = CAI(loaded, **cai_kwargs)
    return _ENGINES[key]


def current_rank() -> int:
    """This process's ``torch.distributed`` rank when initialised, else ``$RANK`` (torchrun), else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", "0"))


def rank_keys(keys: torch.Tensor, rank: int) -> torch.Tensor:
    """Fold ``rank`` into keys ``(B,)``; rank 0 keeps them, so one process matches offline synthesis."""
    return keys if rank == 0 else rng.derive(keys, 1_000_003, rank)


def apply_draws(keys: torch.Tensor, p: float) -> torch.Tensor:
    """Whether each sample gets an anomaly: ``(B,)`` bool, keyed (stream ``APPLY``), exact for p in {0, 1}."""
    if p >= 1:
        return torch.ones(keys.shape[0], dtype=torch.bool)
    if p <= 0:
        return torch.zeros(keys.shape[0], dtype=torch.bool)
    return rng.uniform(keys.cpu(), rng.Stream.APPLY)[:, 0] < p


def check_p(p: float, name: str = "p") -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {p}")
    return p


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
        **cai_kwargs: engine options (``mode``, ``quotas``, ``foreground``, ``threshold``, ``margin``,
            ``device`` ...), see ``cai_aug.CAI``.

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
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        per_rank: bool = True,
        rank: int | None = None,
        **cai_kwargs: Any,
    ) -> None:
        super().__init__()
        self.bank = bank
        self.p = check_p(p)
        self.seed = int(seed)
        self.classes = classes
        self.exclude = exclude
        self.per_rank = per_rank
        self.rank = rank
        self.cai_kwargs = cai_kwargs
        self.epoch = 0
        self.calls = 0

    @property
    def engine(self) -> CAI:
        return get_engine(self.bank, self.classes, self.exclude, **self.cai_kwargs)

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
