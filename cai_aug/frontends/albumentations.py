"""``CrossDomainAnomaly``: CAI as an Albumentations ``DualTransform``.

Writes a pseudo anomaly into ``image`` and its mask into ``mask`` and every mask of ``masks`` (union
with what is there; a ``mask`` is added when the call has none). ``additional_targets`` of type
``image`` get the same anomaly (same key, hence the same source, size and Poisson blend, placed with
the main image's foreground); those of type ``mask`` get the mask. ``bboxes`` and ``keypoints`` pass
unchanged (no geometry moves). Put it before ``Normalize``: it needs uint8 images or float images in
[0, 1] (up to 0.05 outside, as a bicubic resize overshoots, is clamped).

Randomness is Albumentations': ``p`` is decided by the transform's ``py_random`` and the engine key is
drawn from its ``random_generator`` (folded with the DataLoader worker id and the rank), so
``A.Compose(..., seed=...)`` makes the pipeline reproducible, as for every other op. The parameters
are the key, not pixels: ``ReplayCompose`` replays the same decisions on other images. The bank is
serialised by its absolute path and loaded once per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field, field_validator, model_validator

from cai_aug.engine import rng
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.config import CAIConfig, Mode
from cai_aug.frontends.common import BankLike, bank_path, current_rank, get_engine, mask_value_for
from cai_aug.io.coerce import unit_range

_DEFAULTS = CAIConfig()


def _engine_config(mode: Any, quotas: Any, foreground: Any, threshold: Any, margin: Any) -> CAIConfig:
    """The engine options of the op, checked by :class:`CAIConfig` (a TypeError there is a ValueError here,
    as pydantic reports only ValueErrors as validation errors)."""
    try:
        return CAIConfig(mode=mode, quotas=quotas, foreground=foreground, threshold=threshold, margin=margin)
    except TypeError as error:
        raise ValueError(str(error)) from error


def _absolute_bank(bank: Any) -> str:
    """The bank's folder as an absolute path; a clear error for anything else or a missing folder."""
    if not isinstance(bank, (str, os.PathLike, AnomalyBank)):
        raise TypeError(f"bank must be a folder path or an AnomalyBank, got {type(bank).__name__}")
    folder = Path(bank_path(bank)).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"bank {folder} is not a folder")
    return str(folder)


