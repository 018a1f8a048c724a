"""The anomaly bank: real defects of other domains, loaded once and kept ready for batched sampling.

Layout on disk: ``<bank>/<class>/<id>.<png|jpg|...>`` with ``<bank>/<class>/<id>_mask.png`` (non-zero =
anomaly, see :func:`cai_aug.io.bank_files.defect_mask`), optional ``<bank>/MANIFEST.csv``
(``id,class,source_repo,...``, read by :func:`cai_aug.io.bank_files.read_manifest`).

In memory every source is cropped to its mask's bounding box plus some context and stored, with an
antialiased mip pyramid, in one flat ``(P, 4)`` uint8 tensor (RGB + mask). A batch of sources of any
sizes can then be resampled with one gather (:mod:`cai_aug.engine.resample`), on whatever device the bank is.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cai_aug.io.bank_files import defect_mask, read_manifest
from cai_aug.io.images import IMAGE_SUFFIXES, is_image_file, open_image, read_image

logger = logging.getLogger(__name__)

PAPER_CLASSES = ("pits", "crack", "hole", "stain", "scratch", "orifice", "impurity", "abrasion")
MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class BankEntry:
    """Provenance of one source anomaly."""

    id: str
    cls: str
    dataset: str
    image_path: Path
    mask_path: Path
    source_repo: str = ""


@dataclass
class BankStorage:
    """All sources of a bank in flat tensors on one device.

    ``pixels``: ``(P, 4)`` uint8, RGB and mask (0..255, antialiased at coarse levels).
    ``offset``, ``height``, ``width``: ``(N, L)`` int64, where level ``l`` of source ``n`` starts in
    ``pixels`` and its size (level ``l`` is the crop downscaled by ``2**l``).
    ``levels``: ``(N,)`` number of valid levels per source.
    ``bbox``: ``(N, 4)`` float32 mask bounding box in level-0 crop pixels ``(top, left, height, width)``.
    """

    pixels: torch.Tensor
    offset: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    levels: torch.Tensor
    bbox: torch.Tensor

    def to(self, device: torch.device | str) -> BankStorage:
        return BankStorage(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))

    @property
    def source_sizes(self) -> torch.Tensor:
        """``sa = max(bbox(ya))`` per source, ``(N,)`` float32 (level-0 pixels), on this storage's device."""
        return self.bbox[:, 2:].amax(dim=1)


