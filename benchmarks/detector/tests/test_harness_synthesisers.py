"""Synthesisers of the UNet benchmark: shapes, binary masks, keyed reproducibility, CAI wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.detector.cli import build_synthesiser, parse_args, parse_cai_name, valid_synth
from benchmarks.detector.data import list_images
from benchmarks.detector.synthesisers import DRAEM, NSA, CutPaste, perlin_noise
from benchmarks.detector.toydata import make_bank, texture
from cai_aug.engine import rng


@pytest.fixture(scope="module")
def normals():
    g = np.random.default_rng(0)
    imgs = np.stack([texture(g, 64) for _ in range(6)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_bank(tmp_path_factory.mktemp("bank"))


def _synths(bank):
    return [CutPaste(), NSA(mixed=False), NSA(mixed=True), DRAEM(list_images(bank))]


def test_baselines_shapes_masks_and_change(normals, bank):
    keys = rng.sample_keys(0, [f"img{i}" for i in range(len(normals))], anomaly_index=0)
    for synth in _synths(bank):
        synth.prepare(normals, [f"img{i}" for i in range(len(normals))])
        imgs, masks = synth.generate(normals, keys, ids=list(range(len(normals))))
        assert imgs.shape == normals.shape and masks.shape == (len(normals), 1, 64, 64), synth.name
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        assert 0 <= float(imgs.min()) and float(imgs.max()) <= 1
        labelled = masks.flatten(1).any(1)
        assert labelled.sum() >= len(normals) - 1, synth.name  # nearly every sample is an anomaly
        # outside the mask the image is unchanged for CutPaste and DRAEM
        if synth.name in ("cutpaste", "draem"):
            diff = (imgs - normals).abs().amax(1, keepdim=True)
            assert float((diff * (1 - masks)).max()) < 1 / 255 + 1e-6
        # unlabelled samples are returned unchanged
        for b in torch.nonzero(~labelled).flatten().tolist():
            assert torch.allclose(imgs[b], normals[b])


def test_baselines_keyed_reproducibility(normals, bank):
    ids = [f"img{i}" for i in range(len(normals))]
    keys = rng.sample_keys(3, ids, anomaly_index=1)
    for synth in _synths(bank):
        synth.prepare(normals, ids)
        a_img, a_mask = synth.generate(normals, keys, ids=list(range(6)))
        # the same sample in another batch (reversed, partial) gives the same result
        order = [4, 1, 0]
        b_img, b_mask = synth.generate(normals[order], keys[order], ids=order)
        assert torch.equal(a_img[order], b_img) and torch.equal(a_mask[order], b_mask), synth.name
        # another anomaly index gives another anomaly
        c_img, _ = synth.generate(normals, rng.sample_keys(3, ids, anomaly_index=2), ids=list(range(6)))
        assert not torch.equal(a_img, c_img)


def test_nsa_does_not_depend_on_mask_being_left_alone(normals):
    # OpenCV 5's seamlessClone writes into the mask it is given; NSA passes a copy, so two calls agree
    synth = NSA()
    synth.prepare(normals, ["a"] * len(normals))
    keys = rng.sample_keys(0, ["x"], 0)
    one = synth.generate(normals[:1], keys, ids=[0])
    two = synth.generate(normals[:1], keys, ids=[0])
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_perlin_noise_is_smooth_and_bounded():
    g = np.random.default_rng(0)
    n = perlin_noise((64, 64), (4, 4), g)
    assert n.shape == (64, 64) and np.abs(n).max() <= 1.5
    assert np.abs(np.diff(n, axis=0)).max() < 0.3  # continuous at 16-px cells


def test_parse_cai_names():
    assert parse_cai_name("cai-n") == {
        "mode": "normal",
        "preset": "default",
        "quotas": (4, 3, 3),
        "use_poisson": True,
        "use_stm": True,
        "use_ils": True,
        "anomalies": 1,
        "paste_weight": 0.0,
        "mask_rule": None,
    }
    spec = parse_cai_name("cai-m-no-stm-no-ils@6:2:2")
    assert spec["mode"] == "mixed" and spec["quotas"] == (6, 2, 2)
    assert not spec["use_stm"] and not spec["use_ils"] and spec["use_poisson"]
    assert parse_cai_name("cai-n-no-pe")["use_poisson"] is False
    assert parse_cai_name("cutpaste") is None and parse_cai_name("cai-x") is None


def test_parse_cai_names_with_per_sample_guidance_and_the_paper_preset():
    assert parse_cai_name("cai-b")["mode"] == "both"
    spec = parse_cai_name("cai-n-paper")
    assert spec["mode"] == "normal" and spec["preset"] == "paper"
    assert valid_synth("cai-b-x3") and valid_synth("cai-n-paper-x2") and not valid_synth("cai-q")


def test_the_mask_rule_is_named_by_a_suffix(bank):
    assert parse_cai_name("cai-b-x3-mask-maj")["mask_rule"] == "majority"
    assert parse_cai_name("cai-b-x3-p50-mask-hys@6:2:2")["mask_rule"] == "hysteresis"
    args = parse_args(["--data", "unused", "--bank", str(bank), "--synth", "cai-b-x3-mask-maj"])
    assert build_synthesiser("cai-b-x3-mask-maj", args, seed=0).cai.config.mask_rule == "majority"


def test_several_anomalies_per_image_is_the_engines_option(bank):
    args = parse_args(["--data", "unused", "--bank", str(bank), "--synth", "cai-b-x3"])
    synth = build_synthesiser("cai-b-x3", args, seed=0)
    assert synth.cai.config.anomalies == 3 and synth.cai.config.mode == "both"
    assert build_synthesiser("cai-n-x2-p50", args, seed=0).cai.config.paste_weight == 0.5


def test_cli_rejects_unknown_synth(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--data", str(tmp_path), "--synth", "nope"])


def test_cdm_slot_needs_module_and_weights(tmp_path, bank):
    args = parse_args(["--data", str(tmp_path), "--bank", str(bank), "--synth", "cdm"])
    with pytest.raises(SystemExit, match="cdm"):
        build_synthesiser("cdm", args, 0)


def _engine_available() -> bool:
    try:
        from cai_aug import CAI, AnomalyBank  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(not _engine_available(), reason="the cai_aug engine (AnomalyBank, CAI) is not importable")
def test_cai_synthesiser(normals, bank, tmp_path):
    args = parse_args(["--data", str(tmp_path), "--bank", str(bank), "--synth", "cai-n"])
    synth = build_synthesiser("cai-n", args, 0)
    ids = [f"img{i}" for i in range(len(normals))]
    keys = rng.sample_keys(0, ids, anomaly_index=0)
    imgs, masks = synth.generate(normals, keys)
    assert imgs.shape == normals.shape and masks.shape == (len(normals), 1, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.flatten(1).any(1).sum() >= 1
    again, again_m = synth.generate(normals[[2, 0]], keys[[2, 0]])
    assert torch.allclose(again, imgs[[2, 0]], atol=1e-5) and torch.equal(again_m, masks[[2, 0]])


@pytest.mark.skipif(not _engine_available(), reason="the cai_aug engine (AnomalyBank, CAI) is not importable")
def test_cai_ablation_and_quota_variants(normals, bank, tmp_path):
    args = parse_args(["--data", str(tmp_path), "--bank", str(bank), "--synth", "cai-n"])
    keys = rng.sample_keys(0, [f"img{i}" for i in range(len(normals))], anomaly_index=0)
    full, _ = build_synthesiser("cai-n", args, 0).generate(normals, keys)
    for name in ("cai-n-no-pe", "cai-n-no-stm", "cai-n-no-ils", "cai-n@0:0:10", "cai-m"):
        synth = build_synthesiser(name, args, 0)
        imgs, masks = synth.generate(normals, keys)
        assert imgs.shape == normals.shape and set(masks.unique().tolist()) <= {0.0, 1.0}, name
        if name in ("cai-n-no-pe", "cai-m"):
            assert not torch.equal(imgs, full), name  # the variant changes the pseudo anomalies
    # quotas reach the engine: 0:0:10 makes only small pseudo anomalies
    info = build_synthesiser("cai-n@0:0:10", args, 0).cai(normals, keys=keys).info
    assert {i["synthesis_type"] for i in info if i["label"]} == {"small"}


@pytest.mark.skipif(not _engine_available(), reason="the cai_aug engine (AnomalyBank, CAI) is not importable")
def test_cai_class_subset(normals, bank, tmp_path):
    args = parse_args(["--data", str(tmp_path), "--bank", str(bank), "--synth", "cai-n", "--classes", "stain"])
    synth = build_synthesiser("cai-n", args, 0)
    keys = rng.sample_keys(0, [f"img{i}" for i in range(len(normals))], anomaly_index=0)
    info = synth.cai(normals, keys=keys).info
    assert {i["source_class"] for i in info if i["label"]} == {"stain"}
