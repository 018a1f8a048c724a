"""The harness's ``cdm`` slot end to end with a tiny randomly initialised diffusion model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("diffusers", reason="the cdm slot needs the cdm extra (diffusers)")
pytest.importorskip("transformers", reason="the cdm slot needs the cdm extra (transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from PIL import Image  # noqa: E402

from benchmarks.detector import cli  # noqa: E402
from benchmarks.detector.report import read_csv  # noqa: E402
from benchmarks.detector.toydata import make_bank, make_mvtec  # noqa: E402

SIZE = 32


def _pseudo_folder(folder, n=4):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    g = np.random.default_rng(0)
    records = []
    for i in range(n):
        Image.fromarray((g.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(folder / "images" / f"s{i}.png")
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[6 + i : 18 + i, 4 : 14 + i] = 255
        Image.fromarray(mask).save(folder / "masks" / f"s{i}_mask.png")
        records.append({"image": f"images/s{i}.png", "source_class": ("crack", "stain")[i % 2]})
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


def test_cdm_slot_runs_end_to_end(tmp_path):
    import torch

    import cai_aug.cdm as cdm

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrained = cdm.make_tiny_pretrained(tmp_path / "tiny-sd", image_size=SIZE)
        components = cdm.load_components(pretrained, device="cpu")
        config = cdm.CDMTrainConfig(
            steps=2, save_every=1, batch_size=2, mask_size=32, tokens_per_class=2, spatial_tokens=2,
            encoder={"width": 8, "grid": 4, "hidden": 32},
        )  # fmt: skip
        ckpt = tmp_path / "ckpt"
        cdm.train_cdm(_pseudo_folder(tmp_path / "pseudo"), components, ckpt, config=config, device="cpu",
                      progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    data = make_mvtec(tmp_path / "toyset", n_train=4, n_good=2, n_defect=2, size=32)
    bank = make_bank(tmp_path / "bank", per_class=3)
    out = tmp_path / "out"
    argv = [
        "--data", str(data), "--bank", str(bank), "--synth", "cdm", "--cdm-checkpoint", str(ckpt),
        "--cdm-pretrained", str(pretrained), "--cdm-steps", "2", "--size", "32", "--epochs", "1",
        "--width", "4", "--per-image", "1", "--no-authenticity", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    rows = read_csv(out / "results.csv")
    # one pseudo anomaly per training normal (a fifth of the four is held out for validation)
    assert {r["synth"] for r in rows} == {"cdm"} and rows[0]["n_pseudo"] == rows[0]["n_normal"] == "3"
    assert (out / "contact_sheets" / "cdm.png").exists()


def test_cdm_without_checkpoint_is_a_clear_error(tmp_path):
    data = make_mvtec(tmp_path / "toyset", n_train=2, n_good=1, n_defect=2, size=32)
    with pytest.raises(SystemExit, match="--cdm-checkpoint"):
        cli.main(["--data", str(data), "--synth", "cdm", "--out", str(tmp_path / "o")])
