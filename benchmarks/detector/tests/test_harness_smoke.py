"""End to end: the smoke preset on a tiny synthetic MVTec-layout dataset, then --eval-only."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from benchmarks.detector import cli
from benchmarks.detector.report import read_csv
from benchmarks.detector.toydata import make_bank, make_mvtec


def _engine_available() -> bool:
    try:
        from cai_aug import CAI, AnomalyBank  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    data = make_mvtec(tmp / "toyset", n_train=8, n_good=4, n_defect=8, size=64)
    bank = make_bank(tmp / "bank", per_class=4)
    out = tmp / "out"
    synths = ["cutpaste", "nsa-m", "draem", "real-kfold"] + (["cai-n"] if _engine_available() else [])
    argv = [
        "--data", str(data), "--bank", str(bank), "--synth", ",".join(synths), "--preset", "smoke",
        "--size", "32", "--epochs", "2", "--width", "4", "--per-image", "2", "--kfold", "2",
        "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out, synths


def test_smoke_outputs(run):
    out, synths = run
    rows = read_csv(out / "results.csv")
    assert {r["synth"] for r in rows} == set(synths)
    assert {r["kind"] for r in rows} == {"val", "val-perlin", "best", "last"}
    for r in rows:
        for m in ("pixel_auroc", "pixel_ap", "pro", "image_auroc"):
            assert 0 <= r[m] <= 100, (r["synth"], m, r[m])
        if r["synth"] != "real-kfold":
            # 2 of the 8 normals are held out for the validation splits, 2 pseudo anomalies on each other one
            assert (r["n_normal"], r["n_pseudo"]) == ("6", "12") and r["synth_s_per_image"] > 0 and r["train_s"] > 0
            assert not math.isnan(r["seam_ratio"])
    md = (out / "results.md").read_text()
    assert "| cutpaste |" in md and "real-kfold (upper bound, not ranked)" in md
    assert (out / "bars.png").stat().st_size > 0
    for s in synths:
        if s != "real-kfold":
            assert (out / "contact_sheets" / f"{s}.png").exists()
    index = out / "cutpaste" / "seed0" / "maps" / "index.csv"
    with index.open() as fh:
        entries = list(csv.DictReader(fh))
    assert len(entries) == 12 and sum(1 for e in entries if not e["mask"]) == 4
    amap = np.load(index.parent / entries[0]["map"])
    assert amap.shape == (64, 64) and np.issubdtype(amap.dtype, np.floating)


def test_eval_only_reproduces_metrics(run, tmp_path):
    out, _ = run
    assert cli.main(["--eval-only", str(out), "--out", str(tmp_path)]) == 0
    again = {(r["synth"], r["seed"], r["kind"]): r for r in read_csv(tmp_path / "results_eval_only.csv")}
    rows = read_csv(out / "results.csv")
    assert len(again) == len(rows)
    for r in rows:
        e = again[(r["synth"], r["seed"], r["kind"])]
        for m in ("pixel_auroc", "pixel_ap", "pro", "image_auroc"):
            assert e[m] == pytest.approx(r[m], abs=1e-4), (r["synth"], r["kind"], m)


def test_leakage_guard(tmp_path):
    data = make_mvtec(tmp_path / "pcbset", n_train=2, n_good=1, n_defect=2, source_repo="someone/PCBSet")
    bank = make_bank(tmp_path / "bank", per_class=2, prefix="pcbset", source_repo="someone/PCBSet")
    argv = ["--data", str(data), "--bank", str(bank), "--synth", "draem", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2  # refused
    from benchmarks.detector.data import LeakageError, check_leakage

    with pytest.raises(LeakageError, match="--force"):
        check_leakage(bank, data)
    # by source_repo alone (ids that do not name the dataset)
    bank2 = make_bank(tmp_path / "bank2", per_class=2, prefix="other", source_repo="someone/PCBSet")
    with pytest.raises(LeakageError):
        check_leakage(bank2, data)
    # excluded entries no longer leak; a clean bank passes
    assert check_leakage(bank, data, exclude=["pcbset"])
    clean = make_bank(tmp_path / "clean", per_class=2, prefix="neu", source_repo="x/NEU")
    assert check_leakage(clean, data)
