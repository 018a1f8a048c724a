import json

import numpy as np
import pytest
from PIL import Image

from cai_aug.cli import main
from cai_aug.io.demo_data import write_demo_normals


@pytest.fixture(scope="module")
def normals(tmp_path_factory):
    root = write_demo_normals(tmp_path_factory.mktemp("normals"), n=3, size=64)
    (root / "sub").mkdir()
    (root / "normal_000.png").rename(root / "sub" / "normal_000.png")
    return root


def _synth(normals, bank, out, *extra):
    args = ["synth", "--normal", str(normals), "--bank", str(bank), "--out", str(out), "--per-image", "3"]
    return main([*args, "--seed", "4", *extra])


def _records(out):
    return sorted(
        (json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()), key=lambda r: r["image"]
    )


def test_synth_writes_the_mvtec_style_layout(normals, demo_bank_dir, tmp_path):
    assert _synth(normals, demo_bank_dir, tmp_path / "out") == 0
    records = _records(tmp_path / "out")
    assert len(records) == 9
    assert {r["normal"] for r in records} == {"sub/normal_000.png", "normal_001.png", "normal_002.png"}
    for record in records:
        assert (tmp_path / "out" / record["image"]).exists()
        mask = Image.open(tmp_path / "out" / record["mask"])
        assert mask.mode == "L" and set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        assert record["mask"].endswith("_mask.png") and record["label"] == 1
    assert (tmp_path / "out" / "images" / "sub__normal_000_000.png").exists()
    assert Image.open(tmp_path / "out" / "preview.png").size[0] > 100


def test_resume_after_an_interrupted_run_equals_a_full_run(normals, demo_bank_dir, tmp_path):
    _synth(normals, demo_bank_dir, tmp_path / "full")
    _synth(normals, demo_bank_dir, tmp_path / "cut")
    cut = tmp_path / "cut"
    lines = (cut / "manifest.jsonl").read_text().splitlines()
    # a kill part-way: later records lost, one image file gone, the last manifest line cut short
    (cut / "manifest.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    (cut / json.loads(lines[3])["image"]).unlink()
    assert _synth(normals, demo_bank_dir, cut, "--resume") == 0
    full, resumed = _records(tmp_path / "full"), _records(cut)
    assert len(resumed) == len(full) == 9
    assert resumed == full
    for record in full:
        assert Image.open(tmp_path / "full" / record["image"]).tobytes() == Image.open(cut / record["image"]).tobytes()


def test_existing_run_without_resume_is_refused(normals, demo_bank_dir, tmp_path):
    _synth(normals, demo_bank_dir, tmp_path / "out")
    assert _synth(normals, demo_bank_dir, tmp_path / "out") == 2


def test_missing_bank_is_a_clear_cli_error(normals, tmp_path, capsys):
    assert _synth(normals, tmp_path / "no_bank", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_runs_on_the_built_in_default(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--images", "2", "--per-image", "2"]) == 0
    assert (tmp_path / "pseudo_anomalies" / "preview.png").exists()
    assert len(_records(tmp_path / "pseudo_anomalies")) == 4


def test_preview_accepts_images_of_different_sizes(tmp_path):
    import torch

    from cai_aug.io.preview import save_contact_sheet

    images = [torch.rand(3, 40, 60), torch.rand(1, 64, 64)]
    masks = [torch.zeros(1, 40, 60), torch.ones(1, 64, 64)]
    path = save_contact_sheet(tmp_path / "sheet.png", images, masks, ["a", "b"], tile=32)
    assert Image.open(path).size == (2 * 36 + 4, 36 + 14 + 4)


def test_engine_flags_build_the_engine_config(demo_bank_dir, tmp_path):
    from cai_aug import CAIConfig
    from cai_aug.cli import build_parser
    from cai_aug.cli.options import engine_config

    argv = ["synth", "--normal", str(tmp_path), "--bank", str(demo_bank_dir), "--out", str(tmp_path / "o")]
    defaults = build_parser().parse_args(argv)
    assert engine_config(defaults) == CAIConfig()
    args = build_parser().parse_args([*argv, "--mode", "mixed", "--quotas", "1:1:1", "--margin", "4", "--no-use-stm"])
    assert engine_config(args) == CAIConfig(mode="mixed", quotas="1:1:1", margin=4, use_stm=False)
    args = build_parser().parse_args([*argv, "--ratio-decimals", "none"])
    assert engine_config(args).ratio_decimals is None


def test_bad_engine_flag_is_a_clear_cli_error(normals, demo_bank_dir, tmp_path, capsys):
    assert _synth(normals, demo_bank_dir, tmp_path / "out", "--median", "4") == 2
    assert "median must be an odd" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # checked before any work


def test_preset_flag_starts_from_the_preset_and_given_flags_win(demo_bank_dir, tmp_path):
    from cai_aug import CAIConfig
    from cai_aug.cli import build_parser
    from cai_aug.cli.options import engine_config

    argv = ["synth", "--normal", str(tmp_path), "--bank", str(demo_bank_dir), "--out", str(tmp_path / "o")]
    args = build_parser().parse_args([*argv, "--preset", "paper"])
    assert engine_config(args) == CAIConfig.preset("paper")
    # a flag given with the class default's value still overrides the preset
    args = build_parser().parse_args([*argv, "--preset", "paper", "--grey-injection", "--mode", "both"])
    assert engine_config(args) == CAIConfig.preset("paper").replace(grey_injection=True, mode="both")
