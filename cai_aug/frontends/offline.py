"""Offline generation: a folder of normal images -> an MVTec-style folder of pseudo anomalies.

Layout written (see :mod:`cai_aug.io.output`, which owns every path and record):
``<out>/images/<stem>_<k>.png``, ``<out>/masks/<stem>_<k>_mask.png``, ``<out>/manifest.jsonl`` (one
record per pseudo anomaly), ``<out>/skipped.jsonl`` (input images that could not be used, with why),
``<out>/run.json`` (what defines the run) and ``<out>/preview.png``. ``<stem>`` comes from the image's
path relative to the input folder (:func:`~cai_aug.io.output.key_stem`); that relative path is also the
image key, so results do not depend on which process or batch made them.

Formats are kept: a pseudo anomaly is written in its input's mode and bit depth (8-bit grey stays 8-bit
grey, 16-bit stays 16-bit, RGB stays RGB, an alpha channel is copied unchanged). Whether a grey image
stored as RGB receives a grey anomaly is the engine's decision (``grey_injection``), as online. An
input that cannot be used (unreadable, empty, truncated, too small, over the pixel limit) is named in
``skipped.jsonl`` and the run goes on, or, with ``strict``, stops there. ``resume=True`` continues a
killed run exactly, and refuses a run made with other settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cai_aug.engine.algorithm1 import PseudoAnomaly, synthesize
from cai_aug.engine.cai import CAI
from cai_aug.io.coerce import CoercedImage, load_image
from cai_aug.io.images import image_keys
from cai_aug.io.output import (
    MANIFEST,
    SKIPPED,
    Outcome,
    OutputFolder,
    describe_inputs,
    digest,
    new_record,
    run_offline,
)

__all__ = [
    "MANIFEST",
    "SKIPPED",
    "OfflineRecord",
    "OutputFolder",
    "list_normals",
    "make_records",
    "manifest_record",
    "outcome",
    "read_normal",
    "run_identity",
    "run_local",
    "synthesize_normal",
]


def list_normals(folder: str | Path) -> list[str]:
    """Keys of the normal images under ``folder``: see :func:`cai_aug.io.images.list_images` for the rules."""
    return image_keys(folder, what="normal image folder")


@dataclass
class OfflineRecord:
    """One pseudo anomaly ready to be written."""

    image_key: str
    index: int
    anomaly: PseudoAnomaly


def make_records(cai: CAI, image: torch.Tensor, image_key: str, per_image: int) -> list[OfflineRecord]:
    """Algorithm 1 for one normal image ``(C, H, W)`` -> its records (index = slot)."""
    anomalies = synthesize(image, cai.bank, per_image, image_key=image_key, cai=cai)
    return [OfflineRecord(image_key, k, anomaly) for k, anomaly in enumerate(anomalies)]


def synthesize_normal(cai: CAI, image: CoercedImage, image_key: str, per_image: int) -> list[OfflineRecord]:
    """:func:`make_records` for a read image, on the engine's device.

    Raises
    ------
    ValueError
        Naming the image, when the engine fails on it or places no pseudo anomaly at all (a run names
        it in ``skipped.jsonl`` instead of dropping it silently).
    """
    pixels = image.pixels.to(cai.device or image.pixels.device)
    try:
        records = make_records(cai, pixels, image_key, per_image)
    except ValueError as error:
        raise ValueError(f"image {image_key}: the engine failed on it: {error}") from error
    if not records:  # a valid image, but none of the bank's patterns fits it
        raise ValueError(
            f"image {image_key}: no pseudo anomaly could be placed (too small or too narrow for the bank's patterns)"
        )
    return records


# Solver diagnostics differ at float-noise level with the batch a sample was solved in (the canvas of
# a bucket is sized by its largest region); the manifest keeps only the decisions and the outcome.
_NOT_IN_MANIFEST = ("slot", "poisson_iterations", "poisson_residual")


def manifest_record(record: OfflineRecord, seed: int) -> dict:
    """The manifest line of a record: its files, its input key, its index, the seed and the engine's info."""
    info = {k: v for k, v in record.anomaly.info.items() if k not in _NOT_IN_MANIFEST}
    return new_record(record.image_key, record.index, seed, **info)


