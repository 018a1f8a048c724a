"""Pseudo-anomaly validation splits: hold-out, source split, selection, threshold and the reports."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.detector import cli
from benchmarks.detector.report import read_csv
from benchmarks.detector.toydata import make_bank, make_mvtec
from benchmarks.detector.validation import f1_threshold, holdout, pixel_f1, selection_quality, spearman
from cai_aug.frontends.validation import split_sources


def test_holdout_depends_on_the_names_only():
    keys = [f"train/good/{i:03d}.png" for i in range(20)]
    held = holdout(keys, 0.2)
    assert len(held) == 4
    # the same images whatever the order they are listed in
    assert {keys[i] for i in held} == {keys[::-1][i] for i in holdout(keys[::-1], 0.2)}
    assert holdout(keys, 0) == []
    assert len(holdout(keys[:3], 0.9)) == 1  # at least two normals stay for training


def test_split_sources_keeps_the_fraction_and_both_sides():
    counts = {"a": 10, "b": 10, "c": 10, "d": 70}
    split = split_sources(counts, fraction=0.25)
    assert sum(counts[s] for s in split.validation) <= 25 and split.validation and split.training
    assert set(split.validation) | set(split.training) == set(counts)
    assert not set(split.validation) & set(split.training)
    # every source larger than the fraction: the smallest one validates
    assert split_sources({"x": 50, "y": 60}, fraction=0.1).validation == ("x",)
    assert split_sources(counts, validation=["d"]).training == ("a", "b", "c")
    with pytest.raises(ValueError, match="not in the bank"):
        split_sources(counts, validation=["zz"])
    with pytest.raises(ValueError, match="two source"):
        split_sources({"a": 3})


def test_f1_threshold_hand_computed():
    # scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): thresholds 0.9 -> F1 2/3, 0.7 -> F1 0.8
    maps = [np.array([[0.9, 0.8], [0.7, 0.1]])]
    masks = [np.array([[1, 0], [1, 0]], bool)]
    thr, f1 = f1_threshold(maps, masks)
    assert thr == pytest.approx(0.7) and f1 == pytest.approx(0.8)
    assert pixel_f1(maps, masks, 0.9) == pytest.approx(2 / 3) and pixel_f1(maps, masks, 0.75) == pytest.approx(0.5)
    assert np.isnan(f1_threshold(maps, [None])[0])


def test_selection_quality_from_history():
    history = [
        {"epoch": 1, "low_pixel_ap": 10.0, "val_pixel_ap": 1.0},
        {"epoch": 2, "low_pixel_ap": 30.0, "val_pixel_ap": 3.0},
        {"epoch": 3, "low_pixel_ap": 20.0, "val_pixel_ap": 2.0},
        {"epoch": 4, "low_pixel_ap": 25.0},  # not evaluated on this split
    ]
    q = selection_quality(history, "val", epoch=3)
    assert q["sel_spearman"] == pytest.approx(1.0) and q["ap_lost"] == pytest.approx(10.0)
    assert q["n_evaluated"] == 3
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("val")
    data = make_mvtec(tmp / "toyset", n_train=10, n_good=3, n_defect=4, size=64)
    bank = make_bank(tmp / "bank", per_class=6, prefix=("srca", "srcb", "srcc"))
    out = tmp / "out"
    argv = [
        "--data", str(data), "--bank", str(bank), "--synth", "draem", "--preset", "crop", "--size", "64",
        "--epochs", "3", "--width", "4", "--seeds", "0", "--val-sources", "srcb", "--out", str(out), "--quiet",
        "--no-authenticity",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out, bank


def test_every_epoch_selected_on_both_splits(val_run):
    out, _ = val_run
    rows = {r["kind"]: r for r in read_csv(out / "results.csv")}
    assert list(rows) == ["val", "val-perlin", "last", "best"]
    for kind in ("val", "val-perlin"):
        r = rows[kind]
        assert r["n_evaluated"] == "3" and 0 <= r["val_f1"] <= 100 and np.isfinite(r["val_threshold"])
        assert r["ap_lost"] >= 0
    md = (out / "results.md").read_text()
    assert md.index("pixel AP, val-selected") < md.index("pixel AP, oracle") < md.index("last epoch**")
    assert "validation sources srcb (4 entries)" in md


def test_training_never_sees_the_validation_sources(val_run):
    out, bank = val_run
    args = cli.parse_args(["--data", str(out), "--bank", str(bank), "--synth", "draem", "--val-sources", "srcb"])
    assert cli.training_exclude(args) == ["srcb"]
    textures = cli.build_synthesiser("draem", args, 0).sources
    assert textures and not any(p.stem.startswith("srcb_") for p in textures)
    assert all(p.stem.startswith("srcb_") for p in cli.bank_textures(args, keep={"srcb"}))


def test_leave_one_domain_out_picks_on_the_other_domains():
    from benchmarks.detector.report import leave_one_domain_out, lodo_markdown

    # pixel AP per (domain, synth): cai-a is best on d1 and d2, cai-b on d3 only
    ap = {
        ("d1", "cai-a"): 50, ("d1", "cai-b"): 40, ("d1", "draem"): 45,
        ("d2", "cai-a"): 30, ("d2", "cai-b"): 20, ("d2", "draem"): 35,
        ("d3", "cai-a"): 10, ("d3", "cai-b"): 60, ("d3", "draem"): 5,
    }  # fmt: skip
    rows = [
        {"domain": d, "synth": s, "seed": seed, "kind": "val", "pixel_ap": v + seed}
        for (d, s), v in ap.items()
        for seed in (0, 1)
    ]
    table = {t["held_out"]: t for t in leave_one_domain_out(rows, "draem")}
    # d1 left out: on d2, d3 cai-a averages 20.5, cai-b 40.5 -> cai-b, which loses on d1 (40.5 vs 45.5)
    assert table["d1"]["picked"] == "cai-b" and table["d1"]["diffs"] == [-5, -5]
    # d3 left out: on d1, d2 cai-a averages 40.5, cai-b 30.5 -> cai-a, which beats draem on d3
    assert table["d3"]["picked"] == "cai-a" and table["d3"]["diffs"] == [5, 5]
    assert "Left-out domains won: 1 of 3 judged (0 not run)" in lodo_markdown(rows, "draem")
