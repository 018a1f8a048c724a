"""``RandomCrossDomainAnomaly``: CAI as a kornia intensity augmentation.

Runs inside ``kornia.augmentation.AugmentationSequential(..., data_keys=["input", "mask"])`` on batches
on any device. Parameters are generated per batch (one int64 engine key per sample, plus kornia's
``batch_prob`` gate), so ``aug._params`` replays a call and ``same_on_batch=True`` gives every sample the
same key. The anomaly depends on the image, so the mask is produced while the image is transformed and
merged (union) into the ``mask`` that follows it in the same call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from kornia.augmentation import IntensityAugmentationBase2D

from cai_aug.engine import rng
from cai_aug.frontends.common import (
    BankLike,
    ConfigLike,
    EngineHolder,
    KeySchedule,
    apply_draws,
    check_p,
    inject,
    merge_mask,
)
from cai_aug.io.coerce import as_float_batch


class RandomCrossDomainAnomaly(EngineHolder, KeySchedule, IntensityAugmentationBase2D):
    """Inject a real defect of another domain (CAI) into each image; its mask goes into ``mask``.

    Parameters
    ----------
    bank : path or AnomalyBank
        Anomaly bank folder (loaded once per process) or an ``AnomalyBank``.
    p : float
        Probability per sample (kornia's element-wise gate; settable).
    p_batch : float
        Probability for the whole batch (kornia's batch gate).
    same_on_batch : bool
        One key (hence one source, scale and placement rule) for the whole batch.
    seed : int or None
        ``None`` (default): the host's convention, keys and gates drawn from the global torch RNG (or
        Lightning's ``$PL_GLOBAL_SEED`` when set), so ``torch.manual_seed`` reproduces a run. An ``int``:
        keyed randomness, keys ``(seed, rank, epoch, call, position)`` and keyed gates, independent of
        the global RNG (call ``set_epoch`` each epoch).
    mask_value : float or None
        Value written into the mask where the anomaly is; 1 by default (``255`` for 0/255 masks).
    keepdim : bool
        As for every kornia augmentation.
    config, preset, **options
        The engine options: a ``CAIConfig`` (or its ``to_dict()``) or a preset name, and any ``CAIConfig``
        field on top.
    classes, exclude : optional
        Restrict the bank (see ``AnomalyBank.from_folder``).
    device : str or torch.device, optional
        The engine's device (default: the images', or where ``.to()`` moved the op).

    Notes
    -----
    Images ``(B, C, H, W)``, C = 1 or 3, float in [0, 1] (up to 0.05 outside is clamped; normalised
    input raises a ``ValueError``: put it before ``Normalize``). Not differentiable: the engine runs
    without autograd.
    """

    key_name = "RandomCrossDomainAnomaly"

    def __init__(
        self,
        bank: BankLike,
        p: float = 0.5,
        p_batch: float = 1.0,
        same_on_batch: bool = False,
        seed: int | None = None,
        *,
        mask_value: float | None = None,
        keepdim: bool = False,
        config: ConfigLike = None,
        preset: str | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            p=check_p(p), p_batch=check_p(p_batch, "p_batch"), same_on_batch=same_on_batch, keepdim=keepdim
        )
        self.hold_engine(bank, config, preset, classes, exclude, device, options)
        self.start_keys(seed)
        self.keyed = seed is not None
        self.mask_value = mask_value
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        params = super().forward_parameters(batch_shape)
        keys = self.next_keys(1 if self.same_on_batch else batch_shape[0]).expand(batch_shape[0]).clone()
        params["key"] = keys
        if self.keyed:
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
        images, _ = as_float_batch(input)
        chosen = torch.atleast_1d(params["batch_prob"] > 0.5).cpu().expand(images.shape[0])
        out, anomaly, _ = inject(self.engine, images, params["key"], chosen)
        # The mask of this call follows its image in AugmentationSequential: keep the anomaly for it.
        self._last = (params["key"], anomaly)
        return out.to(input.dtype)

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
        return merge_mask(input, self._last[1], self.mask_value)
