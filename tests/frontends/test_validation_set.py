"""``write_validation_set`` / ``cai-aug validation-set``: the MVTec layout from held-out normals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_frontend_augment import write_tiny_bank

from cai_aug.frontends.validation import split_bank_sources, write_validation_set
from cai_aug.io.demo_data import write_demo_normals
from cai_aug.io.images import read_image, read_mask, write_image, write_mask

ROOT = Path(__file__).resolve().parents[2]


def _two_source_bank(root: Path) -> Path:
    """The tiny bank with a second source dataset (``other_*``) beside ``tiny_*``."""
    write_tiny_bank(root)
    for mask_path in sorted(root.glob("*/tiny_*_mask.png")):
        image_path = mask_path.with_name(mask_path.name.replace("_mask", ""))
        stem = image_path.stem.replace("tiny_", "other_")
        write_image(image_path.with_name(f"{stem}.png"), read_image(image_path))
        write_mask(mask_path.with_name(f"{stem}_mask.png"), read_mask(mask_path))
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    return write_demo_normals(tmp / "normal", n=3), _two_source_bank(tmp / "bank")


def test_mvtec_layout_with_masks_of_the_images(inputs, tmp_path):
    normal, bank = inputs
    result = write_validation_set(normal, bank, tmp_path / "val", per_image=2, sources=["other"], seed=1)
    assert result.good == 3 and sum(result.anomalies.values()) == 6 and result.sources == ("other",)
    assert len(list((tmp_path / "val" / "test" / "good").glob("*.png"))) == 3
    for cls in result.anomalies:
        for image_path in sorted((tmp_path / "val" / "test" / cls).glob("*.png")):
            mask = read_mask(tmp_path / "val" / "ground_truth" / cls / f"{image_path.stem}_mask.png")
            assert mask.shape == read_image(image_path).shape[:2] and mask.any()
    record = json.loads((tmp_path / "val" / "validation.json").read_text())
    assert record["sources"] == ["other"] and all(e["source"].startswith("other_") for e in record["entries"])


def test_same_seed_same_folder(inputs, tmp_path):
    normal, bank = inputs
    a = write_validation_set(normal, bank, tmp_path / "a", seed=3)
    write_validation_set(normal, bank, tmp_path / "b", seed=3)
    for cls in a.anomalies:
        for path in (tmp_path / "a" / "test" / cls).glob("*.png"):
            assert np.array_equal(read_image(path), read_image(tmp_path / "b" / "test" / cls / path.name))


def test_refuses_a_used_or_overlapping_output(inputs, tmp_path):
    normal, bank = inputs
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_validation_set(normal, bank, tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "x"
    with pytest.raises(ValueError, match="must not contain each other"):
        write_validation_set(normal, bank, normal / "val")
    with pytest.raises(ValueError, match="not in bank"):
        write_validation_set(normal, bank, tmp_path / "v", sources=["nope"])


def test_automatic_split_keeps_one_source_for_training(inputs):
    _, bank = inputs
    split = split_bank_sources(bank, fraction=0.5)
    assert len(split.validation) == 1 and len(split.training) == 1


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cai_aug", "validation-set", *args], capture_output=True, text=True, env=env
    )


def test_command_writes_the_folder_and_names_the_sources(inputs, tmp_path):
    normal, bank = inputs
    done = _cli("--normal", str(normal), "--bank", str(bank), "--out", str(tmp_path / "v"), "--sources", "tiny")
    assert done.returncode == 0, done.stderr
    assert "validation sources: tiny" in done.stdout and "exclude=['tiny']" in done.stdout
    assert len(list((tmp_path / "v" / "test" / "good").glob("*.png"))) == 3


def test_command_refuses_unknown_sources_with_exit_2(inputs, tmp_path):
    normal, bank = inputs
    done = _cli("--normal", str(normal), "--bank", str(bank), "--out", str(tmp_path / "v"), "--sources", "nope")
    assert done.returncode == 2 and "['nope']" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "v").exists()
