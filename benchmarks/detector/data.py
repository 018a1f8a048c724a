"""MVTec-layout datasets, image loading, and the bank leakage guard."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cai_aug.io.images import list_images


@dataclass
class TestItem:
    image: Path
    mask: Path | None  # None for good images
    defect: str


@dataclass
class MVTecData:
    root: Path
    train: list[Path]
    test: list[TestItem] = field(default_factory=list)

    @property
    def anomalous(self) -> list[TestItem]:
        return [t for t in self.test if t.mask is not None]


def load_mvtec(root: str | Path) -> MVTecData:
    """``train/good/*``, ``test/<defect>/*``, ``ground_truth/<defect>/<stem>_mask.png``."""
    root = Path(root)
    train_dir = root / "train" / "good"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{train_dir} is missing: --data must be an MVTec-layout folder")
    data = MVTecData(root=root, train=list_images(train_dir))
    if not data.train:
        raise FileNotFoundError(f"no images in {train_dir}")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir} is missing: --data must be an MVTec-layout folder")
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for img in list_images(defect_dir):
            if defect_dir.name == "good":
                data.test.append(TestItem(img, None, "good"))
                continue
            gt_dir = root / "ground_truth" / defect_dir.name
            candidates = [gt_dir / f"{img.stem}_mask{s}" for s in (".png", img.suffix)] + [gt_dir / img.name]
            mask = next((c for c in candidates if c.exists()), None)
            if mask is None:
                raise FileNotFoundError(f"no ground-truth mask for {img} under {gt_dir}")
            data.test.append(TestItem(img, mask, defect_dir.name))
    return data


def working_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """``(h, w)`` with the long side ``long_side`` and the aspect kept; ``shape`` itself when smaller."""
    h, w = shape
    scale = min(1.0, long_side / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def load_image(path: str | Path, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """RGB float tensor ``(3,H,W)`` in [0,1], resized (antialiased bicubic) to ``size`` x ``size``
    (or to ``size = (h, w)``)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != _hw(size)[::-1]:
            im = im.resize(_hw(size)[::-1], Image.BICUBIC, reducing_gap=None)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).clamp_(0, 1)


def load_mask(path: str | Path | None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean mask at its own resolution (``shape`` gives an all-False mask when ``path`` is None)."""
    if path is None:
        if shape is None:
            raise ValueError("shape is needed for a good image")
        return np.zeros(shape, dtype=bool)
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """``(1,h,w)`` float {0,1} (``size`` = h = w, or ``(h, w)``): a pixel is anomalous if any source
    pixel under it is (keeps thin defects at low resolution)."""
    h, w = _hw(size)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    if tuple(t.shape[-2:]) == (h, w):
        out = t
    elif t.shape[-1] >= w and t.shape[-2] >= h:
        out = torch.nn.functional.adaptive_max_pool2d(t, (h, w))
    else:
        out = torch.nn.functional.interpolate(t, size=(h, w), mode="nearest")
    return (out[0] > 0).float()


def image_size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]


# ----------------------------------------------------------------------------------------- leakage guard


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def dataset_names(data_root: str | Path, extra: list[str] | None = None) -> set[str]:
    """Names that identify the dataset under test: its folder name and its parent's (e.g. ``mvtec``
    and ``leather`` for ``mvtec/leather``), their concatenation, ``extra`` (``--dataset-name``), and
    every ``source_repo`` of a ``sources.csv`` or ``MANIFEST.csv`` inside it."""
    root = Path(data_root).resolve()
    names = {root.name, root.parent.name, root.parent.name + root.name}
    names.update(extra or [])
    for meta in ("sources.csv", "MANIFEST.csv"):
        path = root / meta
        if path.exists():
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    repo = (row.get("source_repo") or "").strip()
                    if repo:
                        names.add(repo)
                        names.add(repo.split("/")[-1])
    return {n for n in names if len(_norm(n)) >= 3}


def bank_provenance(bank_root: str | Path) -> list[tuple[str, str]]:
    """``(id, source_repo)`` of every bank entry (MANIFEST.csv when present, else file names)."""
    bank_root = Path(bank_root)
    manifest = bank_root / "MANIFEST.csv"
    if manifest.exists():
        with manifest.open(newline="") as fh:
            return [(row["id"], (row.get("source_repo") or "").strip()) for row in csv.DictReader(fh)]
    return [(p.stem, "") for p in list_images(bank_root)]


def leaking_entries(bank_root: str | Path, names: set[str]) -> list[str]:
    """Bank ids whose provenance names the dataset under test: the id's prefix (before the first
    ``_``) starts with or is the start of a name, or the ``source_repo`` equals a name (all compared
    lower-case, alphanumerics only)."""
    keys = {_norm(n) for n in names}
    repos = {n.lower() for n in names if "/" in n}
    hits = []
    for entry_id, repo in bank_provenance(bank_root):
        prefix = _norm(entry_id.split("_")[0])
        by_prefix = len(prefix) >= 3 and any(prefix.startswith(k) or k.startswith(prefix) for k in keys)
        by_repo = bool(repo) and (repo.lower() in repos or _norm(repo.split("/")[-1]) in keys)
        if by_prefix or by_repo:
            hits.append(entry_id)
    return hits


class LeakageError(RuntimeError):
    pass


def check_leakage(
    bank_root: str | Path,
    data_root: str | Path,
    extra_names: list[str] | None = None,
    exclude: list[str] | None = None,
) -> list[str]:
    """Raise LeakageError when the bank holds entries of the dataset under test that ``exclude`` does
    not remove; returns the names that were matched (empty when the bank is clean)."""
    names = dataset_names(data_root, extra_names)
    hits = leaking_entries(bank_root, names)
    if exclude:
        excl = {_norm(e) for e in exclude}
        prov = dict(bank_provenance(bank_root))
        hits = [
            h
            for h in hits
            if _norm(h) not in excl and _norm(h.split("_")[0]) not in excl and _norm(prov.get(h, "")) not in excl
        ]
    if hits:
        shown = ", ".join(hits[:5]) + (f" and {len(hits) - 5} more" if len(hits) > 5 else "")
        raise LeakageError(
            f"the anomaly bank {bank_root} holds {len(hits)} entries from the dataset under test "
            f"(matched names: {sorted(names)}): {shown}. Exclude them with --bank-exclude "
            f"{hits[0].split('_')[0]} (or their source_repo), or pass --force to use them anyway."
        )
    return sorted(names)
