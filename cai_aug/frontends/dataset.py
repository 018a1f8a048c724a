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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cai_aug.engine import rng
from cai_aug.engine.cai import CAI
from cai_aug.engine.config import CAIConfig
from cai_aug.frontends.common import BankLike, apply_draws, check_bank, check_p, current_rank, get_engine, rank_keys
from cai_aug.io.coerce import as_rgb, coerce_image
from cai_aug.io.images import list_images, read_image, to_tensor


def to_image_tensor(item: Any) -> torch.Tensor:
    """One image from a dataset item -> ``(3, H, W)`` float32 in [0, 1] (grey repeated, alpha dropped).

    The package's one set of coercion rules (:func:`cai_aug.io.coerce.coerce_image`): a tensor, an
    array, a PIL image, a dict with ``"image"``, an object with ``.image`` (anomalib items) or a
    tuple/list whose first element is one of these; uint8, uint16, bool or float in [0, 1].
    """
    return as_rgb(coerce_image(item, "dataset image").pixels).contiguous()


def _engine_options(cai: CAI | CAIConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    """``get_engine`` keywords (``classes``, ``exclude``, ``config``, ``device``) for ``cai=``."""
    if cai is None or isinstance(cai, CAI):
        return {"config": CAIConfig()}
    if isinstance(cai, CAIConfig):
        return {"config": cai}
    if not isinstance(cai, Mapping):
        raise TypeError(f"cai must be a CAI engine, a CAIConfig or a dict of engine options, got {type(cai).__name__}")
    options = dict(cai)
    # Everything get_engine takes besides the engine options; an engine seed is accepted but unused
    # (items always pass keys).
    extra = {name: options.pop(name) for name in ("classes", "exclude", "device", "seed") if name in options}
    return {**extra, "config": CAIConfig.build(options.pop("config", None), **options)}


class CAIDataset(Dataset):
    """Wrap normal images into DRAEM-style training items with CAI pseudo anomalies.

    Args:
        normal: a folder of normal images (searched recursively) or any map-style dataset whose items
            are images (tensor, array, PIL, dict with ``"image"``, ``(image, ...)`` tuples).
        bank: anomaly bank folder (loaded lazily, once per process) or an ``AnomalyBank``.
        p_anomaly: probability that an item gets a pseudo anomaly (keyed draw per item and epoch).
        cai: a ready ``CAI`` engine, a :class:`~cai_aug.engine.config.CAIConfig`, or a dict of engine
            options (``mode``, ``quotas``, ``foreground``, ``threshold`` ...; also ``classes``/``exclude``
            for the bank and ``device``). Default: the engine defaults.
        image_size: resize images to ``(H, W)`` (an int means square) before synthesis.
        seed: seed of the keys (the same on every rank; the rank is folded in).
        per_rank: fold the ``torch.distributed`` rank into keys (ranks that read the same images get
            different anomalies). ``False`` makes items a function of ``(seed, image, epoch)`` only.
        rank: force the rank (default: ``torch.distributed`` when initialised, else ``$RANK``, else 0).

    The bank folder and the engine options are checked at construction (in the main process); the
    bank is read in each worker on first use.
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
        self.bank = bank if isinstance(cai, CAI) else check_bank(bank)
        self.p_anomaly = check_p(p_anomaly, "p_anomaly")
        self.cai = cai
        # Engine options are resolved (and checked) now; the engine itself is built per process.
        self._engine_options = _engine_options(cai)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.seed = int(seed)
        self.per_rank = per_rank
        self.rank = rank
        if isinstance(normal, (str, os.PathLike)):
            self.root: Path | None = Path(normal)
            self.files: list[Path] | None = list_images(self.root, what="normal image folder")
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
    def config(self) -> CAIConfig:
        """The engine options."""
        return self.cai.config if isinstance(self.cai, CAI) else self._engine_options["config"]

    @property
    def engine(self) -> CAI:
        if isinstance(self.cai, CAI):
            return self.cai
        return get_engine(self.bank, **self._engine_options)

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
