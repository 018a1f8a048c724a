"""A pseudo-anomaly validation set from held-out normal images, for choosing a detector's epoch and
threshold without real defects.

The bank is split by source dataset (the id prefix before ``_``, e.g. ``neu`` of ``neu_crack_0001``):
the validation set is made only from sources that training never sees, so the detector is not
validated on the textures it was trained on. ``split_bank_sources`` makes that split;
``write_validation_set`` writes the set in MVTec AD's layout (``test/good``, ``test/<class>``,
``ground_truth/<class>/<stem>_mask.png``), which anomalib's ``Folder`` datamodule and most
anomaly-detection code read as is.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cai_aug.engine.bank import AnomalyBank
    from cai_aug.engine.cai import CAI

GOOD = "good"
RECORD = "validation.json"


@dataclass(frozen=True)
class SourceSplit:
    """Source datasets of a bank, split into validation and training.

    Attributes
    ----------
    validation, training : tuple of str
        Source dataset names (id prefixes), sorted.
    counts : dict
        Bank entries per source dataset.
    """

    validation: tuple[str, ...]
    training: tuple[str, ...]
    counts: dict[str, int]

    def describe(self) -> str:
        """One line naming both sides and their entry counts."""
        n_val = sum(self.counts[s] for s in self.validation)
        n_train = sum(self.counts[s] for s in self.training)
        return (
            f"validation sources {', '.join(self.validation)} ({n_val} entries); "
            f"training sources {', '.join(self.training)} ({n_train} entries)"
        )


def source_of(entry_id: str) -> str:
    """The source dataset of a bank id: its prefix before the first ``_`` (the whole id without one)."""
    return entry_id.split("_", 1)[0]


def _rank(name: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()


def split_sources(
    counts: dict[str, int], fraction: float = 0.25, seed: int = 0, validation: Iterable[str] | None = None
) -> SourceSplit:
    """Split source datasets into validation and training.

    Sources are taken in an order fixed by a hash of ``(seed, name)`` (independent of the bank's
    content, so adding one source does not reshuffle the others); each is put on the validation side
    while the validation side stays within ``fraction`` of the entries. At least one source goes to
    each side.

    Parameters
    ----------
    counts : dict
        Entries per source dataset (at least two sources).
    fraction : float
        Largest share of entries on the validation side, in ``(0, 1)``.
    seed : int
        Changes the hash order.
    validation : iterable of str, optional
        The validation sources, chosen by hand (the rest train).

    Returns
    -------
    SourceSplit
    """
    if len(counts) < 2:
        raise ValueError(f"a split by source needs at least two source datasets, the bank has {sorted(counts)}")
    if validation is not None:
        chosen = set(validation)
        unknown = sorted(chosen - set(counts))
        if unknown:
            raise ValueError(f"validation sources {unknown} are not in the bank; it has {sorted(counts)}")
        if not chosen or chosen == set(counts):
            raise ValueError("the validation sources must be a non-empty proper subset of the bank's sources")
    else:
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        total = sum(counts.values())
        chosen, size = set(), 0
        for name in sorted(counts, key=lambda n: _rank(n, seed)):
            if size + counts[name] <= fraction * total and len(chosen) < len(counts) - 1:
                chosen.add(name)
                size += counts[name]
        if not chosen:  # every source is larger than the fraction: the smallest one validates
            chosen = {min(counts, key=lambda n: (counts[n], _rank(n, seed)))}
    return SourceSplit(
        validation=tuple(sorted(chosen)),
        training=tuple(sorted(set(counts) - chosen)),
        counts=dict(sorted(counts.items())),
    )


def bank_source_counts(bank: str | Path) -> dict[str, int]:
    """Entries per source dataset of a bank folder (``<bank>/<class>/<id>.png`` with a mask)."""
    from cai_aug.io.images import list_images

    root = Path(bank)
    if not root.is_dir():
        raise FileNotFoundError(f"anomaly bank folder {root} does not exist")
    return dict(Counter(source_of(p.stem) for p in list_images(root, what="anomaly bank folder")))


def split_bank_sources(
    bank: str | Path, fraction: float = 0.25, seed: int = 0, validation: Sequence[str] | None = None
) -> SourceSplit:
    """``split_sources`` of a bank folder's source datasets."""
    return split_sources(bank_source_counts(bank), fraction, seed, validation)


@dataclass
class ValidationSet:
    """What :func:`write_validation_set` wrote.

    Attributes
    ----------
    root : Path
        The MVTec-layout folder.
    good : int
        Normal images under ``test/good``.
    anomalies : dict
        Pseudo anomalies per class folder ``test/<class>``.
    sources : tuple of str or None
        The bank's source datasets the anomalies come from (None: the whole bank given).
    skipped : list of str
        Normal images on which no pseudo anomaly could be placed (they are still good images).
    """

    root: Path
    good: int
    anomalies: dict[str, int] = field(default_factory=dict)
    sources: tuple[str, ...] | None = None
    skipped: list[str] = field(default_factory=list)


