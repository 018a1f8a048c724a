"""CAI's pseudo anomalies as CDM training data: the folder that ``cai-aug synth`` writes.

Layout: ``images/*.png``, ``masks/<stem>_mask.png``, ``manifest.jsonl`` (one JSON record per sample).
Tolerant by design: the class of a sample comes from its manifest record (``source_class``, ``class``
or ``anomaly_class``), matched to the image by any path-like field or the file stem; without a
manifest (or a class in it) every sample is of the one class ``"anomaly"``. Images in nested folders
and masks beside their image (``<stem>_mask.png``) are found too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cai_aug.io.images import list_images, read_image, read_mask

DEFAULT_CLASS = "anomaly"
_CLASS_KEYS = ("source_class", "class", "anomaly_class")
_PATH_KEYS = ("image", "image_path", "path", "file", "filename", "name", "id", "key")


@dataclass(frozen=True)
class PseudoSample:
    image: Path
    mask: Path
    anomaly_class: str


def _manifest_classes(folder: Path) -> dict[str, str]:
    """Map of every path-like value of a record (full, name, stem) -> its class."""
    manifest = folder / "manifest.jsonl"
    lookup: dict[str, str] = {}
    if not manifest.is_file():
        return lookup
    for line in manifest.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        record = json.loads(line)
        info = record.get("info") if isinstance(record.get("info"), dict) else {}
        cls = next((str(r[k]) for r in (record, info) for k in _CLASS_KEYS if r.get(k)), None)
        if cls is None:
            continue
        for key in _PATH_KEYS:
            value = record.get(key)
            if isinstance(value, str | int) and str(value):
                value = str(value)
                for alias in (value, Path(value).name, Path(value).stem):
                    lookup.setdefault(alias, cls)
    return lookup


def _find_mask(folder: Path, image: Path) -> Path | None:
    rel = image.relative_to(folder)
    parts = rel.parts[1:] if rel.parts and rel.parts[0] == "images" else rel.parts
    name = f"{image.stem}_mask.png"
    for candidate in (
        folder / "masks" / Path(*parts).with_name(name),
        folder / "masks" / name,
        image.with_name(name),
    ):
        if candidate.is_file():
            return candidate
    return None


def scan_pseudo_folder(folder: str | Path) -> list[PseudoSample]:
    """Image/mask/class triples of a pseudo-anomaly folder, sorted by image path."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"pseudo-anomaly folder {str(root)!r} does not exist")
    search = root / "images" if (root / "images").is_dir() else root
    try:
        images = list_images(search, what="pseudo-anomaly folder")  # the package's one listing rules
    except ValueError:
        images = []  # reported below, with the layout expected
    classes = _manifest_classes(root)
    samples = []
    for image in images:
        mask = _find_mask(root, image)
        if mask is None:
            continue
        rel = image.relative_to(root).as_posix()
        cls = next((classes[a] for a in (rel, image.name, image.stem) if a in classes), DEFAULT_CLASS)
        samples.append(PseudoSample(image, mask, cls))
    if not samples:
        raise ValueError(
            f"no image/mask pairs in {str(root)!r}: expected the layout of `cai-aug synth` "
            "(images/*.png, masks/<stem>_mask.png, manifest.jsonl)"
        )
    return samples


def load_pair(sample: PseudoSample, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``(3, R, R)`` float in [0, 1] and mask ``(1, R, R)`` in {0, 1} at the training resolution."""
    image = read_image(sample.image, "RGB").astype(np.float32) / 255.0
    mask = read_mask(sample.mask)
    img = torch.from_numpy(image).permute(2, 0, 1)[None]
    msk = torch.from_numpy(mask.astype(np.float32))[None, None]
    img = F.interpolate(img, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    # Max-pool-like resize for the mask: a thin crack must not vanish when downscaled.
    msk = (F.interpolate(msk, size=(resolution, resolution), mode="area") > 0).float()
    return img[0].clamp(0, 1), msk[0]


class PseudoAnomalyDataset(torch.utils.data.Dataset):
    """``(image (3,R,R), mask (1,R,R), class index)`` items of a pseudo-anomaly folder."""

    def __init__(self, folder: str | Path, resolution: int, classes: list[str] | None = None) -> None:
        samples = scan_pseudo_folder(folder)
        present = sorted({s.anomaly_class for s in samples})
        if classes:
            unknown = sorted(set(classes) - set(present))
            if unknown:
                raise ValueError(f"class(es) {unknown} have no samples in {folder}; present: {present}")
            samples = [s for s in samples if s.anomaly_class in classes]
            self.classes = list(classes)
        else:
            self.classes = present
        self.samples = samples
        self.resolution = resolution
        self._index = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = self.samples[i]
        image, mask = load_pair(sample, self.resolution)
        return image, mask, self._index[sample.anomaly_class]
