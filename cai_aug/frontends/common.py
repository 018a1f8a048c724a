"""What every front end shares (no algorithm): the engine options, the key schedule, the ``p`` gate, the
injection into the drawn part of a batch and the mask rule. Each host op is a thin shell over these.

Engine options
    Every front end takes ``config=`` (a :class:`~cai_aug.engine.config.CAIConfig` or its ``to_dict()``),
    ``preset=`` (a named configuration) and any ``CAIConfig`` field as a keyword, combined by
    ``CAIConfig.build``: defaults and bounds live in ``CAIConfig`` alone. :class:`EngineHolder` checks
    them with the bank and ``device=`` at construction; the engine itself is built on first use, once
    per process for a given bank, configuration and device (:func:`get_engine`), so DataLoader workers
    and pipelines that name the same bank share one bank and one engine.

Keys
    A sample's anomaly is a pure function of its int64 key (see ``docs/design.md``). :class:`KeySchedule`
    makes the keys of the batch front ends: ``rng.sample_key(seed, name, rank, epoch, call, position)``
    for an ``int`` seed; for ``seed=None`` the host's randomness (Lightning's ``$PL_GLOBAL_SEED`` when set,
    else the global torch RNG); image keys given by the caller are hashed with the seed and the epoch.

Masks
    Where an anomaly is, a mask gets ``mask_value``: 1 (True) by default, whatever its dtype and whatever
    it holds already (pass ``mask_value=255`` for 0/255 masks); the rest of the mask is kept (union). No
    rule that reads the mask could hold in every host: an empty mask does not tell 0/1 from 0/255, and
    kornia hands its ops integer masks as floats.
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

BankLike = str | os.PathLike | AnomalyBank
ConfigLike = CAIConfig | Mapping[str, Any] | None

_BANKS: dict[tuple, AnomalyBank] = {}
_ENGINES: dict[tuple, CAI] = {}


def check_bank(bank: BankLike) -> BankLike:
    """``bank`` unchanged when it is an ``AnomalyBank`` or an existing folder (read later, once per process).

    Raises
    ------
    FileNotFoundError
        The folder does not exist or is not a folder.
    TypeError
        ``bank`` is neither a path nor an ``AnomalyBank``.
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


