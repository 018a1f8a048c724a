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

import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cai_aug.io.bank_files import (
    MANIFEST_COLUMNS,
    check_class,
    defect_mask,
    id_problem,
    read_manifest,
    shown,
    write_manifest,
)
from cai_aug.io.images import IMAGE_SUFFIXES, is_image_file, open_image, read_image, write_image

__all__ = ["DEFAULT_DEFECT_MAP", "MANIFEST_COLUMNS", "BuildReport", "build_bank", "parse_map", "read_manifest"]
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
    """What a build added and skipped (``bad``: ``(file, reason)`` of each unusable source)."""

    datasets: list[str] = field(default_factory=list)
    added: Counter = field(default_factory=Counter)  # class -> entries written
    unmapped: Counter = field(default_factory=Counter)  # "<dataset>/<defect>" -> images skipped
    empty_masks: int = 0
    missing_masks: int = 0
    replaced: int = 0  # entries already in the manifest, rewritten
    bad: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # manifest rows whose entry files were gone

    def summary(self, shown_bad: int = 10) -> str:
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
        if self.bad:
            lines.append(f"skipped {len(self.bad)} unusable files (--strict stops at the first):")
            lines += [f"  {path}: {reason}" for path, reason in self.bad[:shown_bad]]
            if len(self.bad) > shown_bad:
                lines.append(f"  ... and {len(self.bad) - shown_bad} more")
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} manifest rows whose entry files are gone: {self.dropped[:5]}")
        return shown("\n".join(lines), lines=True)


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


def _bank_folder(out: str | os.PathLike, datasets: Sequence[Path]) -> Path:
    """The bank folder, refused when it is a file or overlaps a dataset (outputs never touch inputs)."""
    bank = Path(out)
    if bank.exists() and not bank.is_dir():
        raise ValueError(f"bank folder {bank} is a file")
    real = bank.resolve()
    for folder in datasets:
        source = folder.resolve()
        if real == source or source in real.parents or real in source.parents:
            raise ValueError(f"bank folder {bank} overlaps the dataset folder {folder}: choose a folder apart from it")
    return bank


def _class_folder(bank: Path, cls: str) -> Path:
    """``<bank>/<cls>``, refused when it exists as anything but a real folder (a link may lead outside)."""
    folder = bank / check_class(cls, "bank")
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"{folder} is a link or a file, not a class folder: refused (it may lead outside the bank)")
    return folder


def _entry_files(bank: Path, row: Mapping[str, str]) -> list[Path]:
    folder = bank / row["class"]
    return [folder / f"{row['id']}{suffix}" for suffix in (".png", "_mask.png")]


def _remove_stale_staging(bank: Path) -> None:
    """Staging folders of builds that were killed (their process is gone)."""
    for folder in bank.glob(".build-*"):
        pid = folder.name.removeprefix(".build-")
        if not pid.isdigit() or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, another user's: leave it
            pass


@dataclass
class _Staged:
    row: dict[str, str]
    image: Path
    mask: Path


def _read_source(
    image_path: Path, mask_path: Path, mask_threshold: float, max_side: int | None
) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """``(image, mask, None)``, ``(None, None, reason)`` for an unusable pair, ``(None, None, None)`` for an
    empty mask."""
    try:
        mask = defect_mask(open_image(mask_path), mask_threshold)
    except ValueError as error:
        return None, None, str(error)
    if not mask.any():
        return None, None, None
    try:
        image = read_image(image_path, "RGB")
    except ValueError as error:
        return None, None, str(error)
    if image.shape[:2] != mask.shape:
        sizes = f"{mask.shape[1]}x{mask.shape[0]}, image is {image.shape[1]}x{image.shape[0]}"
        return None, None, f"mask {mask_path} is {sizes}"
    image, mask = _resize(image, mask, max_side)
    return image, mask, None


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
    strict: bool = False,
    mask_threshold: float = 0,
) -> BuildReport:
    """Add the test defects of MVTec-layout datasets to the bank ``out`` (created or extended), all or nothing.

    Every check (names, classes, the manifest, folders) runs before anything is written; entries are
    decoded and written to a staging folder inside the bank, then moved into place and listed in
    ``MANIFEST.csv``, so a failed build changes nothing and the manifest lists every entry written.
    Nothing is written or deleted outside ``out``.

    Args:
        datasets: MVTec-layout dataset folders, or folders of them (each sub-folder one dataset).
        out: the bank folder; it may not lie inside a dataset folder nor contain one.
        mapping: defect name -> bank class, on top of :data:`DEFAULT_DEFECT_MAP` (``"-"`` skips).
            A class is a plain folder name (letters, digits, ``_-.+``); a path is refused.
        dataset_names: one name per entry of ``datasets`` (default: the folder name; for a folder of
            datasets, ``<name>-<sub-folder>``). Names go into ids and ``source_repo``.
        exclude_datasets: the dataset(s) under evaluation: adding one of them is refused, as is a
            bank that already holds entries of one (the bank would leak its test defects).
        use_default_map: start from :data:`DEFAULT_DEFECT_MAP` (else only ``mapping`` is used).
        license_text: written into ``license_if_known``.
        max_side: downscale sources whose longest side exceeds this (image Lanczos, mask nearest).
        strict: stop at the first unusable source (unreadable, mask of another size, no mask, empty
            mask, a name that cannot be an id) instead of skipping it and reporting it.
        mask_threshold: a mask pixel is a defect where its value exceeds this, in the file's own units
            (0: any non-zero label of an 8-bit, 16-bit or colour mask; see
            :func:`cai_aug.io.bank_files.defect_mask`).

    Raises:
        ValueError: a refused dataset, class, manifest or bank folder, or with ``strict`` an unusable
            source; nothing is written then.
    """
    if dataset_names is not None and len(dataset_names) != len(datasets):
        raise ValueError(f"got {len(dataset_names)} dataset names for {len(datasets)} dataset folders")
    if max_side is not None and max_side < 1:
        raise ValueError(f"--max-side must be >= 1, got {max_side}")
    if not 0 <= mask_threshold < 65535:
        raise ValueError(f"--mask-threshold must lie in [0, 65535), got {mask_threshold}")
    table = dict(DEFAULT_DEFECT_MAP) if use_default_map else {}
    table.update({normalise_name(k): v for k, v in (mapping or {}).items()})
    for defect, cls in table.items():
        if cls != SKIP:
            check_class(cls, f"--map {defect}={cls}")

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

    bank = _bank_folder(out, [folder for folder, _ in jobs])
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
    for row in rows:
        _class_folder(bank, row["class"])
    created = not bank.exists()
    bank.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(bank)
    staging = bank / f".build-{os.getpid()}"
    if staging.is_symlink() or staging.is_file():
        staging.unlink()  # never staged through a link
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        report, staged = _stage(jobs, table, staging, license_text, max_side, strict, mask_threshold)
        _commit(bank, rows, staged, report)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(bank.iterdir()):
            bank.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return report


