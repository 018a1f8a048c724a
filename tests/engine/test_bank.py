import csv

import numpy as np
import pytest
from PIL import Image

from cai_aug import AnomalyBank


def _pair(folder, name, size=(40, 30), box=(5, 10, 15, 25), mask_size=None):
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    mask = np.zeros(mask_size or size, dtype=np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 255
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_mask.png")


def test_loads_classes_and_pairs(tmp_path):
    _pair(tmp_path / "crack", "neu_1")
    _pair(tmp_path / "crack", "cfd_2")
    _pair(tmp_path / "stain", "neu_3")
    bank = AnomalyBank.from_folder(tmp_path)
    assert len(bank) == 3
    assert bank.classes == ["crack", "stain"]


def test_source_is_cropped_to_mask_bbox_plus_context(tmp_path):
    _pair(tmp_path / "crack", "a_1", size=(100, 100), box=(40, 30, 50, 70))
    bank = AnomalyBank.from_folder(tmp_path, context=5)
    image, mask = bank.source(0)
    assert image.shape == (3, 10 + 10, 40 + 10)
    assert int(mask.sum()) == 10 * 40
    assert bank.source_sizes.tolist() == [40.0]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AnomalyBank.from_folder(tmp_path / "nope")


def test_folder_without_pairs_is_a_clear_error(tmp_path):
    (tmp_path / "crack").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "crack" / "lonely.png")
    with pytest.raises(ValueError, match="no image/mask pairs"):
        AnomalyBank.from_folder(tmp_path)


def test_mask_of_other_size_is_skipped_with_a_warning_naming_it(tmp_path):
    _pair(tmp_path / "crack", "a_1", size=(40, 30), mask_size=(30, 40))
    _pair(tmp_path / "crack", "a_2")
    with pytest.warns(UserWarning, match="skipped 1 unusable source.*a_1_mask.png is 40x30 but image"):
        bank = AnomalyBank.from_folder(tmp_path)
    assert [entry.id for entry in bank.entries] == ["a_2"]


def test_unreadable_sources_are_skipped_with_one_counting_warning(tmp_path):
    _pair(tmp_path / "crack", "a_1")
    _pair(tmp_path / "crack", "a_2")
    _pair(tmp_path / "crack", "a_3")
    (tmp_path / "crack" / "a_2.png").write_bytes(b"")
    (tmp_path / "crack" / "a_3_mask.png").write_bytes(b"\x89PNG\r\n")
    with pytest.warns(UserWarning, match="skipped 2 unusable source"):
        bank = AnomalyBank.from_folder(tmp_path)
    assert [entry.id for entry in bank.entries] == ["a_1"]


def test_bank_of_only_bad_sources_is_a_clear_error(tmp_path):
    _pair(tmp_path / "crack", "a_1", size=(40, 30), mask_size=(30, 40))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="anomaly bank is empty"):
        AnomalyBank.from_folder(tmp_path)


def test_empty_masks_are_skipped_with_one_counting_warning(tmp_path):
    _pair(tmp_path / "crack", "a_1")
    _pair(tmp_path / "crack", "a_2", box=(0, 0, 0, 0))
    _pair(tmp_path / "crack", "a_3", box=(0, 0, 0, 0))
    with pytest.warns(UserWarning, match="skipped 2 source"):
        bank = AnomalyBank.from_folder(tmp_path)
    assert bank.ids == ["a_1"]


def test_only_empty_masks_is_an_empty_bank_error(tmp_path):
    _pair(tmp_path / "crack", "a_2", box=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="empty"), pytest.warns(UserWarning):
        AnomalyBank.from_folder(tmp_path)


