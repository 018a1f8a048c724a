"""Build an anomaly bank from MVTec-layout datasets (no algorithm: copying, mapping and provenance).

An MVTec-layout dataset holds ``test/<defect>/<stem>.<ext>`` with masks in
``ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.png``, the layout anomalib writes for VisA). A
folder whose sub-folders are such datasets (the MVTec AD root) is taken as one dataset per sub-folder.
Each defect name is mapped to a bank class (:data:`DEFAULT_DEFECT_MAP` plus the caller's overrides);
unmapped defects are skipped and counted. Entries are written as
``<bank>/<class>/<dataset>_<defect>_<stem>.png`` + ``_mask.png`` (0/255) and recorded in
``<bank>/MANIFEST.csv`` (``id,class,source_repo,source_path,license_if_known``, the dataset name in
``source_repo``). A dataset named as the one under evaluation (``exclude_datasets``) is refused.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cai_aug.io.images import IMAGE_SUFFIXES, is_image_file, read_image, write_image

MANIFEST_COLUMNS = ("id", "class", "source_repo", "source_path", "license_if_known")
SKIP = "-"  # map a defect to this to skip it explicitly

# Defect name -> bank class (the paper's eight: pits, crack, hole, stain, scratch, orifice, impurity,
# abrasion). Names are matched after normalisation (lower case, spaces and dashes as underscores).
# Logical and structural anomalies (missing, misplaced, swapped, bent, flipped parts, wrong prints)
# are no surface defects to transplant: they are absent here and skipped unless mapped explicitly.
DEFAULT_DEFECT_MAP: dict[str, str] = {
    # MVTec AD
    "crack": "crack",
    "broken": "crack",
    "scratch": "scratch",
    "scratch_head": "scratch",
    "scratch_neck": "scratch",
    "hole": "hole",
    "poke": "hole",
    "poke_insulation": "hole",
    "color": "stain",
    "glue": "stain",
    "glue_strip": "stain",
    "oil": "stain",
    "liquid": "stain",
    "gray_stroke": "stain",
    "contamination": "impurity",
    "metal_contamination": "impurity",
    "thread": "impurity",
    "cut": "orifice",
    "cut_inner_insulation": "orifice",
    "cut_outer_insulation": "orifice",
    "broken_large": "orifice",
    "broken_small": "orifice",
    "rough": "abrasion",
    "damaged_case": "abrasion",
    # VisA annotation labels (VisA in anomalib's MVTec layout puts every defect in "bad": map it)
    "small_scratches": "scratch",
    "scratches": "scratch",
    "breakage": "crack",
    "middle_breakage": "crack",
    "chip": "orifice",
    "corner_missing": "orifice",
    "burnt": "stain",
    "spot": "stain",
    "similar_colour_spot": "stain",
    "different_colour_spot": "stain",
    "discolor": "stain",
    "discoloration": "stain",
    "stain": "stain",
    "melt": "abrasion",
    "damage": "abrasion",
    "particle": "impurity",
    "foreign": "impurity",
    # generic names
    "pit": "pits",
    "pits": "pits",
    "pitting": "pits",
    "dent": "pits",
    "pin_hole": "hole",
    "pinhole": "hole",
    "abrasion": "abrasion",
    "wear": "abrasion",
    "impurity": "impurity",
    "inclusion": "impurity",
    "orifice": "orifice",
}


@dataclass
class BuildReport:
    """What a build added and skipped."""

    datasets: list[str] = field(default_factory=list)
    added: Counter = field(default_factory=Counter)  # class -> entries written
    unmapped: Counter = field(default_factory=Counter)  # "<dataset>/<defect>" -> images skipped
    empty_masks: int = 0
    missing_masks: int = 0
    replaced: int = 0  # entries already in the manifest, rewritten

    def summary(self) -> str:
        lines = [f"added {sum(self.added.values())} entries from {', '.join(self.datasets) or 'no dataset'}"]
        lines += [f"  {cls}: {count}" for cls, count in sorted(self.added.items())]
        if self.replaced:
            lines.append(f"  ({self.replaced} already in the manifest were rewritten, not duplicated)")
        if self.unmapped:
            skipped = ", ".join(f"{name} ({count})" for name, count in sorted(self.unmapped.items()))
            lines.append(f"skipped {sum(self.unmapped.values())} images of unmapped defects: {skipped}")
            lines.append("  map them with --map DEFECT=CLASS (DEFECT=- skips a defect silently)")
        if self.empty_masks:
            lines.append(f"skipped {self.empty_masks} images with an empty mask")
        if self.missing_masks:
            lines.append(f"skipped {self.missing_masks} images without a mask file")
        return "\n".join(lines)


def normalise_name(name: str) -> str:
    """Defect names compare lower case, with spaces and dashes as underscores."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def dataset_slug(name: str) -> str:
    """A dataset name as used in ids: lower case, no underscores (ids are split at the first ``_``)."""
    slug = re.sub(r"[^0-9a-z]+", "-", name.strip().lower()).strip("-")
    if not slug:
        raise ValueError(f"dataset name {name!r} has no letters or digits")
    return slug


