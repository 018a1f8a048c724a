"""``RandomCrossDomainAnomaly``: CAI as a torchvision transforms v2 ``Transform``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cai_aug.frontends.common import (
    BankLike,
    ConfigLike,
    EngineHolder,
    KeySchedule,
    ProbabilityGate,
    apply_draws,
    inject,
    merge_mask,
)
from cai_aug.io.coerce import as_float_batch, restore_layout


class RandomCrossDomainAnomaly(EngineHolder, KeySchedule, ProbabilityGate, v2.Transform):
    """Inject a real defect of another domain (CAI) into the image; merge its mask into every ``Mask``.

    Parameters
    ----------
    bank : path or AnomalyBank
        Anomaly bank folder (loaded once per process) or an ``AnomalyBank``.
    p : float
        Probability that a sample gets an anomaly (a plain attribute, settable).
    seed : int or None
        ``int`` (default 0): keyed randomness, keys ``(seed, rank, epoch, call, position)`` (call
        ``set_epoch`` each epoch), the same anomalies whatever the global RNG. ``None``: the host's
        convention, Lightning's global seed (``$PL_GLOBAL_SEED``) when set, else the global torch RNG
        (``torch.manual_seed``), like torchvision's own random transforms.
    mask_value : float or None
        Value written into a ``Mask`` where the anomaly is; 1 by default (``255`` for 0/255 masks).
    config, preset, **options
        The engine options: a ``CAIConfig`` (or its ``to_dict()``) or a preset name, and any ``CAIConfig``
        field on top.
    classes, exclude : optional
        Restrict the bank (see ``AnomalyBank.from_folder``).
    device : str or torch.device, optional
        The engine's device (default: the images', or where ``.to()`` moved the op).

    Notes
    -----
    The sample's image (a ``tv_tensors.Image``, or the first plain tensor when there is none, as every
    v2 transform does) gets the anomaly; every ``tv_tensors.Mask`` gets the anomaly mask merged in
    (union); everything else (labels, ``BoundingBoxes``, ``KeyPoints``, strings ...) passes through
    unchanged. It can be an anomalib datamodule's ``train_augmentations``. Images: ``(C, H, W)`` or
    ``(B, C, H, W)``, C = 1 or 3, uint8 or float in [0, 1] (up to 0.05 outside is clamped; normalised
    input raises a ``ValueError``: put the transform before ``Normalize``). A sample holds at most one
    image; a PIL image must be converted first (``v2.ToImage()``).
    """

    def __init__(
        self,
        bank: BankLike,
        p: float = 0.5,
        seed: int | None = 0,
        *,
        mask_value: float | None = None,
        config: ConfigLike = None,
        preset: str | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.hold_engine(bank, config, preset, classes, exclude, device, options)
        self.start_keys(seed)
        self.p = p
        self.mask_value = mask_value

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if any(isinstance(item, PIL.Image.Image) for item in flat_inputs):
            raise TypeError("RandomCrossDomainAnomaly needs tensor images: put v2.ToImage() before it")
        images = [item for item in flat_inputs if _is_image(item)]
        if not images:
            raise TypeError("RandomCrossDomainAnomaly found no image in the sample (a tv_tensors.Image or a tensor)")
        if len(images) > 1:
            raise ValueError(f"RandomCrossDomainAnomaly takes one image per sample, got {len(images)}")
        batch, layout = as_float_batch(images[0].as_subclass(torch.Tensor))
        keys = self.next_keys(batch.shape[0])
        out, anomaly, _ = inject(self.engine, batch, keys, apply_draws(keys, self.p))
        return {"image": restore_layout(out, layout), "anomaly": anomaly if layout.batched else anomaly[0]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.wrap(
                merge_mask(inpt.as_subclass(torch.Tensor), _like(params["anomaly"], inpt), self.mask_value), like=inpt
            )
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(params["image"], like=inpt)
        return params["image"] if _is_image(inpt) else inpt


def _is_image(item: Any) -> bool:
    """A ``tv_tensors.Image`` or a plain tensor (torchvision passes this op only the first plain tensor)."""
    return isinstance(item, tv_tensors.Image) or (
        isinstance(item, torch.Tensor) and not isinstance(item, tv_tensors.TVTensor)
    )


def _like(anomaly: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The anomaly ``(1, H, W)`` or ``(B, 1, H, W)`` shaped to broadcast against ``mask``.

    A batch's masks are ``(B, H, W)`` or ``(B, 1, H, W)``; one sample's ``(H, W)`` or ``(N, H, W)``.
    """
    if anomaly.ndim == 4:
        return anomaly if mask.ndim == 4 else anomaly[:, 0]
    return anomaly[0] if mask.ndim == 2 else anomaly
