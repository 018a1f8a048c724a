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