def parse_map(text: str | Iterable[str] | None) -> dict[str, str]:
    """``"crack=crack,scratch=scratch"`` (or a list of such strings) -> ``{defect: class}``."""
    if text is None:
        return {}
    parts = [text] if isinstance(text, str) else list(text)
    mapping: dict[str, str] = {}
    for part in parts:
        for item in part.split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise ValueError(f"--map entries are DEFECT=CLASS, got {item!r}")
            defect, cls = (s.strip() for s in item.split("=", 1))
            if not defect or not cls:
                raise ValueError(f"--map entries are DEFECT=CLASS, got {item!r}")
            mapping[normalise_name(defect)] = cls
    return mapping


def is_mvtec_dataset(path: Path) -> bool:
    return (path / "test").is_dir() and (path / "ground_truth").is_dir()


def find_datasets(path: str | os.PathLike) -> list[Path]:
    """``path`` if it is an MVTec-layout dataset, else its sub-folders that are (an MVTec AD root)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if is_mvtec_dataset(root):
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and is_mvtec_dataset(p))
    if not found:
        raise ValueError(
            f"{root} is no MVTec-layout dataset (test/<defect>/, ground_truth/<defect>/) nor a folder of them"
        )
    return found


def _find_mask(dataset: Path, defect: str, image: Path) -> Path | None:
    folder = dataset / "ground_truth" / defect
    for stem in (f"{image.stem}_mask", image.stem):
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def read_manifest(bank: Path) -> list[dict[str, str]]:
    path = bank / "MANIFEST.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


def write_manifest(bank: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """Write ``MANIFEST.csv`` atomically (temporary name, then rename)."""
    path = bank / "MANIFEST.csv"
    tmp = path.with_name(".MANIFEST.csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MANIFEST_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in MANIFEST_COLUMNS})
    os.replace(tmp, path)


def _excluded(names: Iterable[str], exclude: Iterable[str]) -> str | None:
    excluded = {dataset_slug(name) for name in exclude}
    for name in names:
        if dataset_slug(name) in excluded:
            return name
    return None


def _resize(image: np.ndarray, mask: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    height, width = mask.shape
    if max_side is None or max(height, width) <= max_side:
        return image, mask
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
    return image, mask


def build_bank(
    datasets: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    mapping: Mapping[str, str] | None = None,
    *,
    dataset_names: Sequence[str] | None = None,
    exclude_datasets: Sequence[str] = (),
    use_default_map: bool = True,
    license_text: str = "",
    max_side: int | None = None,
) -> BuildReport:
    """Add the test defects of MVTec-layout datasets to the bank ``out`` (created or extended).

    Args:
        datasets: MVTec-layout dataset folders, or folders of them (each sub-folder one dataset).
        out: the bank folder.
        mapping: defect name -> bank class, on top of :data:`DEFAULT_DEFECT_MAP` (``"-"`` skips).
        dataset_names: one name per entry of ``datasets`` (default: the folder name; for a folder of
            datasets, ``<name>-<sub-folder>``). Names go into ids and ``source_repo``.
        exclude_datasets: the dataset(s) under evaluation: adding one of them is refused, as is a
            bank that already holds entries of one (the bank would leak its test defects).
        use_default_map: start from :data:`DEFAULT_DEFECT_MAP` (else only ``mapping`` is used).
        license_text: written into ``license_if_known``.
        max_side: downscale sources whose longest side exceeds this (image Lanczos, mask nearest).
    """
    if dataset_names is not None and len(dataset_names) != len(datasets):
        raise ValueError(f"got {len(dataset_names)} dataset names for {len(datasets)} dataset folders")
    table = dict(DEFAULT_DEFECT_MAP) if use_default_map else {}
    table.update({normalise_name(k): v for k, v in (mapping or {}).items()})

    # Resolve every dataset and its name first: nothing is written when one is refused.
    jobs: list[tuple[Path, str]] = []
    for index, given in enumerate(datasets):
        folders = find_datasets(given)
        base = dataset_names[index] if dataset_names is not None else Path(given).resolve().name
        for folder in folders:
            name = base if folders == [Path(given)] else f"{base}-{folder.name}"
            hit = _excluded([name, base, folder.name], exclude_datasets)
            if hit is not None:
                raise ValueError(
                    f"refusing to add dataset {name!r} ({folder}): it is the dataset under evaluation "
                    f"(--exclude-dataset {hit}); its defects must not be training anomalies"
                )
            jobs.append((folder, dataset_slug(name)))

    bank = Path(out)
    rows = read_manifest(bank)
    leaked = [
        row
        for row in rows
        if _excluded([row.get("source_repo", ""), row.get("id", "").split("_")[0]], exclude_datasets)
    ]
    if leaked:
        raise ValueError(
            f"bank {bank} already holds {len(leaked)} entries of the dataset under evaluation "
            f"({leaked[0].get('source_repo') or leaked[0].get('id')}): build a separate bank"
        )
    by_id = {row["id"]: index for index, row in enumerate(rows)}
    report = BuildReport()
    for folder, name in jobs:
        report.datasets.append(name)
        for defect_dir in sorted(p for p in (folder / "test").iterdir() if p.is_dir()):
            defect = defect_dir.name
            if defect.lower() in ("good", "ok", "normal"):
                continue
            cls = table.get(normalise_name(defect))
            images = sorted(p for p in defect_dir.iterdir() if p.is_file() and is_image_file(p))
            if cls is None:
                report.unmapped[f"{name}/{defect}"] += len(images)
                continue
            if cls == SKIP:
                continue
            for image_path in images:
                mask_path = _find_mask(folder, defect, image_path)
                if mask_path is None:
                    report.missing_masks += 1
                    continue
                mask = read_image(mask_path, "L") > 0
                if not mask.any():
                    report.empty_masks += 1
                    continue
                image = read_image(image_path, "RGB")
                if image.shape[:2] != mask.shape:
                    raise ValueError(
                        f"mask {mask_path} is {mask.shape[::-1]}, image {image_path} is {image.shape[1::-1]}"
                    )
                image, mask = _resize(image, mask, max_side)
                entry_id = f"{name}_{normalise_name(defect)}_{image_path.stem}"
                target = bank / cls
                target.mkdir(parents=True, exist_ok=True)
                write_image(target / f"{entry_id}.png", image)
                write_image(target / f"{entry_id}_mask.png", mask.astype(np.uint8) * 255)
                row = {
                    "id": entry_id,
                    "class": cls,
                    "source_repo": name,
                    "source_path": f"{image_path.relative_to(folder).as_posix()} | "
                    f"{mask_path.relative_to(folder).as_posix()}",
                    "license_if_known": license_text,
                }
                if entry_id in by_id:
                    old = rows[by_id[entry_id]]
                    if old.get("class") != cls:  # the entry moved class: drop its old files
                        for suffix in (".png", "_mask.png"):
                            (bank / old.get("class", "") / f"{entry_id}{suffix}").unlink(missing_ok=True)
                    rows[by_id[entry_id]] = row
                    report.replaced += 1
                else:
                    by_id[entry_id] = len(rows)
                    rows.append(row)
                report.added[cls] += 1
    bank.mkdir(parents=True, exist_ok=True)
    write_manifest(bank, rows)
    return report
