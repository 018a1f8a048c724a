"""Offline generation: a folder of normal images -> an MVTec-style folder of pseudo anomalies.

Layout written: ``<out>/images/<stem>_<k>.png``, ``<out>/masks/<stem>_<k>_mask.png``,
``<out>/manifest.jsonl`` (one record per pseudo anomaly) and ``<out>/preview.png``. ``<stem>`` is the
image's path relative to the input folder with ``/`` replaced by ``__``; that relative path is also the
image key, so results do not depend on which process or batch made them. Files are written under a
temporary name and renamed, and a record is appended to the manifest only after its files exist, so
``resume=True`` continues a killed run exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cai_aug.engine.algorithm1 import PseudoAnomaly, synthesize
from cai_aug.engine.cai import CAI
from cai_aug.io.images import is_image_file, read_image, read_mask, to_tensor, write_image, write_mask
from cai_aug.io.preview import save_contact_sheet

MANIFEST = "manifest.jsonl"


def list_normals(folder: str | Path) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted POSIX paths relative to it."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"normal image folder {root} does not exist")
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not keys:
        raise ValueError(f"no images found under {root}")
    return keys


def output_stem(image_key: str, index: int) -> str:
    stem = image_key.rsplit(".", 1)[0].replace("/", "__")
    return f"{stem}_{index:03d}"


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
    """Algorithm 1 for one normal image -> its records (index = slot)."""
    anomalies = synthesize(image, cai.bank, per_image, image_key=image_key, cai=cai)
    return [OfflineRecord(image_key, k, anomaly) for k, anomaly in enumerate(anomalies)]


# Solver diagnostics differ at float-noise level with the batch a sample was solved in (the canvas of
# a bucket is sized by its largest region); the manifest keeps only the decisions and the outcome.
_NOT_IN_MANIFEST = ("slot", "poisson_iterations", "poisson_residual")


def manifest_record(record: OfflineRecord, seed: int) -> dict:
    info = {k: v for k, v in record.anomaly.info.items() if k not in _NOT_IN_MANIFEST}
    return {
        "image": f"images/{record.stem}.png",
        "mask": f"masks/{record.stem}_mask.png",
        "normal": record.image_key,
        "index": record.index,
        "seed": seed,
        **info,
    }


class OutputFolder:
    """The output folder of an offline run: writes files atomically and keeps the manifest."""

    def __init__(self, root: str | Path, resume: bool = False) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if manifest.exists() and not resume and manifest.stat().st_size > 0:
            raise FileExistsError(f"{self.root} already holds a run ({MANIFEST}); pass resume or a new folder")
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        (self.root / "masks").mkdir(parents=True, exist_ok=True)
        self.done: dict[str, set[int]] = {}
        if manifest.exists() and resume:
            self._load_done(manifest)

    def _load_done(self, manifest: Path) -> None:
        lines = manifest.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if (self.root / record["image"]).exists() and (self.root / record["mask"]).exists():
                kept.append(line)
                self.done.setdefault(record["normal"], set()).add(int(record["index"]))
        # Rewrite without cut lines so the manifest stays valid JSON lines.
        tmp = manifest.with_name(f".{MANIFEST}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, manifest)

    def is_done(self, image_key: str, per_image: int) -> bool:
        return len(self.done.get(image_key, ())) >= per_image

    def write(self, records: Iterable[OfflineRecord], seed: int) -> int:
        """Write records not yet done; returns how many were written."""
        written = 0
        with (self.root / MANIFEST).open("a", encoding="utf-8") as manifest:
            for record in records:
                if record.index in self.done.get(record.image_key, ()):
                    continue
                write_image(self.root / "images" / f"{record.stem}.png", record.anomaly.image)
                write_mask(self.root / "masks" / f"{record.stem}_mask.png", record.anomaly.mask)
                manifest.write(json.dumps(manifest_record(record, seed)) + "\n")
                manifest.flush()
                self.done.setdefault(record.image_key, set()).add(record.index)
                written += 1
        return written

    def records(self) -> list[dict]:
        path = self.root / MANIFEST
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_preview(self, count: int = 24) -> Path:
        """Contact sheet of the first ``count`` records (sorted by file name) with mask outlines."""
        records = sorted(self.records(), key=lambda r: r["image"])[:count]
        if not records:
            raise ValueError(f"{self.root} holds no pseudo anomalies to preview")
        images = [to_tensor(read_image(self.root / r["image"])) for r in records]
        masks = [torch.from_numpy(read_mask(self.root / r["mask"]))[None].float() for r in records]
        captions = [f"{r.get('source_class')} {r.get('synthesis_type')}" for r in records]
        return save_contact_sheet(self.root / "preview.png", images, masks, captions)


def load_normal(folder: Path, image_key: str, channels: int = 3) -> torch.Tensor:
    return to_tensor(read_image(folder / image_key, "RGB" if channels == 3 else "L"))


def run_local(
    normal: str | Path,
    cai: CAI,
    out: str | Path,
    *,
    per_image: int = 10,
    resume: bool = False,
    progress: bool = True,
    keys: Sequence[str] | None = None,
) -> OutputFolder:
    """The local engine: every normal image through Algorithm 1, written to ``out``."""
    from tqdm.auto import tqdm

    folder = Path(normal)
    keys = list(keys) if keys is not None else list_normals(folder)
    output = OutputFolder(out, resume=resume)
    todo = [key for key in keys if not output.is_done(key, per_image)]
    device = cai.device or torch.device("cpu")
    for key in tqdm(todo, desc="cai-aug synth", unit="image", disable=not progress):
        image = load_normal(folder, key).to(device)
        output.write(make_records(cai, image, key, per_image), cai.seed)
    output.write_preview()
    return output
