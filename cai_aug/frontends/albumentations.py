"""``CrossDomainAnomaly``: CAI as an Albumentations ``DualTransform``.

Writes a pseudo anomaly into ``image`` and its mask into ``mask`` (union with the mask already there;
a ``mask`` is added when the call has none). Put it before ``Normalize``: it needs images in [0, 1]
(float) or uint8. ``bboxes`` and ``keypoints`` pass unchanged (no geometry moves).

Randomness is Albumentations': ``p`` is decided by the transform's ``py_random`` and the engine key is
drawn from its ``random_generator`` (folded with the DataLoader worker id and the rank), so
``A.Compose(..., seed=...)`` makes the pipeline reproducible, as for every other op. The bank is
serialised by its path and loaded once per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch

from cai_aug.engine import rng
from cai_aug.frontends.augment import BankLike, bank_path, current_rank, get_engine


class CrossDomainAnomaly(A.DualTransform):
    """Inject a real defect of another domain (CAI) into ``image``; its mask goes into ``mask``.

    Args:
        bank: anomaly bank folder (serialised as this path) or an ``AnomalyBank`` loaded from a folder.
        mode: ``"normal"`` or ``"mixed"`` Poisson editing.
        quotas: ``(large, medium, small)`` synthesis type weights.
        foreground: ``"auto"``, ``"none"`` or ``"rembg"`` (a callable works but does not serialise).
        threshold: difference threshold of the anomaly mask, in image units (``7/255`` by default).
        margin: dilation of the blending region around the pattern, in pixels.
        classes, exclude: restrict the bank (see ``AnomalyBank.from_folder``).
        mask_value: value written into ``mask`` where the anomaly is (1 by default; 255 for 0/255 masks).
        p: probability of applying the transform.

    Targets: image, mask (and bboxes, keypoints unchanged). Image types: uint8, float32 in [0, 1].
    ``get_applied_params()`` holds the engine ``key``, the ``label`` and the engine's ``info``.
    """

    def __init__(
        self,
        bank: BankLike,
        mode: str = "normal",
        quotas: tuple[float, float, float] = (4, 3, 3),
        foreground: Any = "auto",
        threshold: float = 7 / 255,
        margin: int = 8,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        mask_value: float = 1,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        if mode not in ("normal", "mixed"):
            raise ValueError(f"mode must be 'normal' or 'mixed', got {mode!r}")
        if not 0 <= p <= 1:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        # No pydantic InitSchema: it would turn an AnomalyBank (a dataclass) into a dict.
        self._bank_object = bank
        self.bank = bank_path(bank)
        self.mode = mode
        self.quotas = tuple(quotas)
        self.foreground = foreground
        self.threshold = float(threshold)
        self.margin = int(margin)
        self.classes = list(classes) if classes is not None and not isinstance(classes, str) else classes
        self.exclude = list(exclude) if exclude is not None and not isinstance(exclude, str) else exclude
        self.mask_value = mask_value

    @property
    def engine(self) -> Any:
        return get_engine(
            self._bank_object,
            self.classes,
            self.exclude,
            mode=self.mode,
            quotas=self.quotas,
            foreground=self.foreground,
            threshold=self.threshold,
            margin=self.margin,
        )

    @property
    def targets(self) -> dict[str, Any]:
        return {
            "image": self.apply,
            "mask": self.apply_to_mask,
            "bboxes": self.apply_to_bboxes,
            "keypoints": self.apply_to_keypoints,
        }

    @property
    def targets_as_params(self) -> list[str]:
        return ["image"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if "image" not in data:
            raise ValueError("CrossDomainAnomaly works on `image` (one image per call), not on `images`")
        image = data["image"]
        # The engine key comes from Albumentations' own random state (seeded by Compose(seed=...)),
        # folded with the DataLoader worker and the rank: Albumentations 2.0 gives every worker a copy
        # of the same state, which would otherwise repeat the same anomalies in every worker.
        drawn = int(self.random_generator.integers(-(2**63), 2**63 - 1, dtype=np.int64))
        worker = torch.utils.data.get_worker_info()
        key = rng.sample_key("CrossDomainAnomaly", drawn, current_rank(), -1 if worker is None else worker.id)
        tensor, dtype = _to_tensor(image)
        with torch.no_grad():
            result = self.engine(tensor, keys=torch.tensor([key], dtype=torch.int64))
        return {
            "anomaly_image": _from_tensor(result.images[0], image, dtype),
            "anomaly_mask": result.masks[0, 0].cpu().numpy() > 0.5,
            "key": key,
            "label": float(result.labels[0]),
            "info": result.info[0] if result.info else {},
        }

    def apply(self, img: np.ndarray, anomaly_image: np.ndarray | None = None, **params: Any) -> np.ndarray:
        return img if anomaly_image is None else anomaly_image

    def apply_to_mask(self, mask: np.ndarray, anomaly_mask: np.ndarray | None = None, **params: Any) -> np.ndarray:
        if anomaly_mask is None:
            return mask
        where = anomaly_mask.reshape(anomaly_mask.shape + (1,) * (mask.ndim - 2))
        return np.where(where, np.maximum(mask, np.asarray(self.mask_value, dtype=mask.dtype)), mask)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if "mask" not in kwargs and "anomaly_mask" in params:
            integral = float(self.mask_value).is_integer() and 0 <= self.mask_value <= 255
            kwargs["mask"] = np.zeros(params["anomaly_mask"].shape, dtype=np.uint8 if integral else np.float32)
        return super().apply_with_params(params, *args, **kwargs)

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
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"CrossDomainAnomaly needs (H, W), (H, W, 1) or (H, W, 3) images, got {image.shape}")
    if image.dtype == np.uint8:
        tensor = torch.from_numpy(np.ascontiguousarray(image))
    elif np.issubdtype(image.dtype, np.floating):
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"CrossDomainAnomaly needs float images in [0, 1], got [{low:.3g}, {high:.3g}]: put it before Normalize"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    else:
        raise TypeError(f"CrossDomainAnomaly needs uint8 or float images in [0, 1], got {image.dtype}")
    return tensor.permute(2, 0, 1)[None], image.dtype


def _from_tensor(result: torch.Tensor, like: np.ndarray, dtype: np.dtype) -> np.ndarray:
    array = result.detach().cpu().permute(1, 2, 0).numpy()
    array = array.reshape(like.shape)
    return np.ascontiguousarray(array.astype(dtype, copy=False))
