"""``CAIDataset``: DRAEM-style training items with CAI pseudo anomalies, for ``DataLoader`` workers.

Items have the keys and layouts of DRAEM's ``MVTecDRAEMTrainDataset`` (VitjanZ/DRAEM,
``data_loader.py``), as tensors (which is what DRAEM's arrays become after collation):

- ``image``: ``(3, H, W)`` float32 in [0, 1], the normal image (RGB);
- ``augmented_image``: ``(3, H, W)`` float32, the image with a pseudo anomaly (or the image itself);
- ``anomaly_mask``: ``(1, H, W)`` float32 in {0, 1};
- ``has_anomaly``: ``(1,)`` float32, 1.0 when the mask is not empty;
- ``idx``: the index asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cai_aug.frontends.common import BankLike, ConfigLike, EngineHolder, KeySchedule, apply_draws, check_p, inject
from cai_aug.io.coerce import as_rgb, coerce_image
from cai_aug.io.images import list_images, read_image, to_tensor


def to_image_tensor(item: Any) -> torch.Tensor:
    """One image from a dataset item -> ``(3, H, W)`` float32 in [0, 1] (grey repeated, alpha dropped).

    The package's one set of coercion rules (:func:`cai_aug.io.coerce.coerce_image`): a tensor, an
    array, a PIL image, a dict with ``"image"``, an object with ``.image`` (anomalib items) or a
    tuple/list whose first element is one of these; uint8, uint16, bool or float in [0, 1].
    """
    return as_rgb(coerce_image(item, "dataset image").pixels).contiguous()


class CAIDataset(EngineHolder, KeySchedule, Dataset):
    """Wrap normal images into DRAEM-style training items with CAI pseudo anomalies.

    Parameters
    ----------
    normal : path or Dataset
        A folder of normal images (searched recursively) or any map-style dataset whose items are
        images (tensor, array, PIL, dict with ``"image"``, ``(image, ...)`` tuples).
    bank : path or AnomalyBank
        Anomaly bank folder (loaded lazily, once per process) or an ``AnomalyBank``.
    p_anomaly : float
        Probability that an item gets a pseudo anomaly (keyed draw per item and epoch).
    config, preset, **options
        The engine options: a ``CAIConfig`` (or its ``to_dict()``) or a preset name, and any ``CAIConfig``
        field on top (``mode``, ``quotas``, ``anomalies`` ...).
    image_size : int or (int, int), optional
        Resize images to ``(H, W)`` (an int means square) before synthesis.
    seed : int
        Seed of the keys (the same on every rank; the rank is folded in).
    per_rank : bool
        Fold the ``torch.distributed`` rank into keys (ranks that read the same images get different
        anomalies). ``False`` makes items a function of ``(seed, image, epoch)`` only.
    rank : int, optional
        Force the rank (default: ``torch.distributed`` when initialised, else ``$RANK``, else 0).
    classes, exclude, device : optional
        Restrict the bank (see ``AnomalyBank.from_folder``); the engine's device (default: the CPU).

    Notes
    -----
    The bank folder, the engine options and the device are checked at construction (in the main
    process); the bank is read in each worker on first use. Item ``k`` (the image's path relative to
    the folder, or its index in a wrapped dataset) in epoch ``e`` is keyed ``rng.sample_keys(seed, [k],
    0, e)`` folded with the rank, so nothing depends on the worker, the batch or the order. The epoch
    lives in shared memory so ``set_epoch`` reaches persistent workers.
    """

    def __init__(
        self,
        normal: str | os.PathLike | Dataset | Sequence[Any],
        bank: BankLike,
        p_anomaly: float = 0.5,
        *,
        config: ConfigLike = None,
        preset: str | None = None,
        image_size: int | tuple[int, int] | None = None,
        seed: int = 0,
        per_rank: bool = True,
        rank: int | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        # Shared memory: persistent workers (fork or spawn) see set_epoch made in the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.hold_engine(bank, config, preset, classes, exclude, device, options)
        self.start_keys(seed, rank, per_rank)
        self.p_anomaly = check_p(p_anomaly, "p_anomaly")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(image_size) if image_size is not None else None
        if isinstance(normal, (str, os.PathLike)):
            self.root: Path | None = Path(normal)
            self.files: list[Path] | None = list_images(self.root, what="normal image folder")
            self.data = None
        else:
            self.root, self.files, self.data = None, None, normal

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        # set_epoch (call it with DistributedSampler.set_epoch) lands here
        self._epoch[0] = int(epoch)

    def image_key(self, index: int) -> str | int:
        """Key of an image: its path relative to the folder, or its index in the wrapped dataset."""
        if self.files is not None and self.root is not None:
            return self.files[index].relative_to(self.root).as_posix()
        return int(index)

    def keys(self, indices: Sequence[int], epoch: int | None = None) -> torch.Tensor:
        """Keys ``(N,)`` int64 of ``indices`` in ``epoch`` (default: the current one) on this rank."""
        return self.image_keys([self.image_key(int(i)) for i in indices], self.epoch if epoch is None else int(epoch))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Pickled for spawned workers: pin the rank seen by the main process (workers are no ranks).
        state["rank"] = self.resolved_rank()
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
        # Only images read from a folder are the same every epoch: only they may reuse foregrounds.
        image_ids = [str(self.files[index].resolve())] if self.files is not None else None
        out, anomaly, labels = inject(
            self.engine, image[None], keys, apply_draws(keys, self.p_anomaly), image_ids=image_ids
        )
        return {
            "image": image,
            "augmented_image": out[0],
            "anomaly_mask": anomaly[0].float(),
            "has_anomaly": labels,
            "idx": index,
        }
