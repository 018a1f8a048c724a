"""``CAIDataset``: DRAEM-style training items with CAI pseudo anomalies, for ``DataLoader`` workers.

Items have the keys and layouts of DRAEM's ``MVTecDRAEMTrainDataset`` (VitjanZ/DRAEM,
``data_loader.py``), as tensors (which is what DRAEM's arrays become after collation):

- ``image``: ``(3, H, W)`` float32 in [0, 1], the normal image (RGB);
- ``augmented_image``: ``(3, H, W)`` float32, the image with a pseudo anomaly (or the image itself);
- ``anomaly_mask``: ``(1, H, W)`` float32 in {0, 1};
- ``has_anomaly``: ``(1,)`` float32, 1.0 when the mask is not empty;
- ``idx``: the index asked for.

Keys: the item of image key ``k`` (its path relative to the folder, or its index in a wrapped dataset)
in epoch ``e`` on rank ``r`` gets ``rng.sample_keys(seed, [k], 0, e)`` folded with ``r`` (rank 0 keeps
it, so one process gives exactly what offline synthesis gives). Nothing depends on the worker, the
batch or the order. The epoch lives in shared memory so ``set_epoch`` reaches persistent workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from cai_aug.engine import rng
from cai_aug.engine.cai import CAI
from cai_aug.frontends.augment import BankLike, apply_draws, check_p, current_rank, get_engine, rank_keys
from cai_aug.io.images import is_image_file, read_image, to_tensor


def to_image_tensor(item: Any) -> torch.Tensor:
    """One image from a dataset item -> ``(3, H, W)`` float32 in [0, 1].

    Accepts a tensor ``(C, H, W)`` (float in [0, 1] or uint8), an array ``(H, W[, C])`` (uint8, uint16
    or float in [0, 1]), a PIL image, a dict with ``"image"``, an object with ``.image`` (anomalib
    items) or a tuple/list whose first element is one of these. C = 1 or 4 become RGB.
    """
    if isinstance(item, dict):
        if "image" not in item:
            raise KeyError(f"dataset items that are dicts need an 'image' key, got keys {sorted(item)}")
        item = item["image"]
    elif isinstance(item, (tuple, list)):
        item = item[0]
    elif not isinstance(item, (torch.Tensor, np.ndarray, Image.Image)) and hasattr(item, "image"):
        item = item.image
    if isinstance(item, Image.Image):
        return to_tensor(np.asarray(item.convert("RGB")))
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
        if array.dtype == np.uint16:
            tensor = torch.from_numpy(array.astype(np.float32) / 65535.0)
        elif array.dtype == np.uint8:
            tensor = torch.from_numpy(np.ascontiguousarray(array)).float() / 255.0
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        item = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if not isinstance(item, torch.Tensor):
        raise TypeError(f"cannot read an image from a dataset item of type {type(item).__name__}")
    image = item.detach()
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"an image must be (C, H, W) or (H, W), got shape {tuple(image.shape)}")
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    elif image.shape[0] == 4:
        image = image[:3]
    elif image.shape[0] != 3:
        raise ValueError(f"images must have 1, 3 or 4 channels, got shape {tuple(image.shape)}")
    low, high = float(image.min()), float(image.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise ValueError(
            f"images must lie in [0, 1] (got [{low:.3g}, {high:.3g}]): normalise after CAIDataset, not before"
        )
    return image.clamp(0, 1).contiguous()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files and ``*_mask`` files left out)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"normal image folder {root} does not exist")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not p.stem.endswith("_mask")
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ValueError(f"no images (png, jpg, bmp, tif, webp) under {root}")
    return files


class CAIDataset(Dataset):
    """Wrap normal images into DRAEM-style training items with CAI pseudo anomalies.

    Args:
        normal: a folder of normal images (searched recursively) or any map-style dataset whose items
            are images (tensor, array, PIL, dict with ``"image"``, ``(image, ...)`` tuples).
        bank: anomaly bank folder (loaded lazily, once per process) or an ``AnomalyBank``.
        p_anomaly: probability that an item gets a pseudo anomaly (keyed draw per item and epoch).
        cai: a ready ``CAI`` engine, or a dict of engine options (``mode``, ``quotas``, ``foreground``,
            ``threshold`` ...; also ``classes``/``exclude`` for the bank). Default: engine defaults.
        image_size: resize images to ``(H, W)`` (an int means square) before synthesis.
        seed: seed of the keys (the same on every rank; the rank is folded in).
        per_rank: fold the ``torch.distributed`` rank into keys (ranks that read the same images get
            different anomalies). ``False`` makes items a function of ``(seed, image, epoch)`` only.
        rank: force the rank (default: ``torch.distributed`` when initialised, else ``$RANK``, else 0).
    """

    def __init__(
        self,
        normal: str | os.PathLike | Dataset | Sequence[Any],
        bank: BankLike,
        p_anomaly: float = 0.5,
        *,
        cai: CAI | dict[str, Any] | None = None,
        image_size: int | tuple[int, int] | None = None,
        seed: int = 0,
        per_rank: bool = True,
        rank: int | None = None,
    ) -> None:
        self.bank = bank
        self.p_anomaly = check_p(p_anomaly, "p_anomaly")
        self.cai = cai
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.seed = int(seed)
        self.per_rank = per_rank
        self.rank = rank
        if isinstance(normal, (str, os.PathLike)):
            self.root: Path | None = Path(normal)
            self.files: list[Path] | None = list_images(self.root)
            self.data = None
        else:
            self.root, self.files, self.data = None, None, normal
        # Shared memory: persistent workers (fork or spawn) see set_epoch made in the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    # -------------------------------------------------------------- keys and state
    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s anomalies (call it with ``DistributedSampler.set_epoch``)."""
        self._epoch[0] = int(epoch)

    def resolved_rank(self) -> int:
        return current_rank() if self.rank is None else int(self.rank)

    def image_key(self, index: int) -> str | int:
        """Key of an image: its path relative to the folder, or its index in the wrapped dataset."""
        if self.files is not None and self.root is not None:
            return self.files[index].relative_to(self.root).as_posix()
        return int(index)

    def keys(self, indices: Sequence[int], epoch: int | None = None) -> torch.Tensor:
        """Keys ``(N,)`` int64 of ``indices`` in ``epoch`` (default: the current one) on this rank."""
        epoch = self.epoch if epoch is None else int(epoch)
        keys = rng.sample_keys(self.seed, [self.image_key(int(i)) for i in indices], 0, epoch)
        return rank_keys(keys, self.resolved_rank()) if self.per_rank else keys

    @property
    def engine(self) -> CAI:
        if isinstance(self.cai, CAI):
            return self.cai
        options = dict(self.cai or {})
        return get_engine(self.bank, options.pop("classes", None), options.pop("exclude", None), **options)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Pickled for spawned workers: pin the rank seen by the main process (workers are no ranks).
        if state["rank"] is None:
            state["rank"] = current_rank()
        return state

    # -------------------------------------------------------------- items
    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.data)

    def load(self, index: int) -> torch.Tensor:
        """The normal image ``index`` as ``(3, H, W)`` float32 in [0, 1], resized to ``image_size``."""
        if self.files is not None:
            image = to_tensor(read_image(self.files[index], "RGB"))
        else:
            image = to_image_tensor(self.data[index])
        if self.image_size is not None and tuple(image.shape[-2:]) != self.image_size:
            image = F.interpolate(image[None], size=self.image_size, mode="bilinear", antialias=True)[0]
            image = image.clamp(0, 1)
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = index % len(self)
        image = self.load(index)
        keys = self.keys([index])
        mask = torch.zeros((1, *image.shape[-2:]), dtype=torch.float32)
        augmented, has_anomaly = image, torch.zeros(1, dtype=torch.float32)
        if bool(apply_draws(keys, self.p_anomaly)[0]):
            # Only images read from a folder are the same every epoch: only they may reuse foregrounds.
            image_ids = [str(self.files[index].resolve())] if self.files is not None else None
            with torch.no_grad():
                result = self.engine(image[None], keys=keys, image_ids=image_ids)
            augmented = result.images[0].float().cpu()
            mask = result.masks[0].float().cpu()
            has_anomaly = result.labels[:1].float().cpu()
        return {
            "image": image,
            "augmented_image": augmented,
            "anomaly_mask": mask,
            "has_anomaly": has_anomaly,
            "idx": index,
        }
