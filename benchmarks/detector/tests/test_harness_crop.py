"""The ``crop`` preset end to end on tiny synthetic data, and its building blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.detector import cli
from benchmarks.detector.data import working_shape
from benchmarks.detector.report import read_csv
from benchmarks.detector.toydata import make_mvtec
from benchmarks.detector.train import PRESETS, crop_shape, crop_windows, lr_factor, predict
from benchmarks.detector.unet import DiscriminativeUNet


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crop")
    data = make_mvtec(tmp / "toyset", n_train=6, n_good=3, n_defect=4, size=80)
    out = tmp / "out"
    argv = [
        "--data", str(data), "--synth", "cutpaste", "--preset", "crop", "--size", "64",
        "--epochs", "2", "--width", "4", "--out", str(out), "--quiet", "--no-authenticity",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out


def test_crop_preset_defaults(tmp_path):
    p = PRESETS["crop"]
    assert (p.size, p.crop, p.schedule) == (256, 128, "cosine") and p.keep_aspect
    data = str(make_mvtec(tmp_path / "d", n_train=2, n_good=1, n_defect=1, size=32))
    assert cli.parse_args(["--data", data, "--preset", "crop", "--synth", "cutpaste"]).seed_list == [0, 1, 2]
    assert cli.parse_args(["--data", data, "--synth", "cutpaste"]).seed_list == [0]


def test_crop_preset_end_to_end(crop_run):
    rows = read_csv(crop_run / "results.csv")
    assert {r["seed"] for r in rows} == {"0", "1", "2"}  # the preset's default seeds
    assert {r["kind"] for r in rows} == {"best", "last"}
    assert all(r["size"] == "64x64" for r in rows)  # 80 px -> 64 on the long side
    assert all(np.isfinite(r["pixel_ap"]) and r["wall_s"] > 0 for r in rows)
    assert (crop_run / "cutpaste" / "seed0" / "maps_sheet.png").stat().st_size > 1000
    # maps are stored at the ground truth's native resolution (80 px), never below the working one
    amap = np.load(next((crop_run / "cutpaste" / "seed0" / "maps").glob("*.npy")))
    assert amap.shape == (80, 80)


def test_working_shape_keeps_aspect_and_never_upscales():
    assert working_shape((271, 384), 256) == (181, 256)
    assert working_shape((128, 128), 256) == (128, 128)


def test_crop_windows_hold_the_pseudo_anomaly():
    g = np.random.default_rng(0)
    masks = torch.zeros(50, 1, 100, 140)
    masks[:25, 0, 90:95, 3:6] = 1  # near a corner
    pos = [torch.nonzero(m[0]).numpy() if m.any() else None for m in masks]
    corners = crop_windows(masks, (64, 64), g, pos)
    for m, (y, x) in zip(masks, corners):
        assert 0 <= y <= 36 and 0 <= x <= 76
        if m.any():
            assert m[0, y : y + 64, x : x + 64].any()
    assert crop_shape(128, 100, 140) == (96, 128)


def test_cosine_schedule_warms_up_and_decays():
    f = [lr_factor(s, 100, "cosine", 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:])) and f[-1] < 0.01
    assert lr_factor(50, 100, "constant") == 1.0


def test_predict_is_fully_convolutional_on_any_shape():
    model = DiscriminativeUNet(3, 2, 4)
    maps = predict(model, torch.rand(3, 3, 45, 70), 2, torch.device("cpu"))
    assert maps.shape == (3, 45, 70)
