"""CAIConfig: the engine options, checked once at construction, hashable and serialisable."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cai_aug
from cai_aug import CAI, CAIConfig
from cai_aug.engine.config import LIMITS, MODES


def test_defaults_are_the_reference_settings_where_the_benchmark_did_not_say_otherwise():
    config = CAIConfig()
    assert (config.quotas, config.foreground) == ((4.0, 3.0, 3.0), "auto")
    assert (config.threshold, config.margin, config.median, config.min_mask_pixels) == (7 / 255, 8, 7, 10)
    assert config.ratio_decimals == 1 and config.allow_upscale and config.max_attempts == 8
    # chosen by the detector benchmark (benchmarks/detector/RESULTS.md, run 7)
    assert (config.mode, config.anomalies, config.paste_weight, config.grey_injection) == ("both", 3, 0.0, True)


def test_paper_preset_differs_from_the_defaults_only_where_it_says():
    paper = CAIConfig.preset("paper")
    assert (paper.mode, paper.anomalies, paper.grey_injection, paper.atol) == ("normal", 1, False, None)
    assert paper.mask_rule == "majority"
    assert paper.replace(mode="both", anomalies=3, grey_injection=True, atol=1 / 255, mask_rule="hysteresis") == (
        CAIConfig()
    )


def test_modes_are_spelled_once():
    assert MODES == ("normal", "mixed", "both")


def test_is_exported_from_the_package():
    assert cai_aug.CAIConfig is CAIConfig and "CAIConfig" in cai_aug.__all__


def test_quotas_string_and_sequence_are_the_same_config():
    assert CAIConfig(quotas="4:3:3") == CAIConfig(quotas=(4, 3, 3)) == CAIConfig()
    assert CAIConfig(quotas=[1, 0, 0]).quotas == (1.0, 0.0, 0.0)


def test_integral_floats_are_integers():
    assert CAIConfig(margin=4.0).margin == 4 and isinstance(CAIConfig(margin=4.0).margin, int)


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("mode", "weird", ValueError, "mode must be one of"),
        ("quotas", (1, 2), ValueError, "quotas"),
        ("quotas", "4:3", ValueError, "quotas"),
        ("quotas", (-1, 1, 1), ValueError, "quotas"),
        ("quotas", (0, 0, 0), ValueError, "quotas"),
        ("quotas", 4, TypeError, "quotas"),
        ("foreground", "magic", ValueError, "foreground must be one of"),
        ("foreground", 3, ValueError, "foreground"),
        ("threshold", 1.5, ValueError, "threshold"),
        ("threshold", -0.1, ValueError, "threshold"),
        ("threshold", "7", TypeError, "threshold"),
        ("margin", -1, ValueError, "margin"),
        ("margin", 2.5, TypeError, "margin"),
        ("median", 4, ValueError, "odd"),
        ("median", 0, ValueError, "median"),
        ("min_mask_pixels", -1, ValueError, "min_mask_pixels"),
        ("allow_upscale", "yes", TypeError, "allow_upscale"),
        ("ratio_decimals", -1, ValueError, "ratio_decimals"),
        ("max_attempts", 0, ValueError, "max_attempts"),
        ("use_poisson", 1, TypeError, "use_poisson"),
        ("rtol", 0, ValueError, "rtol"),
        ("max_iter", -1, ValueError, "max_iter"),
        ("backend", "cuda", ValueError, "backend"),
    ],
)
def test_bad_field_is_a_clear_error_at_construction(field, value, error, match):
    with pytest.raises(error, match=match):
        CAIConfig(**{field: value})


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="unknown engine option.*'thresold'"):
        CAIConfig().replace(thresold=0.1)


def test_is_frozen():
    with pytest.raises(AttributeError):
        CAIConfig().mode = "mixed"  # type: ignore[misc]


def test_replace_checks_the_new_value():
    assert CAIConfig().replace(mode="mixed").mode == "mixed"
    with pytest.raises(ValueError, match="mode"):
        CAIConfig().replace(mode="weird")


def test_to_dict_is_json_and_round_trips():
    config = CAIConfig(mode="mixed", quotas="1:2:3", threshold=0.05, ratio_decimals=None, use_stm=False)
    text = json.dumps(config.to_dict())
    assert CAIConfig.from_dict(json.loads(text)) == config


def test_from_dict_fills_defaults_and_names_unknown_keys():
    assert CAIConfig.from_dict({"mode": "mixed"}) == CAIConfig(mode="mixed")
    with pytest.raises(TypeError, match="unknown engine option"):
        CAIConfig.from_dict({"mode": "mixed", "colour": "red"})


def test_callable_foreground_is_kept_but_does_not_serialise():
    def everywhere(images: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(images[:, :1], dtype=torch.bool)

    config = CAIConfig(foreground=everywhere)
    assert config.foreground is everywhere
    with pytest.raises(TypeError, match="callable foreground"):
        config.to_dict()


def test_equal_configs_hash_equal_and_key_a_dict():
    cache = {CAIConfig(quotas="4:3:3", margin=8.0): "engine"}
    assert cache[CAIConfig()] == "engine"
    assert hash(CAIConfig(mode="mixed")) != hash(CAIConfig())


def test_pickles():
    config = CAIConfig(mode="mixed")
    assert pickle.loads(pickle.dumps(config)) == config


def test_build_combines_config_dict_and_overrides():
    assert CAIConfig.build(None) == CAIConfig()
    assert CAIConfig.build({"mode": "mixed"}, margin=3) == CAIConfig(mode="mixed", margin=3)
    assert CAIConfig.build(CAIConfig(mode="mixed"), mode="normal").mode == "normal"
    with pytest.raises(TypeError, match="config must be"):
        CAIConfig.build("mixed")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the engine takes it


def test_engine_from_config_equals_engine_from_keywords(demo_bank, demo_targets):
    keys = ["a", "b", "c", "d"]
    by_config = CAI(demo_bank, CAIConfig(mode="mixed", margin=6), seed=3)(demo_targets, keys=keys)
    by_keywords = CAI(demo_bank, mode="mixed", margin=6, seed=3)(demo_targets, keys=keys)
    assert torch.equal(by_config.images, by_keywords.images) and torch.equal(by_config.masks, by_keywords.masks)
    assert by_config.info == by_keywords.info


def test_engine_exposes_its_config(demo_bank):
    cai = CAI(demo_bank, mode="mixed", quotas="1:1:1")
    assert cai.config == CAIConfig(mode="mixed", quotas=(1, 1, 1))
    assert cai.mode == "mixed" and cai.quotas == (1.0, 1.0, 1.0)  # read as attributes, as before


def test_keywords_override_the_config(demo_bank):
    assert CAI(demo_bank, CAIConfig(mode="mixed"), mode="normal").config.mode == "normal"


def test_engine_options_cannot_be_changed_after_construction(demo_bank):
    cai = CAI(demo_bank)
    with pytest.raises(AttributeError, match="frozen"):
        cai.mode = "mixed"


@pytest.mark.parametrize(
    ("option", "match"),
    [({"threshold": 2.0}, "threshold"), ({"foreground": "magic"}, "foreground"), ({"quotas": "1:2"}, "quotas")],
)
def test_engine_fails_at_construction_on_a_bad_option(demo_bank, option, match):
    with pytest.raises(ValueError, match=match):
        CAI(demo_bank, **option)


def test_engine_accepts_a_config_dict(demo_bank):
    assert CAI(demo_bank, {"mode": "mixed"}).config.mode == "mixed"


def test_mode_given_positionally_is_a_clear_error(demo_bank):
    with pytest.raises(TypeError, match="mode='mixed'"):
        CAI(demo_bank, "mixed")  # type: ignore[arg-type]


def test_every_option_has_one_help_line():
    from cai_aug.engine.config import OPTION_HELP

    assert set(OPTION_HELP) == set(CAIConfig.fields())


# ---------------------------------------------------------------------- bounds, declared once in LIMITS
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_integer_option_is_bounded_on_both_sides(name):
    low, high = LIMITS[name]
    above = high + (2 if name == "median" else 1)  # median is an odd size
    assert getattr(CAIConfig(**{name: high}), name) == high
    assert getattr(CAIConfig(**{name: low}), name) == low
    with pytest.raises(ValueError, match=rf"{name} must lie in \[{low}, {high}\], got {above}"):
        CAIConfig(**{name: above})


@pytest.mark.parametrize(("option", "value"), [("margin", 100_000), ("anomalies", 100_000)])
def test_the_engine_refuses_an_absurd_value_at_construction(demo_bank, option, value):
    with pytest.raises(ValueError, match=rf"{option} must lie in"):
        CAI(demo_bank, **{option: value})


@pytest.mark.parametrize(
    ("flag", "value"), [("--margin", "100000"), ("--anomalies", "100000"), ("--max-iter", "100000000")]
)
def test_the_command_line_refuses_an_absurd_value_in_one_line_before_any_work(tmp_path, demo_bank_dir, flag, value):
    normal = tmp_path / "normal"
    normal.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(normal / "a.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    argv = ["synth", "--normal", normal, "--bank", demo_bank_dir, "--out", tmp_path / "out", flag, value]
    result = subprocess.run(
        [sys.executable, "-m", "cai_aug", *map(str, argv)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cai-aug synth: error: ") and "must lie in" in line
    assert not (tmp_path / "out").exists()
