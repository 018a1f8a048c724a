"""Offline generation: a folder of normal images -> an MVTec-style folder of pseudo anomalies.

Layout written (see :mod:`cai_aug.io.output`): ``<out>/images/<stem>_<k>.png``,
``<out>/masks/<stem>_<k>_mask.png``, ``<out>/manifest.jsonl`` (one record per pseudo anomaly),
``<out>/skipped.jsonl`` (input images that could not be used, with why) and ``<out>/preview.png``.
``<stem>`` is the image's path relative to the input folder with ``/`` replaced by ``__``; that relative
path is also the image key, so results do not depend on which process or batch made them.

Formats are kept: a pseudo anomaly is written in its input's mode and bit depth (8-bit grey stays 8-bit
grey, 16-bit stays 16-bit, RGB stays RGB, an alpha channel is copied unchanged), and a grey input (one
channel, or three equal ones) receives a grey anomaly. An input that cannot be used (unreadable, empty,
truncated, too small) is named in ``skipped.jsonl`` and the run goes on, or, with ``strict``, stops
there. ``resume=True`` continues a killed run exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cai_aug.engine.algorithm1 import PseudoAnomaly, synthesize
from cai_aug.engine.cai import CAI
from cai_aug.io.coerce import CoercedImage, is_grey, load_image
from cai_aug.io.images import image_keys
from cai_aug.io.output import MANIFEST, SKIPPED, OutputFolder, output_stem

__all__ = [
    "MANIFEST",
    "SKIPPED",
    "OfflineRecord",
    "OutputFolder",
    "list_normals",
    "load_normal",
    "make_records",
    "manifest_record",
    "nothing_placed",
    "output_stem",
    "read_normal",
    "run_local",
    "synthesize_normal",
    "write_records",
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

    @property
    def stem(self) -> str:
        return output_stem(self.image_key, self.index)


def make_records(cai: CAI, image: torch.Tensor, image_key: str, per_image: int) -> list[OfflineRecord]:
    """Algorithm 1 for one normal image ``(C, H, W)`` -> its records (index = slot)."""
    anomalies = synthesize(image, cai.bank, per_image, image_key=image_key, cai=cai)
    return [OfflineRecord(image_key, k, anomaly) for k, anomaly in enumerate(anomalies)]


def synthesize_normal(
    cai: CAI, image: CoercedImage, image_key: str, per_image: int, *, checked: bool = False
) -> list[OfflineRecord]:
    """:func:`make_records` for a read image, grey kept grey.

    A grey image given as three equal channels goes through the engine as one channel (the engine then
    injects the source's luminance only) and comes back as three equal channels.

    Parameters
    ----------
    checked
        Raise a ``ValueError`` naming the image when the engine fails on it or places no pseudo anomaly
        at all (instead of returning an empty list), so a run can name it in ``skipped.jsonl``.
    """
    pixels = image.pixels.to(cai.device or image.pixels.device)
    grey_rgb = pixels.shape[0] == 3 and is_grey(pixels)
    try:
        records = make_records(cai, pixels[:1] if grey_rgb else pixels, image_key, per_image)
    except ValueError as error:
        if not checked:
            raise
        raise ValueError(f"image {image_key}: the engine failed on it: {error}") from error
    if checked and not records:  # a valid image, but none of the bank's patterns fits it: never drop it silently
        raise ValueError(nothing_placed(image_key))
    if grey_rgb:
        for record in records:
            record.anomaly = replace(record.anomaly, image=record.anomaly.image.expand(3, -1, -1))
    return records


# Solver diagnostics differ at float-noise level with the batch a sample was solved in (the canvas of
# a bucket is sized by its largest region); the manifest keeps only the decisions and the outcome.
_NOT_IN_MANIFEST = ("slot", "poisson_iterations", "poisson_residual")


def manifest_record(record: OfflineRecord, seed: int) -> dict:
    """The manifest line of a record: its files, its input key, its index, the seed and the engine's info."""
    info = {k: v for k, v in record.anomaly.info.items() if k not in _NOT_IN_MANIFEST}
    return {
        "image": f"images/{record.stem}.png",
        "mask": f"masks/{record.stem}_mask.png",
        "normal": record.image_key,
        "index": record.index,
        "seed": seed,
        **info,
    }


def write_records(output: OutputFolder, records: Iterable[OfflineRecord], image: CoercedImage, seed: int) -> int:
    """Write the records of one input image in its own format; returns how many were new."""
    written = 0
    for record in records:
        if record.index in output.done_indices(record.image_key):
            continue  # done by an earlier (killed) run: encoding it again would be wasted work
        pixels = image.restore(record.anomaly.image)
        written += output.add(manifest_record(record, seed), pixels, record.anomaly.mask)
    return written


def nothing_placed(image_key: str) -> str:
    """The ``skipped.jsonl`` reason of an image on which the engine could place no pseudo anomaly."""
    return f"image {image_key}: no pseudo anomaly could be placed (too small or too narrow for the bank's patterns)"


def read_normal(folder: str | Path, image_key: str) -> CoercedImage:
    """Normal image ``folder/image_key`` in its own mode and depth, checked usable.

    Raises
    ------
    ValueError
        Unreadable, empty, truncated, or smaller than any usable pattern (the reason is in the message).
    """
    return load_image(Path(folder) / image_key, name=image_key)


def load_normal(folder: str | Path, image_key: str, channels: int = 3) -> torch.Tensor:
    """Normal image as a ``(C, H, W)`` float tensor in [0, 1], grey repeated to 3 channels when ``channels == 3``."""
    pixels = read_normal(folder, image_key).pixels
    if channels == 3 and pixels.shape[0] == 1:
        return pixels.expand(3, -1, -1).contiguous()
    if channels == 1 and pixels.shape[0] == 3:
        luma = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
        return (pixels * luma).sum(0, keepdim=True)
    return pixels


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
        Continue the run in ``out``.
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
        The folder; ``.skipped`` holds the inputs that were left out, with why.
    """
    from tqdm.auto import tqdm

    folder = Path(normal)
    keys = list(keys) if keys is not None else list_normals(folder)
    output = OutputFolder(out, resume=resume)
    todo = [key for key in keys if not output.is_done(key, per_image)]
    for key in tqdm(todo, desc="cai-aug synth", unit="image", disable=not progress):
        try:
            image = read_normal(folder, key)
            records = synthesize_normal(cai, image, key, per_image, checked=True)
        except ValueError as error:
            # one unusable image must not stop a run of thousands: it is named, with why, and skipped
            if strict:
                raise ValueError(f"{error} (strict: stopped at the first input that cannot be used)") from error
            output.skip(key, str(error))
            continue
        output.unskip(key)
        write_records(output, records, image, cai.seed)
    output.write_preview(missing_ok=True)
    return output
