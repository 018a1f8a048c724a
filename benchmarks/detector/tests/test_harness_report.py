"""Reports of the harness: mean ± std over seeds, paired differences, counts, contact sheet, plot."""

from __future__ import annotations

import torch

from benchmarks.detector.cli import assignment
from benchmarks.detector.report import bar_plot, contact_sheet, markdown, mean_std, read_csv, write_csv


def _rows():
    rows = []
    for seed, (cai, cp) in enumerate([(90.0, 80.0), (92.0, 79.0), (94.0, 84.0)]):
        for synth, v in (("cai-n", cai), ("cutpaste", cp), ("real-kfold", 99.0)):
            rows.append({"synth": synth, "seed": seed, "kind": "best", "epoch": 3, "pixel_auroc": v,
                         "pixel_ap": v / 2, "pro": v - 10, "image_auroc": v, "synth_s_per_image": 0.01,
                         "train_s": 5.0})  # fmt: skip
    return rows


def test_markdown_mean_std_and_paired_difference():
    md = markdown(_rows())
    # cai-n: 90, 92, 94 -> 92.0 ± 2.0 (sample std)
    assert "| cai-n | 3,3,3 | 92.0 ± 2.0 |" in md
    # paired cutpaste - cai-n: -10, -13, -10 -> -11.0 ± 1.7
    assert "| cutpaste | -11.0 [" in md
    assert "real-kfold (upper bound, not ranked)" in md
    paired = md.split("Paired difference")[1]
    assert "real-kfold" not in paired  # never ranked against the zero-shot synthesisers


def test_csv_roundtrip_and_plot(tmp_path):
    rows = _rows()
    write_csv(rows, tmp_path / "r.csv")
    back = read_csv(tmp_path / "r.csv")
    assert len(back) == len(rows) and back[0]["pixel_auroc"] == 90.0
    bar_plot(back, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, 2**0.5, 2)


def test_assignment_per_image_and_total():
    assert assignment(3, 2, None) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    pairs = assignment(3, 10, 7)
    assert len(pairs) == 7 and pairs[:4] == [(0, 0), (1, 0), (2, 0), (0, 1)]
    assert len(set(pairs)) == 7


def test_contact_sheet(tmp_path):
    imgs = torch.rand(5, 3, 32, 32)
    masks = torch.zeros(5, 1, 32, 32)
    masks[:, :, 8:16, 8:16] = 1
    contact_sheet(imgs, masks, tmp_path / "sheet.png", "title", cols=4, tile=64)
    import cv2

    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape[1] > 2 * 64