def outcome(cai: CAI, image: CoercedImage, key: str, per_image: int, skip: set[int] = frozenset()) -> Outcome:
    """The :class:`~cai_aug.io.output.Outcome` of one read input: its records with their pixels in the
    input's own form (indices in ``skip`` are left out: an earlier run recorded them)."""
    made = [
        (manifest_record(record, cai.seed), image.restore(record.anomaly.image), record.anomaly.mask)
        for record in synthesize_normal(cai, image, key, per_image)
        if record.index not in skip
    ]
    return Outcome(key, made)


def read_normal(folder: str | Path, image_key: str) -> CoercedImage:
    """Normal image ``folder/image_key`` in its own mode and depth, checked usable.

    Raises
    ------
    ValueError
        Unreadable, empty, truncated, over the pixel limit, or smaller than any usable pattern (the
        reason is in the message).
    """
    return load_image(Path(folder) / image_key, name=image_key)


def run_identity(cai: CAI, keys: Sequence[str], per_image: int) -> dict[str, Any]:
    """What defines an offline run, as :class:`~cai_aug.io.output.OutputFolder` stores and checks it:
    the seed, ``per_image``, every engine option, the bank's content and the input keys."""
    try:
        options = cai.config.to_dict()
    except TypeError:  # a callable foreground: named by its qualified name
        options = {name: getattr(cai.config, name) for name in cai.config.fields()}
        options = {k: getattr(v, "__qualname__", v) if callable(v) else v for k, v in options.items()}
        options["quotas"] = list(options["quotas"])
    bank = cai.bank
    storage = bank.storage
    tensors = (storage.pixels, storage.offset, storage.height, storage.width, storage.levels, storage.bbox)
    content = [f"{e.id}\t{e.cls}\t{e.dataset}".encode("utf-8", "surrogateescape") for e in bank.entries]
    content += [t.detach().cpu().contiguous().numpy().tobytes() for t in tensors]
    return {
        "seed": cai.seed,
        "per_image": per_image,
        **options,
        "bank": f"{len(bank)} sources of {len(bank.classes)} classes ({', '.join(bank.classes)}), "
        f"digest {digest(content)}",
        "inputs": describe_inputs(keys),
    }


def _local(cai: CAI, folder: Path, per_image: int, output: OutputFolder):
    def produce(todo: list[str]) -> Iterator[Outcome]:
        for key in todo:
            try:
                yield outcome(cai, read_normal(folder, key), key, per_image, output.done_indices(key))
            except ValueError as error:  # one unusable image must not stop a run of thousands
                yield Outcome(key, reason=str(error))

    return produce


def run_local(
    normal: str | Path,
    cai: CAI,
    out: str | Path,
    *,
    per_image: int = 10,
    resume: bool = False,
    progress: bool = True,
    keys: Sequence[str] | None = None,
    strict: bool = False,
) -> OutputFolder:
    """The local engine: every normal image through Algorithm 1, written to ``out``.

    Parameters
    ----------
    normal
        Folder of normal images (listed by :func:`list_normals`).
    cai
        The engine.
    out
        Output folder (see :mod:`cai_aug.io.output`).
    per_image
        Pseudo anomalies per normal image.
    resume
        Continue the run in ``out``; refused (``ValueError`` naming each difference) when that run was
        made with another seed, ``per_image``, engine option, bank or set of inputs.
    progress
        Show a progress bar.
    keys
        Process only these image keys (default: all of ``normal``).
    strict
        Stop with a ``ValueError`` at the first input that cannot be used, instead of naming it in
        ``skipped.jsonl`` and going on.

    Returns
    -------
    OutputFolder
        The folder; ``.written`` counts the records this call added, ``.skipped`` holds the inputs
        that were left out, with why.
    """
    if per_image < 1:
        raise ValueError(f"per_image must be at least 1, got {per_image}")
    folder = Path(normal)
    keys = list(keys) if keys is not None else list_normals(folder)
    output = OutputFolder(out, resume=resume, run=run_identity(cai, keys, per_image))
    produce = _local(cai, folder, per_image, output)
    return run_offline(output, keys, produce, per_image=per_image, strict=strict, progress=progress)
