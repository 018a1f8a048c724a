"""The paired 95 % interval over seeds against scipy.stats.t."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks.detector.report import markdown, t_interval


def test_t_interval_matches_scipy():
    diffs = [-10.0, -13.0, -10.0, -7.5]
    m, lo, hi, n = t_interval(diffs)
    ref_lo, ref_hi = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert n == 4 and m == pytest.approx(np.mean(diffs))
    assert (lo, hi) == (pytest.approx(ref_lo), pytest.approx(ref_hi))


def test_t_interval_equals_paired_ttest_interval():
    a, b = np.array([50.0, 55.0, 61.0]), np.array([48.0, 50.0, 60.0])
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    _, lo, hi, _ = t_interval(a - b)
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_t_interval_single_seed_has_no_interval():
    m, lo, hi, n = t_interval([3.0, float("nan")])
    assert (m, n) == (3.0, 1) and math.isnan(lo) and math.isnan(hi)


def test_markdown_reports_the_interval():
    rows = []
    for seed, (cai, cp) in enumerate([(90.0, 80.0), (92.0, 79.0), (94.0, 84.0)]):
        for synth, v in (("cai-n", cai), ("cutpaste", cp)):
            rows.append({"synth": synth, "seed": seed, "kind": "best", "epoch": 3, "pixel_auroc": v,
                         "pixel_ap": v, "pro": v, "image_auroc": v})  # fmt: skip
    _, lo, hi, _ = t_interval([-10.0, -13.0, -10.0])
    assert f"| cutpaste | -11.0 [{lo:+.1f}, {hi:+.1f}]*" in markdown(rows)