@dataclass
class AnomalyBank:
    """A set of source anomalies (image + mask) with their classes and provenance."""

    entries: list[BankEntry]
    storage: BankStorage
    root: Path | None = None
    context: int = 16
    _device_cache: dict[str, BankStorage] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        classes: Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        *,
        context: int = 16,
        max_levels: int = 6,
        progress: bool = False,
    ) -> AnomalyBank:
        """Load a bank folder.

        Args:
            path: the bank root.
            classes: keep only these classes (e.g. the paper's CDM-5 subset); unknown names are an error.
            exclude: source datasets (the id prefix before ``_``, or MANIFEST ``source_repo``, or its last
                path component) or single ids to leave out, so a dataset under evaluation never leaks
                into its own training anomalies. A name that matches no entry is named in a warning.
            context: pixels of context kept around each mask's bounding box.

        Raises:
            ValueError: no such folder, no entries, an unknown class, or a ``MANIFEST.csv`` that cannot be
                read (the message names its line): an unread manifest would make ``exclude`` miss.
        """
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"anomaly bank folder {root} does not exist")
        if not root.is_dir():
            raise ValueError(f"anomaly bank path {root} is not a folder")
        entries = _scan(root)
        if not entries:
            raise ValueError(
                f"anomaly bank {root} holds no image/mask pairs: expected <bank>/<class>/<id>.png "
                f"with <bank>/<class>/<id>{MASK_SUFFIX}.png"
            )
        entries = _filter(entries, classes, exclude, root)
        return cls.from_entries(entries, root=root, context=context, max_levels=max_levels, progress=progress)

    @classmethod
    def from_entries(
        cls,
        entries: list[BankEntry],
        *,
        root: Path | None = None,
        context: int = 16,
        max_levels: int = 6,
        progress: bool = False,
    ) -> AnomalyBank:
        crops, kept, empty, bad = [], [], 0, []
        iterator = entries
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(entries, desc="loading anomaly bank", unit="source")
        for entry in iterator:
            # one bad file among thousands of sources must not stop a run: skip it, count it, say why
            try:
                image = read_image(entry.image_path, "RGB")
                mask = defect_mask(open_image(entry.mask_path))
            except ValueError as error:
                bad.append(str(error))
                continue
            if image.shape[:2] != mask.shape:
                bad.append(
                    f"mask {entry.mask_path} is {mask.shape[1]}x{mask.shape[0]} but image "
                    f"{entry.image_path} is {image.shape[1]}x{image.shape[0]}"
                )
                continue
            if not mask.any():
                empty += 1
                continue
            crops.append(_crop_to_mask(image, mask, context))
            kept.append(entry)
        if empty:
            warnings.warn(f"anomaly bank: skipped {empty} source(s) with an empty mask", stacklevel=2)
        if bad:
            warnings.warn(
                f"anomaly bank: skipped {len(bad)} unusable source(s) (unreadable, or mask not matching its "
                f"image); first: {bad[0]}",
                stacklevel=2,
            )
        if not kept:
            raise ValueError("anomaly bank is empty: no readable source with a non-empty mask")
        storage = _pack(crops, max_levels)
        return cls(entries=kept, storage=storage, root=root, context=context)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def classes(self) -> list[str]:
        return sorted({entry.cls for entry in self.entries})

    @property
    def ids(self) -> list[str]:
        return [entry.id for entry in self.entries]

    @property
    def source_sizes(self) -> torch.Tensor:
        """``sa = max(bbox(ya))`` per source, ``(N,)`` float32 (level-0 pixels); on a device through
        ``storage_on(device).source_sizes``."""
        return self.storage.source_sizes

    def class_index(self) -> torch.Tensor:
        """Class of every source as an index into :attr:`classes`, ``(N,)`` int64."""
        lookup = {name: i for i, name in enumerate(self.classes)}
        return torch.tensor([lookup[entry.cls] for entry in self.entries], dtype=torch.int64)

    def storage_on(self, device: torch.device | str) -> BankStorage:
        """The storage on ``device``, copied there once and cached."""
        key = str(torch.device(device))
        if key == str(self.storage.pixels.device):
            return self.storage
        if key not in self._device_cache:
            self._device_cache[key] = self.storage.to(device)
        return self._device_cache[key]

    def source(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Level-0 crop of one source: image ``(3, h, w)`` float [0, 1] and mask ``(1, h, w)`` bool."""
        s = self.storage
        h, w = int(s.height[index, 0]), int(s.width[index, 0])
        start = int(s.offset[index, 0])
        block = s.pixels[start : start + h * w].reshape(h, w, 4).permute(2, 0, 1)
        return block[:3].float() / 255.0, block[3:] >= 128

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_device_cache"] = {}
        return state


# ---------------------------------------------------------------------- helpers
def _scan(root: Path) -> list[BankEntry]:
    manifest = _read_manifest(root)
    entries = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = {p.name: p for p in class_dir.iterdir() if p.is_file()}
        for name in sorted(files):
            image_path = files[name]
            if not is_image_file(image_path) or image_path.stem.endswith(MASK_SUFFIX):
                continue
            mask_path = _find_mask(class_dir, image_path.stem, files)
            if mask_path is None:
                logger.debug("bank: %s has no mask, skipped", image_path)
                continue
            source_id = image_path.stem
            row = manifest.get(source_id, {})
            entries.append(
                BankEntry(
                    id=source_id,
                    cls=class_dir.name,
                    dataset=source_id.split("_", 1)[0] if "_" in source_id else source_id,
                    image_path=image_path,
                    mask_path=mask_path,
                    source_repo=row.get("source_repo", ""),
                )
            )
    return entries


def _find_mask(class_dir: Path, stem: str, files: dict[str, Path]) -> Path | None:
    for suffix in IMAGE_SUFFIXES:  # .png first
        candidate = files.get(f"{stem}{MASK_SUFFIX}{suffix}")
        if candidate is not None:
            return candidate
    return None


def _read_manifest(root: Path) -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in read_manifest(root)}


def _filter(
    entries: list[BankEntry],
    classes: Iterable[str] | None,
    exclude: str | Iterable[str] | None,
    root: Path,
) -> list[BankEntry]:
    names = set() if exclude is None else {exclude} if isinstance(exclude, str) else set(exclude)
    unmatched = sorted(name for name in names if not any(_matches(entry, {name}) for entry in entries))
    if unmatched:
        # a typo or an unread manifest would otherwise let the evaluated dataset in without a word
        warnings.warn(
            f"anomaly bank {root}: exclude name(s) {unmatched} match no entry (ids, id prefixes, "
            "MANIFEST source_repo): nothing was left out for them",
            stacklevel=3,
        )
    if classes is not None:
        wanted = [classes] if isinstance(classes, str) else list(classes)
        present = {entry.cls for entry in entries}
        unknown = sorted(set(wanted) - present)
        if unknown:
            raise ValueError(f"classes {unknown} are not in bank {root}; it has {sorted(present)}")
        entries = [entry for entry in entries if entry.cls in wanted]
    if names:
        entries = [entry for entry in entries if not _matches(entry, names)]
    if not entries:
        raise ValueError(f"anomaly bank {root} is empty after filtering (classes={classes}, exclude={exclude})")
    return entries


def _matches(entry: BankEntry, names: set[str]) -> bool:
    repo_tail = entry.source_repo.rstrip("/").rsplit("/", 1)[-1]
    return bool(names & {entry.id, entry.dataset, entry.source_repo, repo_tail} - {""})


def _crop_to_mask(image: np.ndarray, mask: np.ndarray, context: int) -> np.ndarray:
    """Crop ``(H, W, 3)`` image and ``(H, W)`` mask to the mask's bbox plus context -> ``(h, w, 4)`` uint8."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom = max(rows[0] - context, 0), min(rows[-1] + 1 + context, mask.shape[0])
    left, right = max(cols[0] - context, 0), min(cols[-1] + 1 + context, mask.shape[1])
    rgba = np.concatenate([image, mask[..., None].astype(np.uint8) * 255], axis=-1)
    return np.ascontiguousarray(rgba[top:bottom, left:right])


def _pack(crops: list[np.ndarray], max_levels: int) -> BankStorage:
    blocks, offsets, heights, widths, levels, bboxes = [], [], [], [], [], []
    cursor = 0
    for crop in crops:
        mask = crop[..., 3] > 0
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bboxes.append([rows[0], cols[0], rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]])
        level = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
        off, hs, ws = [], [], []
        for index in range(max_levels):
            if index > 0:
                if min(level.shape[-2:]) < 8:
                    break
                # Area averaging of the previous level: the antialiased mip pyramid.
                level = F.avg_pool2d(level, 2, ceil_mode=True)
            block = level[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).reshape(-1, 4)
            off.append(cursor)
            hs.append(level.shape[-2])
            ws.append(level.shape[-1])
            blocks.append(block)
            cursor += block.shape[0]
        levels.append(len(off))
        pad = max_levels - len(off)
        offsets.append(off + [off[-1]] * pad)
        heights.append(hs + [hs[-1]] * pad)
        widths.append(ws + [ws[-1]] * pad)
    return BankStorage(
        pixels=torch.cat(blocks),
        offset=torch.tensor(offsets, dtype=torch.int64),
        height=torch.tensor(heights, dtype=torch.int64),
        width=torch.tensor(widths, dtype=torch.int64),
        levels=torch.tensor(levels, dtype=torch.int64),
        bbox=torch.tensor(bboxes, dtype=torch.float32),
    )