def _class_folder(name: str | None) -> str:
    """A folder name for a bank class: ``good`` is taken by the normal images, so it becomes ``good_``."""
    text = re.sub(r"[^A-Za-z0-9._-]", "_", name or "") or "pseudo"
    return text + "_" if text == GOOD else text


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def write_validation_set(
    normal: str | Path,
    bank: str | Path | AnomalyBank,
    out: str | Path,
    *,
    per_image: int = 1,
    sources: Sequence[str] | None = None,
    seed: int = 0,
    cai: CAI | None = None,
    **options,
) -> ValidationSet:
    """Write a pseudo-anomaly validation set in MVTec AD's layout from held-out normal images.

    Every normal image goes to ``test/good`` (as PNG, in its own mode and bit depth), and ``per_image``
    pseudo anomalies made on it go to ``test/<class>/<stem>_<k>.png`` with their masks at
    ``ground_truth/<class>/<stem>_<k>_mask.png``, ``<class>`` being the bank class of the defect that
    was placed. A record of what was written is ``validation.json``. The folder is what anomalib's
    ``Folder`` datamodule, or any MVTec AD reader, takes as a test or validation set.

    Parameters
    ----------
    normal : str or Path
        Folder of normal images that training never sees (hold them out of the training set).
    bank : str, Path or AnomalyBank
        The anomaly bank.
    out : str or Path
        A new or empty folder, outside ``normal``.
    per_image : int
        Pseudo anomalies per normal image.
    sources : sequence of str, optional
        Use only these source datasets of a bank folder (id prefixes, e.g. from
        :func:`split_bank_sources`); train with the others (``AnomalyBank.from_folder(..., exclude=sources)``)
        so the detector is not validated on textures it was trained on.
    seed : int
        Seed of the pseudo anomalies (same seed, same folder).
    cai : CAI, optional
        A configured engine; by default ``CAI(bank, seed=seed, **options)``.
    **options
        ``CAI`` options when ``cai`` is not given.

    Returns
    -------
    ValidationSet

    Raises
    ------
    ValueError
        ``per_image`` below 1, ``out`` not empty or overlapping ``normal``, unknown ``sources``, or a
        normal folder without images.
    """
    from cai_aug.engine.bank import AnomalyBank
    from cai_aug.engine.cai import CAI
    from cai_aug.frontends.offline import list_normals, read_normal, synthesize_normal
    from cai_aug.io.images import write_image, write_mask
    from cai_aug.io.output import output_stem

    if per_image < 1:
        raise ValueError(f"per_image must be at least 1, got {per_image}")
    normal, out = Path(normal), Path(out)
    if _inside(out, normal) or _inside(normal, out):
        raise ValueError(f"output folder {out} and normal image folder {normal} must not contain each other")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output folder {out} exists and is not an empty folder")
    keys = list_normals(normal)
    if cai is not None and (sources is not None or options):
        raise ValueError("give either a configured cai or sources / CAI options, not both")
    if cai is None:
        if not isinstance(bank, AnomalyBank):
            exclude = None
            if sources is not None:
                counts = bank_source_counts(bank)
                unknown = sorted(set(sources) - set(counts))
                if unknown:
                    raise ValueError(f"sources {unknown} are not in bank {bank}; it has {sorted(counts)}")
                exclude = sorted(set(counts) - set(sources)) or None
            bank = AnomalyBank.from_folder(bank, exclude=exclude)
        elif sources is not None:
            raise ValueError("sources selects from a bank folder; filter an AnomalyBank with from_folder(exclude=...)")
        cai = CAI(bank, seed=seed, **options)
    result = ValidationSet(root=out, good=0, sources=tuple(sorted(sources)) if sources is not None else None)
    entries = []
    for key in keys:
        image = read_normal(normal, key)
        stem = output_stem(key, 0)[: -len("_000")]
        (out / "test" / GOOD).mkdir(parents=True, exist_ok=True)
        write_image(out / "test" / GOOD / f"{stem}.png", image.restore(image.pixels))
        result.good += 1
        records = synthesize_normal(cai, image, key, per_image)
        if not records:
            result.skipped.append(key)
        for record in records:
            cls = _class_folder(record.anomaly.info.get("source_class"))
            name = output_stem(key, record.index)
            for folder in ("test", "ground_truth"):
                (out / folder / cls).mkdir(parents=True, exist_ok=True)
            write_image(out / "test" / cls / f"{name}.png", image.restore(record.anomaly.image))
            write_mask(out / "ground_truth" / cls / f"{name}_mask.png", record.anomaly.mask)
            result.anomalies[cls] = result.anomalies.get(cls, 0) + 1
            entries.append(
                {
                    "image": f"test/{cls}/{name}.png",
                    "normal": key,
                    "index": record.index,
                    "source": record.anomaly.info.get("source_id"),
                }
            )
    record = {
        "seed": seed,
        "per_image": per_image,
        "sources": list(result.sources) if result.sources is not None else "all",
        "good": result.good,
        "anomalies": result.anomalies,
        "skipped": result.skipped,
        "entries": entries,
    }
    (out / RECORD).write_text(json.dumps(record, indent=1))
    return result


def anomalib_folder_arguments(root: str | Path) -> dict:
    """Keyword arguments for anomalib's ``Folder`` datamodule that make a folder written by
    :func:`write_validation_set` its test and validation set.

    Use as ``Folder(name=..., normal_dir=<training normals>, **anomalib_folder_arguments(root))``: the
    anomalous images of every ``test/<class>`` with their ``ground_truth/<class>`` masks and the
    ``test/good`` images are the test set, and validation uses the same set
    (``val_split_mode="same_as_test"``), so the epoch and threshold are chosen on pseudo anomalies.

    Parameters
    ----------
    root : str or Path
        The validation folder.

    Returns
    -------
    dict
        ``abnormal_dir``, ``mask_dir`` (absolute paths, one per class), ``normal_test_dir``,
        ``test_split_mode`` and ``val_split_mode``.
    """
    root = Path(root).resolve()
    classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != GOOD)
    if not (root / "test" / GOOD).is_dir() or not classes:
        raise ValueError(f"{root} is not a validation folder (test/good and test/<class> expected)")
    return {
        "abnormal_dir": [root / "test" / c for c in classes],
        "mask_dir": [root / "ground_truth" / c for c in classes],
        "normal_test_dir": root / "test" / GOOD,
        "test_split_mode": "from_dir",
        "val_split_mode": "same_as_test",
    }