class CrossDomainAnomaly(A.DualTransform):
    """Inject a real defect of another domain (CAI) into ``image``; its mask goes into ``mask``.

    Parameters
    ----------
    bank : path or AnomalyBank
        Anomaly bank folder, serialised as its absolute path (an ``AnomalyBank`` is used by the folder
        it was loaded from).
    mode : {"normal", "mixed"}
        Poisson editing mode.
    quotas : (float, float, float)
        ``(large, medium, small)`` synthesis type weights, non-negative, not all zero.
    foreground : {"auto", "none", "rembg"} or callable
        Foreground estimator (a callable works but does not serialise).
    threshold : float
        Difference threshold of the anomaly mask, in image units, in (0, 1] (``7/255`` by default).
    margin : int
        Dilation of the blending region around the pattern, in pixels.
    classes, exclude : optional
        Restrict the bank (see ``AnomalyBank.from_folder``).
    mask_value : float or None
        Value written into masks where the anomaly is. ``None`` (default): 255 for a mask already in
        0/255 (a value above 1), else 1; pass 255 for 0/255 masks that may still be empty.
    p : float
        Probability of applying the transform.

    Notes
    -----
    Targets: image, mask, masks (and bboxes, keypoints unchanged). Image types: uint8, float32 in
    [0, 1]. ``get_applied_params()`` holds the engine ``key``, the ``label`` and the engine's ``info``.
    Construction validates every argument (a pydantic ``InitSchema``), so bad values fail there, and
    ``strict=True`` also rejects unknown arguments.
    """

    class InitSchema(BaseTransformInitSchema):
        bank: Any
        mode: Mode
        quotas: tuple[float, float, float]
        foreground: Any
        threshold: float
        margin: int
        classes: list[str] | None
        exclude: str | list[str] | None
        mask_value: float | None = Field(default=None, gt=0)

        @field_validator("bank")
        @classmethod
        def _bank(cls, value: Any) -> str:
            return _absolute_bank(value)

        @model_validator(mode="after")
        def _engine_options(self) -> Any:
            # the engine's own rules, written once in CAIConfig
            _engine_config(self.mode, self.quotas, self.foreground, self.threshold, self.margin)
            return self

    def __init__(
        self,
        bank: BankLike,
        mode: Mode = _DEFAULTS.mode,
        quotas: tuple[float, float, float] = _DEFAULTS.quotas,
        foreground: str | Callable = _DEFAULTS.foreground,
        threshold: float = _DEFAULTS.threshold,
        margin: int = _DEFAULTS.margin,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        mask_value: float | None = None,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.bank = _absolute_bank(bank)
        self.config = _engine_config(mode, quotas, foreground, threshold, margin)
        self.mode = self.config.mode
        self.quotas = tuple(self.config.quotas)
        self.foreground = foreground
        self.threshold = self.config.threshold
        self.margin = self.config.margin
        self.classes = list(classes) if classes is not None and not isinstance(classes, str) else classes
        self.exclude = list(exclude) if exclude is not None and not isinstance(exclude, str) else exclude
        self.mask_value = mask_value

    @property
    def engine(self) -> Any:
        return get_engine(self.bank, self.classes, self.exclude, self.config)

    @property
    def targets(self) -> dict[str, Any]:
        return {
            "image": self.apply,
            "mask": self.apply_to_mask,
            "masks": self.apply_to_masks,
            "bboxes": self.apply_to_bboxes,
            "keypoints": self.apply_to_keypoints,
        }

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if "image" not in data:
            raise ValueError("CrossDomainAnomaly works on `image` (one image per call), not on `images`")
        # The engine key comes from Albumentations' own random state (seeded by Compose(seed=...)),
        # folded with the DataLoader worker and the rank: Albumentations 2.0 gives every worker a copy
        # of the same state, which would otherwise repeat the same anomalies in every worker. Only the
        # key is a parameter: ReplayCompose stores it and replays the same decisions on other data.
        drawn = int(self.random_generator.integers(-(2**63), 2**63 - 1, dtype=np.int64))
        worker = torch.utils.data.get_worker_info()
        return {"key": rng.sample_key("CrossDomainAnomaly", drawn, current_rank(), -1 if worker is None else worker.id)}

    def _inject(
        self, image: np.ndarray, key: int, foreground: torch.Tensor | None
    ) -> tuple[np.ndarray, np.ndarray, float, dict, torch.Tensor]:
        """One anomaly for ``image`` with ``key``; returns image, mask (bool), label, info and foreground."""
        tensor, dtype = _to_tensor(image)
        engine = self.engine
        with torch.no_grad():
            if foreground is None:
                foreground = engine.estimate_foreground(tensor.float() / 255 if tensor.dtype == torch.uint8 else tensor)
            result = engine(tensor, keys=torch.tensor([key], dtype=torch.int64), foregrounds=foreground)
        return (
            _from_tensor(result.images[0], image, dtype),
            result.masks[0, 0].cpu().numpy() > 0.5,
            float(result.labels[0]),
            result.info[0] if result.info else {},
            foreground,
        )

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if "key" not in params or kwargs.get("image") is None:
            return super().apply_with_params(params, *args, **kwargs)
        image, anomaly_mask, label, info, foreground = self._inject(kwargs["image"], params["key"], None)
        # Results are reported in the applied parameters after ReplayCompose has saved them (key only).
        params["label"], params["info"] = label, info
        outputs = {"image": image}
        # Extra images get the same key and the main image's foreground: the same source, size and place.
        for name, kind in self._additional_targets.items():
            if kind == "image" and kwargs.get(name) is not None:
                outputs[name] = self._inject(kwargs[name], params["key"], foreground)[0]
        if "mask" not in kwargs:
            value = self.mask_value if self.mask_value is not None else 1
            integral = float(value).is_integer() and 0 <= value <= 255
            kwargs["mask"] = np.zeros(anomaly_mask.shape, dtype=np.uint8 if integral else np.float32)
        local = {**params, "anomaly_mask": anomaly_mask}
        rest = super().apply_with_params(local, *args, **{k: v for k, v in kwargs.items() if k not in outputs})
        return {key: outputs[key] if key in outputs else rest[key] for key in kwargs}

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        # Images are handled in apply_with_params (they need the engine); nothing reaches here applied.
        return img

    def apply_to_mask(
        self, mask: np.ndarray, anomaly_mask: np.ndarray | None = None, value: float | None = None, **params: Any
    ) -> np.ndarray:
        if anomaly_mask is None:
            return mask
        if mask.shape[:2] != anomaly_mask.shape:
            raise ValueError(f"mask is {mask.shape[:2]} but the image {anomaly_mask.shape}: pass them at one size")
        value = mask_value_for(mask, self.mask_value) if value is None else value
        where = anomaly_mask.reshape(anomaly_mask.shape + (1,) * (mask.ndim - 2))
        return np.where(where, np.maximum(mask, np.asarray(value, dtype=mask.dtype)), mask)

    def apply_to_masks(self, masks: Any, **params: Any) -> Any:
        # One value for all the masks of a call: an empty mask next to 0/255 ones is 0/255 too.
        value = mask_value_for(np.asarray(masks), self.mask_value) if len(masks) else None
        merged = [self.apply_to_mask(mask, value=value, **params) for mask in masks]
        return merged if isinstance(masks, (list, tuple)) else np.stack(merged) if merged else masks

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (
            "bank",
            "mode",
            "quotas",
            "foreground",
            "threshold",
            "margin",
            "classes",
            "exclude",
            "mask_value",
        )


def _to_tensor(image: np.ndarray) -> tuple[torch.Tensor, np.dtype]:
    """``(H, W[, C])`` uint8 or float array -> ``(1, C, H, W)`` tensor the engine takes (uint8 or float32)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"CrossDomainAnomaly needs numpy images, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"CrossDomainAnomaly needs (H, W), (H, W, 1) or (H, W, 3) images, got {image.shape}")
    if image.dtype == np.uint8:
        tensor = torch.from_numpy(np.ascontiguousarray(image))
    elif np.issubdtype(image.dtype, np.floating):
        try:
            tensor = unit_range(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), "images")
        except ValueError as error:
            raise ValueError(f"CrossDomainAnomaly: {error} (put it before Normalize)") from None
    else:
        raise TypeError(f"CrossDomainAnomaly needs uint8 or float images in [0, 1], got {image.dtype}")
    return tensor.permute(2, 0, 1)[None], image.dtype


def _from_tensor(result: torch.Tensor, like: np.ndarray, dtype: np.dtype) -> np.ndarray:
    array = result.detach().cpu().permute(1, 2, 0).numpy()
    array = array.reshape(like.shape)
    return np.ascontiguousarray(array.astype(dtype, copy=False))
