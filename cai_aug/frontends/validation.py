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
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


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