def _stage(
    jobs: Sequence[tuple[Path, str]],
    table: Mapping[str, str],
    staging: Path,
    license_text: str,
    max_side: int | None,
    strict: bool,
    mask_threshold: float,
) -> tuple[BuildReport, list[_Staged]]:
    """Decode every source and write the usable ones under ``staging/<class>/``."""
    report = BuildReport()
    staged: dict[str, _Staged] = {}
    origin: dict[str, Path] = {}

    def skip(path: Path, reason: str) -> None:
        if strict:
            raise ValueError(shown(f"{path}: {reason} (--strict stops here; without it the file is skipped)"))
        report.bad.append((shown(path), shown(reason)))

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
                entry_id = f"{name}_{normalise_name(defect)}_{image_path.stem}"
                problem = id_problem(entry_id)
                if problem is not None:
                    skip(image_path, f"its name cannot make a bank entry: {problem}")
                    continue
                if entry_id in origin:
                    skip(image_path, f"same entry id {entry_id!r} as {shown(origin[entry_id])}")
                    continue
                mask_path = _find_mask(folder, defect, image_path)
                if mask_path is None:
                    if strict:
                        skip(image_path, "no mask file in ground_truth/")
                    report.missing_masks += 1
                    continue
                image, mask, reason = _read_source(image_path, mask_path, mask_threshold, max_side)
                if reason is not None:
                    skip(image_path, reason)
                    continue
                if image is None or mask is None:
                    if strict:
                        skip(mask_path, f"empty mask (no value above --mask-threshold {mask_threshold:g})")
                    report.empty_masks += 1
                    continue
                target = staging / cls
                target.mkdir(parents=True, exist_ok=True)
                entry = _Staged(
                    row={
                        "id": entry_id,
                        "class": cls,
                        "source_repo": name,
                        "source_path": shown(
                            f"{image_path.relative_to(folder).as_posix()} | {mask_path.relative_to(folder).as_posix()}"
                        ),
                        "license_if_known": license_text,
                    },
                    image=target / f"{entry_id}.png",
                    mask=target / f"{entry_id}_mask.png",
                )
                write_image(entry.image, image)
                write_image(entry.mask, mask.astype(np.uint8) * 255)
                staged[entry_id] = entry
                origin[entry_id] = image_path
                report.added[cls] += 1
    return report, list(staged.values())


def _commit(bank: Path, rows: list[dict[str, str]], staged: Sequence[_Staged], report: BuildReport) -> None:
    """Move staged entries into place, drop the files of entries that changed class, write the manifest."""
    for cls in sorted({entry.row["class"] for entry in staged}):
        _class_folder(bank, cls)  # checked again right before writing: nothing moved if one is refused
    by_id = {row["id"]: index for index, row in enumerate(rows)}
    for entry in staged:
        new = entry.row
        folder = bank / new["class"]
        folder.mkdir(exist_ok=True)
        os.replace(entry.image, folder / entry.image.name)
        os.replace(entry.mask, folder / entry.mask.name)
        if new["id"] in by_id:
            old = rows[by_id[new["id"]]]
            if old["class"] != new["class"]:  # the entry moved class: drop its old files (inside the bank)
                for path in _entry_files(bank, old):
                    path.unlink(missing_ok=True)
            rows[by_id[new["id"]]] = {**old, **new}
            report.replaced += 1
        else:
            by_id[new["id"]] = len(rows)
            rows.append(new)
    kept = []
    for row in rows:
        if _has_entry(bank, row):
            kept.append(row)
        else:
            report.dropped.append(row["id"])
    write_manifest(bank, kept)


def _has_entry(bank: Path, row: Mapping[str, str]) -> bool:
    """Whether the entry of ``row`` exists: its image and its mask, of any image suffix."""
    folder = bank / row["class"]
    images = [folder / f"{row['id']}{suffix}" for suffix in IMAGE_SUFFIXES]
    masks = [folder / f"{row['id']}_mask{suffix}" for suffix in IMAGE_SUFFIXES]
    return any(p.is_file() for p in images) and any(p.is_file() for p in masks)
