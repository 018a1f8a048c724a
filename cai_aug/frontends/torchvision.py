"""``RandomCrossDomainAnomaly``: CAI as a torchvision transforms v2 ``Transform``.

The sample's image (a ``tv_tensors.Image``, or the first plain tensor when there is none, as every v2
transform does) gets the anomaly; every ``tv_tensors.Mask`` gets the anomaly mask merged in (union);
everything else (labels, ``BoundingBoxes``, ``KeyPoints``, strings ...) passes through unchanged. It
can be an anomalib datamodule's ``train_augmentations``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cai_aug.frontends.anomalib import CAIAnomalyGenerator
from cai_aug.frontends.common import BankLike, check_p, mask_value_for


class RandomCrossDomainAnomaly(v2.Transform):
    """Inject a real defect of another domain (CAI) into the image; merge its mask into every ``Mask``.

    Parameters
    ----------
    bank : path or AnomalyBank
        Anomaly bank folder (loaded once per process) or an ``AnomalyBank``.
    p : float
        Probability that a sample gets an anomaly.
    seed : int or None
        ``int`` (default 0): our keyed randomness, keys ``(seed, rank, epoch, call, position)`` (call
        ``set_epoch`` each epoch), the same anomalies whatever the global RNG. ``None``: the host's
        convention, Lightning's global seed (``$PL_GLOBAL_SEED``) when set, else the global torch RNG
        (``torch.manual_seed``), like torchvision's own random transforms.
    mask_value : float or None
        Value written into a ``Mask`` where the anomaly is; ``None`` (default) infers it: 255 for a mask
        already holding values above 1 (0/255 masks), else 1.
    classes, exclude : optional
        Restrict the bank (see ``AnomalyBank.from_folder``).
    **cai_kwargs
        Engine options (``mode``, ``quotas``, ``foreground``, ``threshold``, ``margin``, ``device`` ...).

    Notes
    -----
    Images: ``(C, H, W)`` or ``(B, C, H, W)``, C = 1 or 3, uint8 or float in [0, 1] (up to 0.05 outside
    is clamped; normalised input raises a ``ValueError``: put the transform before ``Normalize``). A
    sample holds at most one image; a PIL image must be converted first (``v2.ToImage()``).
    """

    def __init__(
        self,
        bank: BankLike | str | os.PathLike,
        p: float = 0.5,
        seed: int | None = 0,
        *,
        mask_value: float | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        **cai_kwargs: Any,
    ) -> None:
        super().__init__()
        self.generator = CAIAnomalyGenerator(
            bank, probability=p, seed=seed, classes=classes, exclude=exclude, **cai_kwargs
        )
        self.mask_value = mask_value

    @property
    def p(self) -> float:
        return self.generator.p

    @p.setter
    def p(self, value: float) -> None:
        # torchvision transforms expose ``p`` as a plain attribute that users set after construction
        self.generator.p = check_p(value)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` of the keyed sequence (see ``CAIAugment.set_epoch``)."""
        self.generator.set_epoch(epoch)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if any(isinstance(item, PIL.Image.Image) for item in flat_inputs):
            raise TypeError("RandomCrossDomainAnomaly needs tensor images: put v2.ToImage() before it")
        images = [item for item in flat_inputs if _is_image(item)]
        if not images:
            raise TypeError("RandomCrossDomainAnomaly found no image in the sample (a tv_tensors.Image or a tensor)")
        if len(images) > 1:
            raise ValueError(f"RandomCrossDomainAnomaly takes one image per sample, got {len(images)}")
        image = images[0].as_subclass(torch.Tensor)
        augmented, mask = self.generator(image)
        return {"image": augmented, "anomaly_mask": mask > 0.5}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return _merge(inpt, params["anomaly_mask"], self.mask_value)
        if _is_image(inpt):
            return (
                tv_tensors.wrap(params["image"], like=inpt) if isinstance(inpt, tv_tensors.Image) else params["image"]
            )
        return inpt


def _is_image(item: Any) -> bool:
    """A ``tv_tensors.Image`` or a plain tensor (torchvision passes this op only the first plain tensor)."""
    return isinstance(item, tv_tensors.Image) or (
        isinstance(item, torch.Tensor) and not isinstance(item, tv_tensors.TVTensor)
    )


def _merge(mask: tv_tensors.Mask, anomaly: torch.Tensor, mask_value: float | None) -> tv_tensors.Mask:
    """``mask`` with ``anomaly`` (``(1, H, W)`` or ``(B, 1, H, W)`` bool) merged in, same shape and dtype."""
    plain = mask.as_subclass(torch.Tensor)
    if tuple(plain.shape[-2:]) != tuple(anomaly.shape[-2:]):
        raise ValueError(
            f"the Mask is {tuple(plain.shape[-2:])} but the image is {tuple(anomaly.shape[-2:])}: resize both together"
        )
    where = anomaly.to(plain.device)
    if anomaly.ndim == 4:  # a batch: (B, 1, H, W) against (B, H, W) or (B, 1, H, W)
        where = where if plain.ndim == 4 else where[:, 0]
    else:  # one sample: (1, H, W) against (H, W) or (N, H, W)
        where = where[0] if plain.ndim == 2 else where
    value = torch.tensor(mask_value_for(plain, mask_value), dtype=plain.dtype, device=plain.device)
    return tv_tensors.wrap(torch.where(where, torch.maximum(plain, value), plain), like=mask)
