"""``cai-aug build-bank`` on an MVTec-layout dataset made from the built-in demo defects.

Run: ``python examples/build_bank.py [--out out/examples/build_bank]``. Writes ``demo_dataset/`` (MVTec
layout), ``bank/`` (the built bank with ``MANIFEST.csv``) and ``bank.png`` (its sources) under ``--out``.
The same command turns MVTec AD or VisA categories into bank entries:
``cai-aug build-bank --mvtec mvtec_ad/ --out bank/ --exclude-dataset bottle`` refuses the evaluated one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from _preamble import start  # examples run as scripts: their folder is on sys.path

from cai_aug import AnomalyBank
from cai_aug.cli import main as cai_aug
from cai_aug.io.preview import save_contact_sheet


def make_mvtec_layout(source: Path, root: Path) -> Path:
    """Demo defects as an MVTec-layout dataset: ``test/<defect>/NNN.png`` + ``ground_truth/.../NNN_mask.png``."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(p for p in class_dir.glob("*.png") if not p.stem.endswith("_mask"))
        (root / "test" / class_dir.name).mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / class_dir.name).mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            shutil.copy(image, root / "test" / class_dir.name / f"{index:03d}.png")
            shutil.copy(
                image.with_name(f"{image.stem}_mask.png"),
                root / "ground_truth" / class_dir.name / f"{index:03d}_mask.png",
            )
    return root


def main(argv: list[str] | None = None) -> None:
    out, demo = start("build_bank", __doc__, argv, bank="demo_bank", per_class=3)
    dataset = make_mvtec_layout(demo, out / "demo_dataset")

    bank = out / "bank"
    shutil.rmtree(bank, ignore_errors=True)
    code = cai_aug(
        ["build-bank", "--mvtec", str(dataset), "--out", str(bank), "--map", "pits=pits", "--license", "CC0"]
    )
    assert code == 0
    # The dataset under evaluation is refused (exit code 2, with the reason on stderr).
    print("now asking to add the dataset under evaluation; the refusal below is expected:")
    assert (
        cai_aug(["build-bank", "--mvtec", str(dataset), "--out", str(bank), "--exclude-dataset", "demo_dataset"]) == 2
    )

    loaded = AnomalyBank.from_folder(bank)
    crops = [torch.nn.functional.interpolate(loaded.source(i)[0][None], size=(96, 96))[0] for i in range(len(loaded))]
    masks = [
        torch.nn.functional.interpolate(loaded.source(i)[1][None].float(), size=(96, 96))[0] for i in range(len(loaded))
    ]
    captions = [f"{entry.cls} {entry.id.rsplit('_', 1)[-1]}" for entry in loaded.entries]
    sheet = save_contact_sheet(out / "bank.png", torch.stack(crops), torch.stack(masks), captions, columns=5, tile=96)
    print(f"bank of {len(loaded)} sources in {loaded.classes} -> {bank}; sources -> {sheet}")


if __name__ == "__main__":
    main()
