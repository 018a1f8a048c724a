"""`cai-aug cdm-sample` writes through the shared output folder: keys relative to --normal, formats kept,
resumable, bad inputs and masks that do not match their image skipped. The diffusion model is stubbed
(its own tests are in tests/frontends/test_cdm.py); this is about the files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cai_aug.cli import main


class FakeSampler:
    """Inverts the pixels inside the masks, as a stand-in for blended latent diffusion."""

    calls: list[list[str]] = []

    def __init__(self, *args, **kwargs) -> None:
        pass

    def generate(self, images, masks=None, keys=None):
        FakeSampler.calls.append(list(keys))
        out = torch.where(masks > 0, 1 - images, images)
        return SimpleNamespace(images=out, masks=masks, classes=["crack"] * len(images))


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setattr("cai_aug.cdm.CDMSampler", FakeSampler)
    FakeSampler.calls = []
    normal, masks = tmp_path / "normal", tmp_path / "masks"
    (normal / "sub").mkdir(parents=True)
    (masks / "sub").mkdir(parents=True)
    grey = np.tile(np.arange(32, dtype=np.uint8)[None] * 8, (32, 1))
    Image.fromarray(grey).save(normal / "a.png")
    Image.fromarray(np.dstack([grey] * 3)).save(normal / "sub" / "a.png")  # same name, nested
    Image.fromarray(grey.astype(np.uint16) * 200).save(normal / "b16.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    for name in ("a", "sub/a", "b16"):
        Image.fromarray(mask).save(masks / f"{name}_mask.png")
    return normal, masks


def _sample(normal: Path, masks: Path, out: Path, *extra: str) -> int:
    argv = ["cdm-sample", "--normal", str(normal), "--pretrained", str(normal), "--checkpoint", str(normal)]
    return main([*argv, "--out", str(out), "--masks", str(masks), "--per-image", "2", "--batch-size", "4", *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_records_are_relative_and_nested_names_do_not_collide(folders, tmp_path):
    normal, masks = folders
    assert _sample(normal, masks, tmp_path / "out") == 0
    records = _records(tmp_path / "out")
    assert [(r["normal"], r["index"]) for r in records] == [
        ("a.png", 0),
        ("a.png", 1),
        ("b16.png", 0),
        ("b16.png", 1),
        ("sub/a.png", 0),
        ("sub/a.png", 1),
    ]
    assert len({r["image"] for r in records}) == 6 and all((tmp_path / "out" / r["image"]).is_file() for r in records)


def test_output_keeps_the_input_mode_and_depth(folders, tmp_path):
    normal, masks = folders
    _sample(normal, masks, tmp_path / "out")
    for record in _records(tmp_path / "out"):
        source, result = Image.open(normal / record["normal"]), Image.open(tmp_path / "out" / record["image"])
        assert result.mode == source.mode
        outside = np.asarray(Image.open(masks / record["normal"].replace(".png", "_mask.png"))) == 0
        assert np.array_equal(np.asarray(result)[outside], np.asarray(source)[outside])


def test_resume_does_only_what_is_missing(folders, tmp_path):
    normal, masks = folders
    out = tmp_path / "out"
    _sample(normal, masks, out)
    whole = (out / "manifest.jsonl").read_text()
    lines = whole.splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[:3]) + "\n")  # a run stopped after 3 records
    FakeSampler.calls = []
    assert _sample(normal, masks, out, "--resume") == 0
    assert sorted(key for call in FakeSampler.calls for key in call) == ["b16.png#1", "sub/a.png#0", "sub/a.png#1"]
    assert (out / "manifest.jsonl").read_text() == whole


def test_a_used_folder_needs_resume(folders, tmp_path):
    normal, masks = folders
    _sample(normal, masks, tmp_path / "out")
    assert _sample(normal, masks, tmp_path / "out") == 2


def test_a_mask_that_does_not_match_its_image_is_skipped(folders, tmp_path):
    normal, masks = folders
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(masks / "b16_mask.png")
    assert _sample(normal, masks, tmp_path / "out") == 0
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [s["normal"] for s in skipped] == ["b16.png"] and "must match its image" in skipped[0]["reason"]
    assert "b16.png" not in {r["normal"] for r in _records(tmp_path / "out")}


def test_strict_stops_at_a_missing_mask(folders, tmp_path, capsys):
    normal, masks = folders
    (masks / "b16_mask.png").unlink()
    assert _sample(normal, masks, tmp_path / "out", "--strict") == 2
    assert "no mask for image b16.png" in capsys.readouterr().err


def test_an_output_folder_inside_the_inputs_is_refused(folders, tmp_path, capsys):
    normal, masks = folders
    assert _sample(normal, masks, normal / "out") == 2
    assert f"--out {normal / 'out'} overlaps --normal {normal}" in capsys.readouterr().err
    assert not (normal / "out").exists()
