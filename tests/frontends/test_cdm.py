"""CDM (optional extra): tiny random SD-shaped models built from configs, no network, 32x32 images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="CDM tests need the cdm extra (diffusers)")
pytest.importorskip("transformers", reason="CDM tests need the cdm extra (transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from PIL import Image  # noqa: E402

import cai_aug.cdm as cdm  # noqa: E402
from cai_aug.cdm.train import step_generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
# Small everything: the spatial encoder too, so that each step costs milliseconds.
TRAIN = dict(
    batch_size=2, mask_size=32, tokens_per_class=2, spatial_tokens=2, encoder={"width": 8, "grid": 4, "hidden": 32}
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are thousands of small ops: on a shared 2-core machine a second thread mostly waits
    (measured: 0.08 s vs 1.8-5 s per training step), so these tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cdm.make_tiny_pretrained(tmp_path_factory.mktemp("cdm") / "tiny-sd", image_size=SIZE)


@pytest.fixture(scope="module")
def components(pretrained: Path) -> cdm.CDMComponents:
    return cdm.load_components(pretrained, device="cpu")


def _write_pseudo(folder: Path, n: int = 4, manifest: bool = True) -> Path:
    """A folder in the layout of `cai-aug synth`: images/, masks/, manifest.jsonl."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    gen = np.random.default_rng(0)
    records = []
    for i in range(n):
        image = (gen.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[6 + i : 18 + i, 4 + 2 * i : 14 + 2 * i] = 255
        Image.fromarray(image).save(folder / "images" / f"s{i:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"s{i:03d}_mask.png")
        records.append({"image": f"images/s{i:03d}.png", "source_class": ("crack", "stain")[i % 2]})
    if manifest:
        (folder / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


@pytest.fixture(scope="module")
def pseudo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_pseudo(tmp_path_factory.mktemp("pseudo") / "synth")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, pseudo, components) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "cdm"
    config = cdm.CDMTrainConfig(steps=2, save_every=1, **TRAIN)
    cdm.train_cdm(pseudo, components, out, config=config, device="cpu", progress=False)
    return out


def _batch(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, SIZE, SIZE, generator=gen)
    masks = torch.zeros(b, 1, SIZE, SIZE)
    for i in range(b):
        masks[i, :, 8 + i : 20 + i, 6 : 18 - i] = 1
    return images, masks


def test_import_cai_aug_and_cli_do_not_import_diffusers() -> None:
    code = (
        "import sys, cai_aug, cai_aug.cli; cai_aug.cli.build_parser(); "
        "assert 'diffusers' not in sys.modules and 'cai_aug.cdm' not in sys.modules, 'imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_missing_extra_names_the_install_command() -> None:
    code = "import sys; sys.modules['diffusers'] = None; import cai_aug.cdm"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and 'pip install "cai_aug[cdm]"' in done.stderr


def test_missing_or_wrong_pretrained_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*never downloads"):
        cdm.load_components(tmp_path / "nowhere")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a Stable-Diffusion-style diffusers folder.*vae/"):
        cdm.load_components(tmp_path)


def test_scan_pseudo_folder_reads_classes_or_falls_back(tmp_path: Path) -> None:
    samples = cdm.scan_pseudo_folder(_write_pseudo(tmp_path / "a"))
    assert [s.anomaly_class for s in samples] == ["crack", "stain", "crack", "stain"]
    samples = cdm.scan_pseudo_folder(_write_pseudo(tmp_path / "b", manifest=False))
    assert {s.anomaly_class for s in samples} == {"anomaly"}
    with pytest.raises(ValueError, match="no image/mask pairs"):
        cdm.scan_pseudo_folder(tmp_path / "b" / "masks")


def test_masked_loss_decreases_on_a_fixed_batch(components, pseudo) -> None:
    config = cdm.CDMTrainConfig(lr=5e-2, encoder_lr=1e-2, **TRAIN)
    dataset = cdm.PseudoAnomalyDataset(pseudo, SIZE)
    embeddings = cdm.new_embeddings(components, dataset.classes, config)
    trainer = cdm.CDMTrainer(components, embeddings, config, device="cpu")
    items = [dataset[i] for i in range(2)]
    images, masks = torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])
    classes = torch.tensor([i[2] for i in items])
    frozen = {k: v.clone() for k, v in components.unet.state_dict().items() if "conv_in" in k}
    with torch.no_grad():
        before = float(trainer.loss(images, masks, classes, step_generator(0, 0)))
    # Same batch, timesteps and noise every step: the loss can only fall through the embeddings.
    losses = [trainer.train_step(images, masks, classes, step_generator(0, 0)) for _ in range(5)]
    with torch.no_grad():
        after = float(trainer.loss(images, masks, classes, step_generator(0, 0)))
    assert losses[0] == pytest.approx(before, rel=1e-5)
    # A random tiny UNet barely listens to its condition, so the reachable drop is a few per cent.
    assert after < 0.985 * before and after < min(losses[:-1]), (before, losses, after)
    # Only embeddings and encoder train: the diffusion model is untouched and has no gradients.
    assert all(torch.equal(v, components.unet.state_dict()[k]) for k, v in frozen.items())
    assert all(p.grad is None for p in components.unet.parameters())


def test_checkpoint_round_trip_and_resume_equals_uninterrupted(tmp_path, components, pseudo, checkpoint) -> None:
    files = {p.name for p in checkpoint.iterdir()}
    assert {"cdm_embeddings.safetensors", "cdm_config.json", "training_state.pt", "loss.csv"} <= files
    assert (checkpoint / "cdm_embeddings.safetensors").stat().st_size < 1_000_000
    loaded = cdm.load_checkpoint(checkpoint)
    assert loaded.classes == ["crack", "stain"] and loaded.num_tokens == 4
    with pytest.raises(ValueError, match="already holds a CDM checkpoint"):
        cdm.train_cdm(
            pseudo, components, checkpoint, config=cdm.CDMTrainConfig(steps=3, **TRAIN), device="cpu", progress=False
        )
    # 2 steps, then resume to 3 == 3 steps straight.
    resumed = tmp_path / "resumed"
    for steps, resume in ((2, False), (3, True)):
        cdm.train_cdm(
            pseudo,
            components,
            resumed,
            config=cdm.CDMTrainConfig(steps=steps, save_every=1, **TRAIN),
            resume=resume,
            device="cpu",
            progress=False,
        )
    straight = tmp_path / "straight"
    cdm.train_cdm(
        pseudo,
        components,
        straight,
        config=cdm.CDMTrainConfig(steps=3, save_every=1, **TRAIN),
        device="cpu",
        progress=False,
    )
    a, b = cdm.load_checkpoint(resumed).state_dict(), cdm.load_checkpoint(straight).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    rows = (resumed / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,seconds" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert json.loads((resumed / "cdm_config.json").read_text())["step"] == 3


def test_sampler_contract_outside_exact_and_deterministic(components, checkpoint) -> None:
    images, masks = _batch()
    sampler = cdm.CDMSampler(components, checkpoint, steps=3, seed=7, device="cpu")
    out, out_masks, labels = sampler(images, masks, keys=["a", "b", "c"])
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out_masks.shape == (3, 1, SIZE, SIZE) and torch.equal(out_masks, masks)
    assert torch.equal(labels, torch.ones(3))
    outside = (masks == 0).expand_as(images)
    assert torch.equal(out[outside], images[outside])
    assert (out - images).abs()[~outside].mean() > 1e-3  # something was generated inside
    again, _, _ = cdm.CDMSampler(components, checkpoint, steps=3, seed=7, device="cpu")(
        images, masks, keys=["a", "b", "c"]
    )
    assert torch.equal(out, again)
    other, _, _ = cdm.CDMSampler(components, checkpoint, steps=3, seed=8, device="cpu")(
        images, masks, keys=["a", "b", "c"]
    )
    assert not torch.equal(out, other)
    alone, _, _ = sampler(images[1:2], masks[1:2], keys=["b"])  # batch companions do not matter
    assert torch.allclose(alone, out[1:2], atol=1e-4)


def test_sampler_classes_uint8_and_mask_sources(components, checkpoint) -> None:
    images, masks = _batch(2)
    sampler = cdm.CDMSampler(components, checkpoint, classes=["stain"], steps=2, seed=1, device="cpu")
    result = sampler.generate((images * 255).to(torch.uint8), masks)
    assert result.classes == ["stain", "stain"] and result.images.dtype == torch.uint8
    assert sampler.generate(images, masks, classes=["crack", "stain"]).classes == ["crack", "stain"]
    with pytest.raises(ValueError, match="unknown anomaly class"):
        cdm.CDMSampler(components, checkpoint, classes=["hole"], device="cpu")
    with pytest.raises(ValueError, match="no masks"):
        sampler(images)

    class FakeCAI:  # stands in for cai_aug.CAI: only its location masks are used
        def __call__(self, imgs, keys=None):
            return type("R", (), {"masks": masks})()

    with_cai = cdm.CDMSampler(components, checkpoint, steps=2, seed=1, cai=FakeCAI(), device="cpu")
    out, out_masks, _ = with_cai(images)
    assert torch.equal(out_masks, masks)
    assert torch.equal(out[(masks == 0).expand_as(out)], images[(masks == 0).expand_as(images)])


def test_adaptive_attention_and_guidance(components, checkpoint) -> None:
    images, masks = _batch(2)
    before = dict(components.unet.attn_processors)
    sampler = cdm.CDMSampler(
        components, checkpoint, steps=3, seed=3, adaptive_attention=True, guidance_scale=2.0, device="cpu"
    )
    out, _, _ = sampler(images, masks, keys=[0, 1])
    outside = (masks == 0).expand_as(images)
    assert torch.isfinite(out).all() and torch.equal(out[outside], images[outside])
    plain, _, _ = cdm.CDMSampler(components, checkpoint, steps=3, seed=3, guidance_scale=2.0, device="cpu")(
        images, masks, keys=[0, 1]
    )
    assert not torch.equal(out, plain)  # re-weighting changed the result
    assert {k: type(v) for k, v in components.unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}


def test_adaptive_weight_map_matches_paper_shape() -> None:
    from cai_aug.cdm.attention import adaptive_weight_map

    masks = torch.zeros(1, 1, 4, 4)
    masks[..., 1:3, 1:3] = 1
    normal = torch.zeros(1, 3, 4, 4)
    x0 = normal.clone()
    x0[..., 1, 1], x0[..., 1, 2], x0[..., 2, 1], x0[..., 2, 2] = 1.0, 0.5, 0.5, 0.5
    w = adaptive_weight_map(masks, normal, x0, max_weight=None)
    assert torch.equal(w[masks == 0], torch.ones(12))  # outside: unchanged attention
    assert w[0, 0, 1, 1] < w[0, 0, 1, 2]  # the most anomalous pixel gets the least attention
    assert torch.isclose(w[masks > 0].sum(), torch.tensor(4.0))  # ||m||_1 * softmax
    empty = adaptive_weight_map(torch.zeros(1, 1, 4, 4), normal, x0)
    assert torch.equal(empty, torch.ones(1, 1, 4, 4))


def test_cli_train_then_sample(tmp_path, pretrained, pseudo) -> None:
    from cai_aug.cli import main

    out = tmp_path / "ckpt"
    args = f"--pseudo {pseudo} --pretrained {pretrained} --out {out} --steps 1 --batch-size 2 --tokens 2"
    code = main(["cdm-train", *args.split(), "--spatial-tokens", "2", "--device", "cpu"])
    assert code == 0 and (out / "cdm_embeddings.safetensors").is_file()
    normal, masks = tmp_path / "normal", tmp_path / "masks"
    normal.mkdir()
    masks.mkdir()
    for i in range(2):
        Image.fromarray(np.full((SIZE, SIZE, 3), 60 * i, np.uint8)).save(normal / f"n{i}.png")
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[10:20, 10:20] = 255
        Image.fromarray(mask).save(masks / f"n{i}_mask.png")
    samples = tmp_path / "samples"
    args = f"--normal {normal} --pretrained {pretrained} --checkpoint {out} --out {samples} --masks {masks}"
    code = main(["cdm-sample", *args.split(), "--steps", "2", "--device", "cpu"])
    assert code == 0
    records = [json.loads(line) for line in (samples / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["source_class"] in ("crack", "stain") for r in records)
    result = np.asarray(Image.open(samples / records[1]["image"]))
    assert (result[np.asarray(Image.open(masks / "n1_mask.png")) == 0] == 60).all()
    # A missing pretrained folder is a clean CLI error, not a traceback.
    args = f"--pseudo {pseudo} --pretrained {tmp_path / 'none'} --out {tmp_path / 'x'} --steps 1"
    assert main(["cdm-train", *args.split()]) == 2


@pytest.mark.filterwarnings("ignore")
def test_default_masks_come_from_cai_location_sampling(tmp_path, components, checkpoint) -> None:
    import cai_aug

    for cls in ("crack", "stain"):
        (tmp_path / "bank" / cls).mkdir(parents=True)
        image = np.full((24, 24, 3), 50, np.uint8)
        mask = np.zeros((24, 24), np.uint8)
        mask[6:18, 8:14] = 255
        Image.fromarray(image).save(tmp_path / "bank" / cls / f"{cls}0.png")
        Image.fromarray(mask).save(tmp_path / "bank" / cls / f"{cls}0_mask.png")
    cai_kwargs = {"foreground": "none", "margin": 2}
    sampler = cdm.CDMSampler.from_checkpoint(
        checkpoint, components.source, bank=tmp_path / "bank", cai_kwargs=cai_kwargs, steps=2, seed=5, device="cpu"
    )
    images, _ = _batch(2)
    out, masks, labels = sampler(images, keys=["x", "y"])
    bank = cai_aug.AnomalyBank.from_folder(tmp_path / "bank")
    expected = cai_aug.CAI(bank, seed=5, device="cpu", **cai_kwargs)(images, keys=sampler.sample_keys(2, ["x", "y"]))
    assert torch.equal(masks, (expected.masks > 0.5).float()) and masks.sum() > 0
    assert torch.equal(labels, (masks.flatten(1).amax(1) > 0).float())
    assert torch.equal(out[(masks == 0).expand_as(out)], images[(masks == 0).expand_as(images)])


def test_timing_script_runs_on_the_tiny_model(tmp_path, capsys) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cdm_timing", ROOT / "benchmarks" / "speed" / "cdm_timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "t.json"
    args = f"--size tiny --device cpu --train-batch 2 --train-steps 1 --sample-batch 1 --ddim-steps 2 --json {out}"
    assert module.main(args.split()) == 0
    row = json.loads(out.read_text())
    assert row["train_s_per_step"] > 0 and row["sample_s_per_image"] > 0 and row["sample_aar_s_per_image"] > 0
    assert "| size |" in capsys.readouterr().out