def test_unreadable_image_warning_names_the_file(tmp_path):
    _pair(tmp_path / "crack", "a_1")
    _pair(tmp_path / "crack", "a_2")
    (tmp_path / "crack" / "a_1.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="a_1.png"):
        AnomalyBank.from_folder(tmp_path)


def test_classes_restrict_and_unknown_class_is_an_error(tmp_path):
    _pair(tmp_path / "crack", "a_1")
    _pair(tmp_path / "stain", "a_2")
    assert AnomalyBank.from_folder(tmp_path, classes=["stain"]).ids == ["a_2"]
    with pytest.raises(ValueError, match="hole"):
        AnomalyBank.from_folder(tmp_path, classes=["hole"])


def test_exclude_by_dataset_prefix_id_and_manifest_repo(tmp_path):
    _pair(tmp_path / "crack", "neu_1")
    _pair(tmp_path / "crack", "cfd_2")
    _pair(tmp_path / "crack", "other_3")
    with (tmp_path / "MANIFEST.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "class", "source_repo", "source_path", "license_if_known"])
        writer.writerow(["other_3", "crack", "someone/mvtec_ad", "x", ""])
    assert AnomalyBank.from_folder(tmp_path, exclude="neu").ids == ["cfd_2", "other_3"]
    assert AnomalyBank.from_folder(tmp_path, exclude=["cfd_2", "mvtec_ad"]).ids == ["neu_1"]


def test_real_bank_loads_all_paper_classes():
    from conftest import shared_data_path

    from cai_aug.engine.bank import PAPER_CLASSES

    bank = AnomalyBank.from_folder(shared_data_path("anomaly_bank"), classes=["hole", "abrasion"])
    assert set(bank.classes) <= set(PAPER_CLASSES)
    assert len(bank) == 49 + 60


def _two_datasets(root):
    _pair(root / "crack", "neu_1")
    _pair(root / "crack", "other_3")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp1252"], ids=["utf8-bom", "latin1"])
def test_a_spreadsheet_saved_manifest_still_excludes_by_source_repo(tmp_path, encoding):
    _two_datasets(tmp_path)
    text = "id,class,source_repo,source_path,license_if_known\r\nother_3,crack,someone/mvtec_ad,x,Société\r\n"
    (tmp_path / "MANIFEST.csv").write_bytes(text.encode(encoding))
    assert AnomalyBank.from_folder(tmp_path, exclude="mvtec_ad").ids == ["neu_1"]


def test_an_unreadable_manifest_is_an_error_naming_its_line(tmp_path):
    _two_datasets(tmp_path)
    (tmp_path / "MANIFEST.csv").write_text("id,class,source_repo\nother_3,crack,mvtec_ad\nneu_1\0,crack,x\n")
    with pytest.raises(ValueError, match=r"MANIFEST.csv, line 3"):
        AnomalyBank.from_folder(tmp_path, exclude="mvtec_ad")


def test_an_exclusion_name_that_matches_nothing_is_named_in_a_warning(tmp_path):
    _two_datasets(tmp_path)
    with pytest.warns(UserWarning, match=r"exclude name\(s\) \['mvtec_ad'\] match no entry"):
        bank = AnomalyBank.from_folder(tmp_path, exclude=["neu", "mvtec_ad"])
    assert bank.ids == ["other_3"]


def test_every_non_zero_label_of_a_16_bit_mask_is_a_defect_pixel(tmp_path):
    _pair(tmp_path / "crack", "a_1", size=(40, 30))
    labels = np.zeros((40, 30), dtype=np.uint16)
    labels[5:10, 5:9] = 1
    labels[20:30, 10:20] = 128
    Image.fromarray(labels).save(tmp_path / "crack" / "a_1_mask.png")
    _, mask = AnomalyBank.from_folder(tmp_path, context=0).source(0)
    assert int(mask.sum()) == 5 * 4 + 10 * 10


def test_a_dim_colour_label_is_a_defect_pixel(tmp_path):
    _pair(tmp_path / "crack", "a_1", size=(40, 30))
    colours = np.zeros((40, 30, 3), dtype=np.uint8)
    colours[5:15, 5:15, 2] = 1  # label 1 in the blue channel: 0 after a luminance conversion
    Image.fromarray(colours).save(tmp_path / "crack" / "a_1_mask.png")
    _, mask = AnomalyBank.from_folder(tmp_path, context=0).source(0)
    assert int(mask.sum()) == 100


def test_synth_names_an_exclusion_that_matches_nothing(tmp_path, demo_bank_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    normal = tmp_path / "normal"
    normal.mkdir()
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(normal / "a.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    argv = ["synth", "--normal", normal, "--bank", demo_bank_dir, "--out", tmp_path / "out", "--per-image", "1"]
    argv += ["--exclude", "no-such-dataset"]
    result = subprocess.run(
        [sys.executable, "-m", "cai_aug", *map(str, argv)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "exclude name(s) ['no-such-dataset'] match no entry" in result.stderr
