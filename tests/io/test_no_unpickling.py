"""Pickled files are refused with a clear error naming the file, never unpickled."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from benchmarks.detector.authenticity import load_feature_extractor
from cai_aug.cdm.checkpoint import STATE, load_training_state


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
