"""cai-aug build-bank: MVTec layout -> bank entries, mapping, manifest, refusal of the evaluated dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data_path
from PIL import Image

from cai_aug.cli import main
from cai_aug.engine.bank import AnomalyBank
from cai_aug.io.bank_builder import DEFAULT_DEFECT_MAP, build_bank, dataset_slug, parse_map
from cai_aug.io.images import write_image, write_mask

COLUMNS = ["id", "class", "source_repo", "source_path", "license_if_known"]


def _write_mvtec(root: Path, defects: dict[str, int], mask_suffix: str = "_mask", empty: str | None = None) -> Path:
    """A tiny MVTec-layout dataset: ``test/good`` plus ``count`` 32x32 images per defect, with masks."""
    generator = np.random.default_rng(0)
    (root / "train" / "good").mkdir(parents=True)
    (root / "test" / "good").mkdir(parents=True)
    write_image(root / "test" / "good" / "000.png", generator.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    for defect, count in defects.items():
        (root / "test" / defect).mkdir(parents=True)
        (root / "ground_truth" / defect).mkdir(parents=True)
        for index in range(count):
            stem = f"{index:03d}"
            write_image(root / "test" / defect / f"{stem}.png", generator.integers(0, 255, (32, 32), dtype=np.uint8))
            mask = np.zeros((32, 32), dtype=bool)
            if defect != empty:
                mask[8 : 12 + index, 10:20] = True
            write_mask(root / "ground_truth" / defect / f"{stem}{mask_suffix}.png", mask)
    return root


def _manifest(bank: Path) -> list[dict[str, str]]:
    with (bank / "MANIFEST.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_cli_builds_bank_with_mapping_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    widget = _write_mvtec(
        tmp_path / "widget", {"crack": 2, "scratch": 1, "combined": 2, "oil": 1, "weird": 1}, empty="oil"
    )
    bank = tmp_path / "bank"
    code = main(["build-bank", "--mvtec", str(widget), "--out", str(bank), "--map", "scratch=abrasion,weird=-"])
    assert code == 0
    report = capsys.readouterr().out
    assert "skipped 2 images of unmapped defects: widget/combined (2)" in report
    assert "1 images with an empty mask" in report
    assert sorted(p.name for p in (bank / "crack").iterdir()) == [
        "widget_crack_000.png",
        "widget_crack_000_mask.png",
        "widget_crack_001.png",
        "widget_crack_001_mask.png",
    ]
    assert (bank / "abrasion" / "widget_scratch_000_mask.png").exists()
    rows = _manifest(bank)
    assert [(r["id"], r["class"], r["source_repo"]) for r in rows] == [
        ("widget_crack_000", "crack", "widget"),
        ("widget_crack_001", "crack", "widget"),
        ("widget_scratch_000", "abrasion", "widget"),
    ]
    assert rows[0]["source_path"] == "test/crack/000.png | ground_truth/crack/000_mask.png"
    loaded = AnomalyBank.from_folder(bank)
    assert len(loaded) == 3 and loaded.classes == ["abrasion", "crack"]


def test_manifest_columns_match_shared_bank() -> None:
    manifest = shared_data_path("anomaly_bank", "MANIFEST.csv")
    with manifest.open(newline="") as handle:
        assert next(csv.reader(handle)) == COLUMNS


def test_extend_rerun_and_refuse_evaluated_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bank = tmp_path / "bank"
    widget = _write_mvtec(tmp_path / "widget", {"crack": 2})
    gadget = _write_mvtec(tmp_path / "gadget", {"hole": 1, "bad": 1}, mask_suffix="")  # anomalib's VisA masks
    assert main(["build-bank", "--mvtec", str(widget), "--out", str(bank)]) == 0
    # Refused: the dataset under evaluation, by name; nothing is written.
    code = main(["build-bank", "--mvtec", str(gadget), "--out", str(bank), "--exclude-dataset", "gadget"])
    assert code == 2
    assert "refusing to add dataset 'gadget'" in capsys.readouterr().err
    assert not (bank / "hole").exists() and len(_manifest(bank)) == 2
    # ... and a bank that already holds the evaluated dataset cannot be extended for it.
    code = main(["build-bank", "--mvtec", str(gadget), "--out", str(bank), "--exclude-dataset", "widget"])
    assert code == 2 and "already holds 2 entries" in capsys.readouterr().err
    # Extending with another dataset, under a given name, and re-running: no duplicates.
    for _ in range(2):
        args = ["build-bank", "--mvtec", str(gadget), "--out", str(bank), "--dataset-name", "My Gadget"]
        assert main([*args, "--map", "bad=stain"]) == 0
    ids = [row["id"] for row in _manifest(bank)]
    assert ids == ["widget_crack_000", "widget_crack_001", "my-gadget_bad_000", "my-gadget_hole_000"]
    assert "rewritten, not duplicated" in capsys.readouterr().out
    # The bank loader excludes a source dataset by the same name.
    assert len(AnomalyBank.from_folder(bank, exclude="my-gadget")) == 2
    # A folder of datasets (the MVTec AD root): one dataset per sub-folder, named <root>-<sub-folder>.
    root_bank = tmp_path / "root_bank"
    report = build_bank([tmp_path], root_bank, {"bad": "stain"}, dataset_names=["mvtec"], exclude_datasets=["x"])
    assert report.datasets == ["mvtec-gadget", "mvtec-widget"] and sum(report.added.values()) == 4
    # A root that holds the evaluated dataset is refused as a whole (list the others explicitly).
    with pytest.raises(ValueError, match="refusing"):
        build_bank([tmp_path], tmp_path / "other", exclude_datasets=["widget"])
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


def test_helpers() -> None:
    assert parse_map(["crack=crack, Scratch Head=scratch", "bad=stain"]) == {
        "crack": "crack",
        "scratch_head": "scratch",
        "bad": "stain",
    }
    with pytest.raises(ValueError, match="DEFECT=CLASS"):
        parse_map("crack")
    assert dataset_slug("MVTec_AD/bottle") == "mvtec-ad-bottle"
    paper = {"pits", "crack", "hole", "stain", "scratch", "orifice", "impurity", "abrasion"}
    assert set(DEFAULT_DEFECT_MAP.values()) == paper
    for defect in ("crack", "scratch", "hole", "poke", "color", "contamination", "cut", "rough", "chip"):
        assert defect in DEFAULT_DEFECT_MAP
    assert main(["build-bank", "--list-map"]) == 0
    assert main(["build-bank", "--out", "x"]) == 2


def test_deeppcb(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    deeppcb = shared_data_path("targets", "deeppcb")
    bank = tmp_path / "bank"
    mapping = "pin_hole=hole,open=crack,mousebite=orifice,spur=impurity,copper=impurity"
    args = ["build-bank", "--mvtec", str(deeppcb), "--out", str(bank), "--map", mapping, "--max-side", "64"]
    assert main(args) == 0
    assert "unmapped defects: deeppcb/short (14)" in capsys.readouterr().out
    rows = _manifest(bank)
    assert len(rows) == 60 - 14
    assert {row["source_repo"] for row in rows} == {"deeppcb"}
    first = bank / rows[0]["class"] / f"{rows[0]['id']}.png"
    assert max(Image.open(first).size) == 64  # --max-side downscales (DeepPCB crops are 256x256)
    loaded = AnomalyBank.from_folder(bank)
    assert sorted(loaded.classes) == ["crack", "hole", "impurity", "orifice"]
    assert len(AnomalyBank.from_folder(bank, classes=["hole"])) == 11
    code = main(["build-bank", "--mvtec", str(deeppcb), "--out", str(tmp_path / "b2"), "--exclude-dataset", "deeppcb"])
    assert code == 2