def _names(value: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """``classes``/``exclude`` as a hashable value (a str stays a str: ``exclude`` takes one name)."""
    return value if value is None or isinstance(value, str) else tuple(str(v) for v in value)


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
    """The absolute folder of a bank (how front ends serialise one).

    Raises
    ------
    ValueError
        An ``AnomalyBank`` that was not loaded from a folder.
    """
    if isinstance(bank, AnomalyBank):
        if bank.root is None:
            raise ValueError("this AnomalyBank was not loaded from a folder: pass its path to serialise it")
        return str(Path(bank.root).resolve())
    return str(Path(bank).expanduser().resolve())


def get_engine(
    bank: BankLike,
    config: CAIConfig,
    classes: Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    device: torch.device | None = None,
) -> CAI:
    """The ``CAI`` engine of ``bank`` and ``config`` on ``device``, built once per process.

    Front ends always pass keys, so the engine's own seed and call counter never matter and one engine
    per (bank, config, device) can be shared.
    """
    loaded = load_bank(bank, classes, exclude)
    config_key: Any = config
    try:
        hash(config)
    except TypeError:  # an unhashable callable foreground: key it by identity
        config_key = (config.replace(foreground="none"), id(config.foreground))
    key = (id(loaded), config_key, None if device is None else str(device))
    if key not in _ENGINES:
        _ENGINES[key] = CAI(loaded, config, seed=0, device=device)
    return _ENGINES[key]


def check_p(p: float, name: str = "p") -> float:
    """``p`` as a float in [0, 1], else a ValueError naming it."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {p}")
    return p


def current_rank() -> int:
    """This process's ``torch.distributed`` rank when initialised, else ``$RANK`` (torchrun), else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", "0"))


class EngineHolder:
    """The engine options of a front end: bank, configuration, bank filter and device, checked at once.

    Host ops inherit it (before their host base class) and call :meth:`hold_engine` in ``__init__``.
    ``device=None`` follows the host: the device of the images, or the device a module was moved to
    with ``.to()``, ``.cuda()`` or by its parent (Lightning).
    """

    def hold_engine(
        self,
        bank: BankLike,
        config: ConfigLike = None,
        preset: str | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Check and keep the engine options (``options``: ``CAIConfig`` fields on top of ``config``)."""
        self.bank = check_bank(bank)
        self.config = CAIConfig.build(config, preset=preset, **dict(options or {}))
        self.classes = classes
        self.exclude = exclude
        self.engine_device = check_device(device)

    @property
    def engine(self) -> CAI:
        """The shared engine (built on first use in each process)."""
        return get_engine(self.bank, self.config, self.classes, self.exclude, self.engine_device)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # nn.Module moves (.to, .cuda, a parent's move) reach here: the engine follows the module.
        moved = fn(torch.zeros(0)).device
        if self.engine_device is not None or moved.type != "cpu":
            self.engine_device = moved
        return super()._apply(fn, *args, **kwargs)  # type: ignore[misc]


class ProbabilityGate:
    """``p``, the chance of an anomaly per sample: a plain attribute, settable, checked on every set."""

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_p(value)


class KeySchedule:
    """Keys of the batch front ends: ``(seed, name, rank, epoch, call, position)`` or the host's randomness.

    Host ops inherit it and call :meth:`start_keys` in ``__init__``; ``set_epoch`` restarts the calls.
    """

    key_name = "CAIAugment"

    def start_keys(self, seed: int | None = 0, rank: int | None = None, per_rank: bool = True) -> None:
        """``seed=None`` follows the host (Lightning's global seed, else the global torch RNG)."""
        self.seed = 0 if seed is None else int(seed)
        self.follow_host_seed = seed is None
        self.rank = rank
        self.per_rank = per_rank
        self.epoch = 0
        self.calls = 0

    def resolved_rank(self) -> int:
        """The forced rank, else :func:`current_rank`."""
        return current_rank() if self.rank is None else int(self.rank)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: keys made here restart from call 0 of that epoch."""
        self.epoch = int(epoch)
        self.calls = 0

    def make_keys(self, batch: int) -> torch.Tensor:
        """Keys ``(batch,)`` int64 of the current call (on the CPU, so anomalies do not depend on the device)."""
        if self.follow_host_seed:
            lightning_seed = os.environ.get("PL_GLOBAL_SEED")
            if lightning_seed is None:
                return torch.randint(-(2**63), 2**63 - 1, (batch,), dtype=torch.int64)
            self.seed = int(lightning_seed)
        parts = (self.seed, self.key_name, self.resolved_rank(), self.epoch, self.calls)
        return torch.tensor([rng.sample_key(*parts, i) for i in range(batch)], dtype=torch.int64)

    def image_keys(self, keys: Sequence[int | str], epoch: int) -> torch.Tensor:
        """Keys ``(N,)`` of image keys (paths, indices) in ``epoch``, with the rank folded in if ``per_rank``.

        Rank 0 keeps the keys, so one process makes what offline synthesis makes.
        """
        made = rng.sample_keys(self.seed, list(keys), 0, epoch)
        rank = self.resolved_rank() if self.per_rank else 0
        return made if rank == 0 else rng.derive(made, 1_000_003, rank)

    def next_keys(self, batch: int, keys: torch.Tensor | Sequence[int | str] | None = None) -> torch.Tensor:
        """Keys ``(batch,)`` of this call, counted: made here, or the caller's (int64 keys or image keys).

        Raises
        ------
        ValueError
            Keys of the wrong dtype, shape or number.
        """
        if keys is None:
            made = self.make_keys(batch)
        elif isinstance(keys, torch.Tensor):
            if keys.dtype != torch.int64 or keys.shape != (batch,):
                raise ValueError(f"keys must be int64 of shape ({batch},), got {keys.dtype} {tuple(keys.shape)}")
            made = keys.cpu()
        elif len(keys) != batch:
            raise ValueError(f"got {len(keys)} keys for a batch of {batch}")
        else:
            made = self.image_keys(keys, self.epoch)
        self.calls += 1
        return made


def apply_draws(keys: torch.Tensor, p: float) -> torch.Tensor:
    """Whether each sample gets an anomaly: ``(B,)`` bool, keyed (stream ``APPLY``), exact for p in {0, 1}."""
    if p >= 1:
        return torch.ones(keys.shape[0], dtype=torch.bool)
    if p <= 0:
        return torch.zeros(keys.shape[0], dtype=torch.bool)
    return rng.uniform(keys.cpu(), rng.Stream.APPLY)[:, 0] < p


def inject(
    engine: CAI, images: torch.Tensor, keys: torch.Tensor, chosen: torch.Tensor, **engine_kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anomalies for the ``chosen`` samples of a checked batch; the others come back unchanged.

    Parameters
    ----------
    engine : CAI
        The engine.
    images : torch.Tensor
        ``(B, C, H, W)`` float in [0, 1] (already checked by :func:`cai_aug.io.coerce.as_float_batch`).
    keys : torch.Tensor
        ``(B,)`` int64 keys.
    chosen : torch.Tensor
        ``(B,)`` bool, the samples to inject into.
    **engine_kwargs
        Passed to the engine call (``image_ids``, ``foregrounds``).

    Returns
    -------
    images, anomaly, labels : torch.Tensor
        ``(B, C, H, W)`` like ``images``, ``(B, 1, H, W)`` bool and ``(B,)`` float32, on the images' device.
    """
    out = images.clone()
    anomaly = torch.zeros((images.shape[0], 1, *images.shape[-2:]), dtype=torch.bool, device=images.device)
    labels = torch.zeros(images.shape[0], dtype=torch.float32, device=images.device)
    chosen = chosen.cpu()
    if chosen.any():
        index = chosen.nonzero()[:, 0].to(images.device)
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            result = engine.run(images[index], keys=keys.cpu()[chosen], **engine_kwargs)
        out[index] = result.images.to(out.dtype)
        anomaly[index] = result.masks > 0.5
        labels[index] = result.labels.float()
    return out, anomaly, labels


def merge_mask(mask: torch.Tensor, anomaly: torch.Tensor, mask_value: float | None = None) -> torch.Tensor:
    """``mask`` with ``anomaly`` merged in (union), same shape, dtype and device (see the mask rule above).

    Parameters
    ----------
    mask : torch.Tensor
        Any shape ending in ``(H, W)``, any dtype.
    anomaly : torch.Tensor
        Bool, broadcastable to ``mask``.
    mask_value : float or None
        The value to write; ``None``: 1.

    Raises
    ------
    ValueError
        The mask and the image differ in size.
    """
    if tuple(mask.shape[-2:]) != tuple(anomaly.shape[-2:]):
        (h, w), (ih, iw) = mask.shape[-2:], anomaly.shape[-2:]
        raise ValueError(f"the mask is {h}x{w} but the image {ih}x{iw} (HxW): transform both together")
    value = torch.tensor(1 if mask_value is None else mask_value, device=mask.device).to(mask.dtype)
    return torch.where(anomaly.to(mask.device), torch.maximum(mask, value), mask)
