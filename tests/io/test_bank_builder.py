"""cai-aug build-bank: MVTec layout -> bank entries, mapping, manifest, refusal of the evaluated dataset."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data_path
from PIL import Image

from cai_aug.cli import main
from cai_aug.engine.bank import AnomalyBank
from cai_aug.io.bank_builder import DEFAULT_DEFECT_MAP, build_bank, dataset_slug, parse_map, read_manifest
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


# ---------------------------------------------------------------------- hostile input, through the command line
REPO = Path(__file__).resolve().parents[2]


def _cli(*argv: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "cai_aug", "build-bank", *map(str, argv)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 with one line naming ``words``, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cai-aug build-bank: error: ")
    for word in words:
        assert word in line
    return line


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _entry_ids(bank: Path) -> list[tuple[str, str]]:
    """``(class, id)`` of every image/mask pair in ``bank``."""
    return sorted(
        (p.parent.name, p.stem)
        for p in bank.glob("*/*.png")
        if not p.stem.endswith("_mask") and (p.parent / f"{p.stem}_mask.png").is_file()
    )


def _rows_match_entries(bank: Path) -> None:
    rows = _manifest(bank)
    assert sorted((row["class"], row["id"]) for row in rows) == _entry_ids(bank)
    assert not list(bank.glob("*/*.tmp")) and not list(bank.glob(".build-*"))


def test_manifest_class_that_leads_outside_is_refused_and_nothing_outside_is_deleted(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    bank = tmp_path / "bank"
    assert main(["build-bank", "--mvtec", str(widget), "--out", str(bank)]) == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("widget_crack_000.png", "widget_crack_000_mask.png"):
        (victim / name).write_bytes(b"someone else's file")
    manifest = (bank / "MANIFEST.csv").read_text().replace(",crack,", ",../victim,")
    (bank / "MANIFEST.csv").write_text(manifest)
    before = _snapshot(tmp_path / "victim"), _snapshot(bank)
    result = _cli("--mvtec", widget, "--out", bank, "--map", "crack=stain")  # the entry changes class
    _refused(result, "MANIFEST.csv, line 2", "'../victim'")
    assert (_snapshot(tmp_path / "victim"), _snapshot(bank)) == before


def test_absolute_manifest_class_is_refused(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "MANIFEST.csv").write_text(f"id,class\nwidget_crack_000,{tmp_path / 'victim'}\n")
    _refused(_cli("--mvtec", widget, "--out", bank), "MANIFEST.csv, line 2", "not a plain folder name")
    assert sorted(p.name for p in bank.iterdir()) == ["MANIFEST.csv"]


def test_map_target_that_leads_outside_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    _refused(_cli("--mvtec", widget, "--out", tmp_path / "bank", "--map", "crack=../escaped"), "--map crack=../escaped")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no bank, nothing escaped


def test_a_class_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    bank, elsewhere = tmp_path / "bank", tmp_path / "elsewhere"
    bank.mkdir()
    elsewhere.mkdir()
    (bank / "crack").symlink_to(elsewhere, target_is_directory=True)
    _refused(_cli("--mvtec", widget, "--out", bank), "is a link")
    assert list(elsewhere.iterdir()) == [] and not (bank / "MANIFEST.csv").exists()


def test_a_bank_inside_the_dataset_is_refused(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    before = _snapshot(widget)
    _refused(_cli("--mvtec", widget, "--out", widget / "test" / "bank"), "overlaps the dataset folder")
    assert _snapshot(widget) == before


def _break(widget: Path) -> None:
    """Spoil three of the crack sources: a truncated image, a mask of another size, an empty mask file."""
    image = widget / "test" / "crack" / "001.png"
    image.write_bytes(image.read_bytes()[:80])
    write_mask(widget / "ground_truth" / "crack" / "002_mask.png", np.ones((20, 20), dtype=bool))
    (widget / "ground_truth" / "crack" / "003_mask.png").write_bytes(b"")


def test_bad_files_are_skipped_and_reported_and_the_good_ones_listed(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 5})
    _break(widget)
    bank = tmp_path / "bank"
    result = _cli("--mvtec", widget, "--out", bank)
    assert result.returncode == 0, result.stderr
    assert "skipped 3 unusable files" in result.stdout
    for name in ("test/crack/001.png", "test/crack/002.png", "test/crack/003.png"):
        assert name in result.stdout
    assert [row["id"] for row in _manifest(bank)] == ["widget_crack_000", "widget_crack_004"]
    _rows_match_entries(bank)


def test_strict_stops_at_the_first_bad_file_and_changes_nothing(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 5})
    gadget = _write_mvtec(tmp_path / "gadget", {"hole": 2})
    bank = tmp_path / "bank"
    assert main(["build-bank", "--mvtec", str(gadget), "--out", str(bank)]) == 0
    before = _snapshot(bank)
    _break(widget)
    _refused(_cli("--mvtec", widget, "--out", bank, "--strict"), "test/crack/001.png", "--strict")
    assert _snapshot(bank) == before
    _refused(_cli("--mvtec", widget, "--out", tmp_path / "new", "--strict"), "001.png")
    assert not (tmp_path / "new").exists()


def test_a_file_name_of_undecodable_bytes_is_skipped_with_its_reason(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 2})
    odd = os.fsdecode(b"bad\xff")
    (widget / "test" / "crack" / "001.png").rename(widget / "test" / "crack" / f"{odd}.png")
    (widget / "ground_truth" / "crack" / "001_mask.png").rename(widget / "ground_truth" / "crack" / f"{odd}_mask.png")
    bank = tmp_path / "bank"
    result = _cli("--mvtec", widget, "--out", bank)
    assert result.returncode == 0, result.stderr
    assert "bad\\xff.png: its name cannot make a bank entry" in result.stdout
    assert [row["id"] for row in _manifest(bank)] == ["widget_crack_000"]
    _rows_match_entries(bank)


def test_two_sources_with_one_id_make_one_entry_and_a_report(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    write_image(widget / "test" / "crack" / "000.tif", np.zeros((32, 32, 3), dtype=np.uint8))
    report = build_bank([widget], tmp_path / "bank")
    assert sum(report.added.values()) == 1
    assert report.bad == [
        (
            str(widget / "test" / "crack" / "000.tif"),
            f"same entry id 'widget_crack_000' as {widget / 'test' / 'crack' / '000.png'}",
        )
    ]
    _rows_match_entries(tmp_path / "bank")


def test_manifest_rows_whose_files_are_gone_are_dropped_and_reported(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 2})
    bank = tmp_path / "bank"
    build_bank([widget], bank)
    for path in (bank / "crack").glob("widget_crack_001*"):
        path.unlink()
    gadget = _write_mvtec(tmp_path / "gadget", {"hole": 1})
    report = build_bank([gadget], bank)
    assert report.dropped == ["widget_crack_001"] and "dropped 1 manifest rows" in report.summary()
    _rows_match_entries(bank)


# ---------------------------------------------------------------------- masks as datasets ship them
def test_a_16_bit_label_mask_counts_every_non_zero_label(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    labels = np.zeros((32, 32), dtype=np.uint16)
    labels[4:10, 4:10] = 1
    labels[20:30, 12:16] = 128
    Image.fromarray(labels).save(widget / "ground_truth" / "crack" / "000_mask.png")
    build_bank([widget], tmp_path / "bank")
    mask = np.asarray(Image.open(tmp_path / "bank" / "crack" / "widget_crack_000_mask.png"))
    assert np.array_equal(mask > 0, labels > 0)


def test_mask_threshold_drops_compression_noise(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    values = np.random.default_rng(1).integers(0, 12, (32, 32)).astype(np.uint8)  # a JPEG mask's noise
    values[8:16, 8:24] = 250
    Image.fromarray(values).save(widget / "ground_truth" / "crack" / "000_mask.png")
    result = _cli("--mvtec", widget, "--out", tmp_path / "bank", "--mask-threshold", "127")
    assert result.returncode == 0, result.stderr
    mask = np.asarray(Image.open(tmp_path / "bank" / "crack" / "widget_crack_000_mask.png"))
    assert np.array_equal(mask > 0, values > 127)


# ---------------------------------------------------------------------- MANIFEST files as people edit them
def _built(tmp_path: Path) -> tuple[Path, Path]:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    bank = tmp_path / "bank"
    build_bank([widget], bank)
    return widget, bank


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp1252"], ids=["utf8-bom", "latin1"])
def test_a_spreadsheet_manifest_is_read_and_its_extra_columns_kept(tmp_path: Path, encoding: str) -> None:
    widget, bank = _built(tmp_path)
    text = "ID , Class,source_repo,source_path,license_if_known,notes,\r\n"
    text += "widget_crack_000,crack,widget,x,Société,checked by hand,\r\n,,,,,,\r\n"
    (bank / "MANIFEST.csv").write_bytes(text.encode(encoding))
    gadget = _write_mvtec(tmp_path / "gadget", {"hole": 1})
    assert main(["build-bank", "--mvtec", str(gadget), "--out", str(bank)]) == 0
    with (bank / "MANIFEST.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["id"], row["notes"], row["license_if_known"]) for row in rows] == [
        ("widget_crack_000", "checked by hand", "Société"),
        ("gadget_hole_000", "", ""),
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("id,class\nwidget_crack_000,crack\n,crack\n", ["line 3", "empty id"]),
        ("id,class\nwidget_crack_000,\n", ["line 2", "empty class"]),
        ("id,class\nwidget_crack_000,crack,surprise\n", ["line 2", "'surprise' stands under no column"]),
        ("id,class\nwidget_crack_000,crack\n\nwidget_crack_000,hole\n", ["line 4", "listed already on line 2"]),
        ("name,kind\nwidget_crack_000,crack\n", ["line 1", "no id or class column"]),
        ("id,class\n../../x,crack\n", ["line 2", "no plain file name"]),
    ],
    ids=["no-id", "no-class", "value-without-column", "duplicate-id", "no-header", "id-path"],
)
def test_a_manifest_that_cannot_be_read_is_refused_naming_file_and_line(tmp_path: Path, text: str, words: list[str]):
    (tmp_path / "MANIFEST.csv").write_text(text)
    with pytest.raises(ValueError) as caught:
        read_manifest(tmp_path)
    for word in [str(tmp_path / "MANIFEST.csv"), *words]:
        assert word in str(caught.value)


def test_build_bank_refuses_a_broken_manifest_in_one_line(tmp_path: Path) -> None:
    widget, bank = _built(tmp_path)
    (bank / "MANIFEST.csv").write_text("id,class\nwidget_crack_000,cr\0ck\n")  # NUL: csv.Error before
    before = _snapshot(bank)
    _refused(_cli("--mvtec", widget, "--out", bank), f"{bank / 'MANIFEST.csv'}, line 2")
    assert _snapshot(bank) == before


def test_undecodable_manifest_bytes_are_refused_naming_the_line(tmp_path: Path) -> None:
    _, bank = _built(tmp_path)
    (bank / "MANIFEST.csv").write_bytes(b"id,class\nwidget_crack_000,crack\nx\x81y,crack\n")  # \x81: no cp1252
    with pytest.raises(ValueError, match=r"MANIFEST.csv, line 3: neither UTF-8 nor Windows-1252"):
        read_manifest(bank)


def test_planted_links_at_the_builders_own_temporary_names_are_never_written_through(tmp_path: Path) -> None:
    widget = _write_mvtec(tmp_path / "widget", {"crack": 1})
    bank, victim = tmp_path / "bank", tmp_path / "victim"
    bank.mkdir()
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    (bank / ".MANIFEST.csv.tmp").symlink_to(victim / "notes.txt")
    (bank / f".build-{os.getpid()}").symlink_to(victim, target_is_directory=True)
    build_bank([widget], bank)
    assert _snapshot(victim) == {"notes.txt": b"keep me"}
    _rows_match_entries(bank)
