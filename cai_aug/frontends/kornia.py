"""``RandomCrossDomainAnomaly``: CAI as a kornia intensity augmentation.

Runs inside ``kornia.augmentation.AugmentationSequential(..., data_keys=["input", "mask"])`` on batches
on any device. Parameters are generated per batch (one int64 engine key per sample, plus kornia's
``batch_prob`` gate), so ``aug._params`` replays a call and ``same_on_batch=True`` gives every sample the
same key. The anomaly depends on the image, so the mask is produced while the image is transformed and
merged (union) into the ``mask`` that follows it in the same call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from kornia.augmentation import IntensityAugmentationBase2D

from cai_aug.engine import rng
from cai_aug.frontends.common import BankLike, apply_draws, check_p, current_rank, get_engine, mask_value_for
from cai_aug.io.coerce import unit_range


class RandomCrossDomainAnomaly(IntensityAugmentationBase2D):
    """Inject a real defect of another domain (CAI) into each image; its mask goes into ``mask``.

    Parameters
    ----------
    bank : path or AnomalyBank
        Anomaly bank folder (loaded once per process) or an ``AnomalyBank``.
    p : float
        Probability per sample (kornia's element-wise gate).
    p_batch : float
        Probability for the whole batch (kornia's batch gate).
    same_on_batch : bool
        One key (hence one source, scale and placement rule) for the whole batch.
    seed : int or None
        ``None`` (default): kornia's convention, keys and gates drawn from the global torch RNG, so
        ``torch.manual_seed`` reproduces a run. An ``int``: our keyed randomness, keys
        ``(seed, rank, epoch, call, position)`` and keyed gates, independent of the global RNG (call
        ``set_epoch`` each epoch).
    mask_value : float or None
        Value written into the mask where the anomaly is; ``None`` infers it (255 for a mask already
        holding values above 1, else 1).
    keepdim : bool
        As for every kornia augmentation.
    classes, exclude : optional
        Restrict the bank (see ``AnomalyBank.from_folder``).
    **cai_kwargs
        Engine options (``mode``, ``quotas``, ``foreground``, ``threshold``, ``margin``, ``device`` ...).

    Notes
    -----
    Images ``(B, C, H, W)``, C = 1 or 3, float in [0, 1] (up to 0.05 outside is clamped; normalised
    input raises a ``ValueError``: put it before ``Normalize``). Not differentiable: the engine runs
    without autograd.
    """

    def __init__(
        self,
        bank: BankLike | str | os.PathLike,
        p: float = 0.5,
        p_batch: float = 1.0,
        same_on_batch: bool = False,
        seed: int | None = None,
        *,
        mask_value: float | None = None,
        keepdim: bool = False,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        **cai_kwargs: Any,
    ) -> None:
        super().__init__(
            p=check_p(p), p_batch=check_p(p_batch, "p_batch"), same_on_batch=same_on_batch, keepdim=keepdim
        )
        self.bank = bank
        self.seed = None if seed is None else int(seed)
        self.mask_value = mask_value
        self.classes = classes
        self.exclude = exclude
        self.cai_kwargs = cai_kwargs
        get_engine(bank, classes, exclude, **cai_kwargs)  # a bad bank or option fails here, not mid-training
        self.epoch = 0
        self.calls = 0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def engine(self) -> Any:
        return get_engine(self.bank, self.classes, self.exclude, **self.cai_kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: keyed draws restart from call 0 of that epoch."""
        self.epoch = int(epoch)
        self.calls = 0

    def _keys(self, batch: int) -> torch.Tensor:
        count = 1 if self.same_on_batch else batch
        if self.seed is None:
            keys = torch.randint(-(2**63), 2**63 - 1, (count,), dtype=torch.int64)
        else:
            parts = (self.seed, "RandomCrossDomainAnomaly", current_rank(), self.epoch, self.calls)
            keys = torch.tensor([rng.sample_key(*parts, i) for i in range(count)], dtype=torch.int64)
            self.calls += 1
        return keys.expand(batch).clone()

    def forward_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        params = super().forward_parameters(batch_shape)
        keys = self._keys(batch_shape[0])
        params["key"] = keys
        if self.seed is not None:
            # Keyed gates too, so a seeded op is reproducible whatever the global RNG did.
            gate = apply_draws(keys, self.p) & apply_draws(rng.derive(keys[:1], 1).expand(keys.shape[0]), self.p_batch)
            params["batch_prob"] = gate.to(device=params["batch_prob"].device, dtype=params["batch_prob"].dtype)
        return params

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        images = unit_range(input, "images")
        chosen = torch.atleast_1d(params["batch_prob"] > 0.5).cpu()
        if chosen.shape[0] != images.shape[0]:
            chosen = chosen.expand(images.shape[0])
        out = images.clone()
        anomaly = torch.zeros((images.shape[0], 1, *images.shape[-2:]), dtype=torch.bool, device=images.device)
        if chosen.any():
            index = chosen.nonzero()[:, 0].to(images.device)
            with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
                result = self.engine(images[index], keys=params["key"].cpu()[chosen])
            out[index] = result.images.to(out.dtype)
            anomaly[index] = result.masks > 0.5
        # The mask of this call follows its image in AugmentationSequential: keep the anomaly for it.
        self._last = (params["key"], anomaly)
        return out

    def apply_transform_mask(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._last is None or not torch.equal(self._last[0], params["key"]):
            raise ValueError(
                "RandomCrossDomainAnomaly makes the mask from the image: pass the image ('input') before the "
                "mask in the same call (data_keys=['input', 'mask'])"
            )
        anomaly = self._last[1].to(input.device)
        if tuple(anomaly.shape[-2:]) != tuple(input.shape[-2:]):
            raise ValueError(f"the mask is {tuple(input.shape[-2:])} but the image {tuple(anomaly.shape[-2:])}")
        value = torch.tensor(mask_value_for(input, self.mask_value), dtype=input.dtype, device=input.device)
        return torch.where(anomaly.expand_as(input), torch.maximum(input, value), input)
