"""``CrossDomainAnomaly``: CAI as an Albumentations ``DualTransform``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch

from cai_aug.engine import rng
from cai_aug.engine.config import CAIConfig
from cai_aug.frontends.common import BankLike, ConfigLike, EngineHolder, bank_path, current_rank, merge_mask
from cai_aug.io.coerce import as_float_batch, restore_layout


class CrossDomainAnomaly(EngineHolder, A.DualTransform):
    """Inject a real defect of another domain (CAI) into ``image``; its mask goes into ``mask``.

    Parameters
    ----------
    bank : path or AnomalyBank
        Anomaly bank folder, serialised as its absolute path (an ``AnomalyBank`` is used by the folder
        it was loaded from).
    p : float
        Probability of applying the transform.
    config, preset, **options
        The engine options: a ``CAIConfig`` (or its ``to_dict()``) or a preset name, and any ``CAIConfig``
        field on top (``mode``, ``quotas``, ``anomalies`` ...; a callable ``foreground`` works but does
        not serialise).
    classes, exclude : optional
        Restrict the bank (see ``AnomalyBank.from_folder``).
    mask_value : float or None
        Value written into masks where the anomaly is; 1 by default (``255`` for 0/255 masks).
    strict : bool
        Albumentations' switch; accepted for compatibility: unknown arguments always raise a ``TypeError``.

    Notes
    -----
    Writes a pseudo anomaly into ``image`` and its mask into ``mask`` and every mask of ``masks`` (union
    with what is there). A call without ``mask`` gets one, float32 (0 where no anomaly was made), so a
    pipeline's output keys never depend on the draw. ``additional_targets`` of type ``image`` get the
    same anomaly (same key, hence the same source, size and Poisson blend, placed with the main image's
    foreground); those of type ``mask`` get the mask. ``bboxes`` and ``keypoints`` pass unchanged.
    Images: uint8, or float in [0, 1] (up to 0.05 outside, as a bicubic resize overshoots, is clamped):
    put it before ``Normalize``.

    Randomness is Albumentations': ``p`` is decided by the transform's ``py_random`` and the engine key is
    drawn from its ``random_generator`` (folded with the DataLoader worker id and the rank), so
    ``A.Compose(..., seed=...)`` makes the pipeline reproducible. The parameters are the key, not pixels:
    ``ReplayCompose`` replays the same decisions on other images. ``get_applied_params()`` holds the
    engine ``key``, the ``label`` and the engine's ``info``.
    """

    def __init__(
        self,
        bank: BankLike,
        p: float = 0.5,
        *,
        config: ConfigLike = None,
        preset: str | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        mask_value: float | None = None,
        strict: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(p=p)
        self.hold_engine(bank, config, preset, classes, exclude, None, options)
        self.bank = bank_path(self.bank)
        self.mask_value = mask_value

    @property
    def targets(self) -> dict[str, Any]:
        return {
            "image": self.apply,
            "mask": self.apply_to_mask,
            "masks": self.apply_to_masks,
            "bboxes": self.apply_to_bboxes,
            "keypoints": self.apply_to_keypoints,
        }

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> Any:
        if "mask" not in data and isinstance(data.get("image"), np.ndarray):
            data["mask"] = np.zeros(data["image"].shape[:2], dtype=np.float32)
        return super().__call__(*args, force_apply=force_apply, **data)

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
        if not isinstance(image, np.ndarray):
            raise TypeError(f"CrossDomainAnomaly needs numpy images, got {type(image).__name__}")
        pixels = image[..., None] if image.ndim == 2 else image
        if pixels.ndim != 3:
            raise ValueError(f"CrossDomainAnomaly needs (H, W) or (H, W, C) images, got {image.shape}")
        batch, layout = as_float_batch(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None])
        engine = self.engine
        with torch.no_grad():
            if foreground is None:
                foreground = engine.estimate_foreground(batch)
            result = engine(batch, keys=torch.tensor([key], dtype=torch.int64), foregrounds=foreground)
        out = restore_layout(result.images, layout)[0].permute(1, 2, 0).numpy().reshape(image.shape)
        info = result.info[0] if result.info else {}
        return np.ascontiguousarray(out), result.masks[0, 0].numpy() > 0.5, float(result.labels[0]), info, foreground

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
        local = {**params, "anomaly_mask": anomaly_mask}
        rest = super().apply_with_params(local, *args, **{k: v for k, v in kwargs.items() if k not in outputs})
        return {key: outputs[key] if key in outputs else rest[key] for key in kwargs}

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        # Images are handled in apply_with_params (they need the engine); nothing reaches here applied.
        return img

    def apply_to_mask(self, mask: np.ndarray, anomaly_mask: np.ndarray | None = None, **params: Any) -> np.ndarray:
        if anomaly_mask is None:
            return mask
        planes = torch.from_numpy(mask).movedim(-1, 0) if mask.ndim == 3 else torch.from_numpy(mask)
        merged = merge_mask(planes, torch.from_numpy(anomaly_mask), self.mask_value)
        return np.ascontiguousarray((merged.movedim(0, -1) if mask.ndim == 3 else merged).numpy())

    def apply_to_masks(self, masks: Any, **params: Any) -> Any:
        merged = [self.apply_to_mask(mask, **params) for mask in masks]
        return merged if isinstance(masks, (list, tuple)) else np.stack(merged) if merged else masks

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    def get_transform_init_args(self) -> dict[str, Any]:
        # Every engine option by name, so the JSON of a pipeline reads (and loads) without cai_aug's types.
        options = {name: getattr(self.config, name) for name in CAIConfig.fields()}
        return {
            "bank": self.bank,
            **options,
            "classes": self.classes,
            "exclude": self.exclude,
            "mask_value": self.mask_value,
        }
