"""Pickled files are refused with a clear error naming the file, never unpickled; on the command line the
refusal is one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from benchmarks.detector.authenticity import load_feature_extractor
from cai_aug.cdm.checkpoint import STATE, WEIGHTS, load_checkpoint, load_training_state

REPO = Path(__file__).resolve().parents[2]


def test_fid_weights_refuse_a_pickled_module(tmp_path) -> None:
    path = tmp_path / "inception.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"--fid-weights .*inception\.pt: not a TorchScript file"):
        load_feature_extractor(path)


def test_fid_weights_load_a_torchscript_module(tmp_path) -> None:
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    assert isinstance(load_feature_extractor(path), torch.jit.ScriptModule)


def test_a_training_state_with_objects_is_a_value_error_naming_the_file(tmp_path) -> None:
    torch.save({"step": 1, "optimizer": argparse.Namespace(lr=1.0)}, tmp_path / STATE)
    with pytest.raises(ValueError, match=STATE):
        load_training_state(tmp_path)


@pytest.mark.parametrize("damage", ["empty", "text", "truncated", "not-a-state"])
def test_a_damaged_training_state_is_a_value_error_naming_the_file(tmp_path, damage) -> None:
    path = tmp_path / STATE
    torch.save({"step": 1, "optimizer": {"state": {0: {"m": torch.zeros(256)}}}}, path)
    data = {"empty": b"", "text": b"hello", "truncated": path.read_bytes()[:200]}.get(damage)
    if data is None:
        torch.save([1, 2], path)
    else:
        path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"{STATE}: not a"):
        load_training_state(tmp_path)


# ---------------------------------------------------------------------- the command line (cdm extra)
@pytest.fixture(scope="module")
def cdm_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny pretrained model, a `cai-aug synth`-style folder and a one-step checkpoint trained on it."""
    tmp_path = tmp_path_factory.mktemp("cdm")
    pytest.importorskip("diffusers", reason="needs the cdm extra")
    pytest.importorskip("transformers", reason="needs the cdm extra")
    import cai_aug.cdm as cdm

    pretrained = cdm.make_tiny_pretrained(tmp_path / "tiny-sd", image_size=32)
    pseudo = tmp_path / "pseudo"
    (pseudo / "images").mkdir(parents=True)
    (pseudo / "masks").mkdir()
    records = []
    for i in range(2):
        mask = np.zeros((32, 32), np.uint8)
        mask[6:18, 4 + 4 * i : 14 + 4 * i] = 255
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(pseudo / "images" / f"s{i}.png")
        Image.fromarray(mask).save(pseudo / "masks" / f"s{i}_mask.png")
        records.append({"image": f"images/s{i}.png", "source_class": ("crack", "stain")[i]})
    (pseudo / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "ckpt"
    config = cdm.CDMTrainConfig(
        steps=1, batch_size=2, mask_size=32, tokens_per_class=2, spatial_tokens=2, encoder={"width": 8, "grid": 4}
    )
    cdm.train_cdm(pseudo, pretrained, out, config=config, device="cpu", progress=False)
    return pretrained, pseudo, out


def _cli(*argv: str | Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    # `python -m cai_aug` after the test set-up's torchvision schemas (conftest): on this CPU torch the
    # CUDA torchvision wheel that transformers imports does not load otherwise
    code = "import sys, conftest; from cai_aug.cli import main; sys.exit(main(sys.argv[1:]))"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env["PYTHONPATH"]])
    command = [sys.executable, "-c", code, *map(str, argv)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _one_line_refusal(result: subprocess.CompletedProcess, command: str, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cai-aug {command}: error: ")
    for word in words:
        assert word in last


@pytest.mark.slow
def test_cdm_train_resume_refuses_a_pickled_training_state_in_one_line(tmp_path, cdm_folders) -> None:
    pretrained, pseudo, checkpoint = cdm_folders
    out = shutil.copytree(checkpoint, tmp_path / "ckpt")
    torch.save({"step": 1, "optimizer": argparse.Namespace(lr=1.0)}, out / STATE)
    result = _cli("cdm-train", "--pseudo", pseudo, "--pretrained", pretrained, "--out", out, "--steps", "2",
                  "--resume", "--device", "cpu")  # fmt: skip
    _one_line_refusal(result, "cdm-train", str(out / STATE), "never unpickled")


@pytest.mark.slow
def test_cdm_sample_refuses_damaged_weights_in_one_line(tmp_path, cdm_folders) -> None:
    pretrained, _, checkpoint = cdm_folders
    out = shutil.copytree(checkpoint, tmp_path / "ckpt")
    (out / WEIGHTS).write_bytes(b"junk" * 8)
    with pytest.raises(ValueError, match="is not a usable CDM checkpoint"):
        load_checkpoint(out)
    normal = tmp_path / "normal"
    normal.mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(normal / "a.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "masks" / "a_mask.png")
    result = _cli("cdm-sample", "--normal", normal, "--pretrained", pretrained, "--checkpoint", out,
                  "--masks", tmp_path / "masks", "--out", tmp_path / "samples", "--device", "cpu")  # fmt: skip
    _one_line_refusal(result, "cdm-sample", "is not a usable CDM checkpoint", "SafetensorError")
