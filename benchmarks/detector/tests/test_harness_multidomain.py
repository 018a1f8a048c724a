"""Several domains in one run: --data with a folder of MVTec-layout folders, one summary across them."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.detector import cli
from benchmarks.detector.report import mean_ranks, summary_markdown
from benchmarks.detector.toydata import make_mvtec


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    make_mvtec(tmp / "domains" / "alpha", n_train=6, n_good=3, n_defect=4, size=64, seed=0)
    make_mvtec(tmp / "domains" / "beta", n_train=6, n_good=3, n_defect=4, size=64, seed=1)
    out = tmp / "out"
    argv = [
        "--data", str(tmp / "domains"), "--synth", "cutpaste,nsa-n", "--preset", "crop", "--size", "64",
        "--epochs", "1", "--width", "4", "--seeds", "0,1", "--reference", "cutpaste", "--out", str(out),
        "--quiet", "--no-authenticity",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out


def test_multi_domain_writes_one_summary(multi_run):
    md = (multi_run / "summary.md").read_text()
    assert "alpha AP" in md and "beta AP" in md and "mean rank (AP)" in md
    assert "| nsa-n |" in md and "95% t interval" in md
    assert (multi_run / "summary_bars.png").stat().st_size > 1000
    for d in ("alpha", "beta"):
        assert (multi_run / d / "results.csv").exists()
        assert (multi_run / d / "contact_sheets" / "cutpaste.png").exists()


def test_resume_skips_runs_already_done(multi_run, capsys):
    from benchmarks.detector.report import read_csv

    before = read_csv(multi_run / "results.csv")
    argv = [
        "--data", str(multi_run.parent / "domains"), "--synth", "cutpaste,nsa-n", "--preset", "crop",
        "--size", "64", "--epochs", "1", "--width", "4", "--seeds", "0,1", "--out", str(multi_run),
        "--quiet", "--no-authenticity", "--resume",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert "already done (--resume)" in capsys.readouterr().err
    assert len(read_csv(multi_run / "results.csv")) == len(before) == 2 * 2 * 2 * 2  # domains x synths x seeds x kinds


def test_expand_data_rejects_a_folder_without_domains(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.expand_data([str(tmp_path)])


def _rows():
    rows = []
    for d, (a, b) in {"d1": (10.0, 20.0), "d2": (30.0, 5.0), "d3": (8.0, 6.0)}.items():
        for seed in (0, 1):
            for s, v in (("cai-n", a + seed), ("draem", b + 2 * seed)):
                rows.append({"domain": d, "synth": s, "seed": seed, "kind": "best", "pixel_ap": v,
                             "pixel_auroc": 90.0, "pro": 50.0, "image_auroc": 70.0})  # fmt: skip
    return rows


def test_mean_rank_by_pixel_ap():
    # cai-n ranks 2, 1, 1 -> 1.33; draem 1, 2, 2 -> 1.67
    ranks = mean_ranks(_rows())
    assert ranks["cai-n"] == pytest.approx(4 / 3) and ranks["draem"] == pytest.approx(5 / 3)


def test_mean_rank_ignores_a_synthesiser_missing_on_a_domain():
    rows = _rows() + [{"domain": "d1", "synth": "extra", "seed": 0, "kind": "best", "pixel_ap": 99.0}]
    ranks = mean_ranks(rows)
    assert "extra" not in ranks and ranks["cai-n"] == pytest.approx(4 / 3)


def test_summary_means_over_domains():
    md = summary_markdown(_rows(), "cai-n")
    # cai-n seed means 10.5, 30.5, 8.5 -> 16.5; draem 21, 6, 7 -> 11.3
    assert "| cai-n | 16.5 |" in md and "| draem | 11.3 |" in md
    # paired over seeds, mean over domains per seed: seed0 (10-25-2)/3 = -5.667, seed1 (11-24-1)/3 = -4.667
    assert np.isfinite(-5.2) and "| draem | -5.2 [" in md
