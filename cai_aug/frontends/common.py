"""What every front end shares (no algorithm): banks and engines once per process, ranks, keyed draws.

A front end takes a bank (a folder or an ``AnomalyBank``) and a :class:`~cai_aug.engine.config.CAIConfig`
(or engine keywords), checks both at construction with :func:`check_bank` and ``CAIConfig``, and asks
:func:`get_engine` for the engine on first use, so DataLoader workers, Albumentations ops and modules
that name the same bank and configuration share one bank and one engine per process (sources are read
from disk once per process).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cai_aug.engine import rng
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.engine.config import CAIConfig, check_device

__all__ = [
    "BankLike",
    "apply_draws",
    "bank_path",
    "check_bank",
    "check_p",
    "current_rank",
    "get_engine",
    "load_bank",
    "rank_keys",
]

BankLike = str | os.PathLike | AnomalyBank

_BANKS: dict[tuple, AnomalyBank] = {}
_ENGINES: dict[tuple, CAI] = {}


def _names(value: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """``classes``/``exclude`` as a hashable value (a str stays a str: ``exclude`` takes one name)."""
    if value is None or isinstance(value, str):
        return value
    return tuple(str(v) for v in value)


def check_bank(bank: BankLike) -> BankLike:
    """Fail now, not inside a worker, when ``bank`` is neither an ``AnomalyBank`` nor an existing folder.

    Returns ``bank`` unchanged; the folder itself is read lazily by :func:`load_bank`.

    Raises:
        FileNotFoundError: the folder does not exist. TypeError: ``bank`` is not a path or a bank.
    """
    if isinstance(bank, AnomalyBank):
        return bank
    if not isinstance(bank, (str, os.PathLike)):
        raise TypeError(f"bank must be an anomaly bank folder or an AnomalyBank, got {type(bank).__name__}")
    path = Path(bank).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"anomaly bank folder {str(path)!r} {what}")
    return bank


def load_bank(
    bank: BankLike, classes: Sequence[str] | None = None, exclude: str | Sequence[str] | None = None
) -> AnomalyBank:
    """The bank at ``bank`` (a folder), loaded once per process; an ``AnomalyBank`` is returned as is."""
    if isinstance(bank, AnomalyBank):
        return bank
    key = (str(Path(bank).expanduser().resolve()), _names(classes), _names(exclude))
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


def _config_key(config: CAIConfig) -> Any:
    try:
        hash(config)
    except TypeError:  # an unhashable callable foreground: key it by identity
        return (config.replace(foreground="none"), "foreground", id(config.foreground))
    return config


def get_engine(
    bank: BankLike,
    classes: Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    config: CAIConfig | Mapping[str, Any] | None = None,
    *,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    **overrides: Any,
) -> CAI:
    """A ``CAI`` engine for ``bank`` and ``config`` (with ``overrides``), built once per process.

    Front ends always pass keys, so the engine's own seed and call counter never matter and one engine
    per (bank, config, device) can be shared.
    """
    config = CAIConfig.build(config, **overrides)
    device = check_device(device)
    loaded = load_bank(bank, classes, exclude)
    key = (id(loaded), _config_key(config), None if device is None else str(torch.device(device)), seed)
    if key not in _ENGINES:
        _ENGINES[key] = CAI(loaded, config, seed=seed, device=device)
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
    """``p`` as a float in [0, 1], else a ValueError naming it."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {p}")
    return p


def mask_value_for(mask: Any, mask_value: float | None) -> float:
    """The value to write where an anomaly is: ``mask_value`` if given, 255 for a mask already in 0/255, else 1.

    A mask with no positive pixel yet cannot tell 0/1 from 0/255: it gets 1 unless ``mask_value`` says.
    """
    if mask_value is not None:
        return float(mask_value)
    size = mask.numel() if isinstance(mask, torch.Tensor) else int(getattr(mask, "size", 0))
    return 255.0 if size and float(mask.max()) > 1 else 1.0
