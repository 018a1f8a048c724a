"""The anomalib adapters against anomalib itself (torchvision imports through conftest's recipe).

``CAIAnomalyGenerator`` is compared with the real ``PerlinAnomalyGenerator`` and run inside the real
``Draem.training_step``; ``anomalib.data.Folder`` reads ``cai-aug synth`` output; ``CAIDraem`` trains
two epochs with anomalib's ``Engine``. DRAEM's sub-networks are swapped for 8-channel ones of the same
classes (``ReconstructiveSubNetwork(base_width=8)`` ...) so that building one and a step take
milliseconds on a CPU: the training step, the loss and the hooks are anomalib's own. The real
``PerlinAnomalyGenerator`` runs in its Perlin-noise mode: its texture mode reads files with
``torchvision.io``, whose compiled image ops a CUDA torchvision wheel does not load on a CPU torch.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import requires_cuda
from test_frontend_augment import write_tiny_bank

pytest.importorskip("anomalib", reason="the anomalib tests need the anomalib extra: pip install -e '.[anomalib]'")

import anomalib.models.image.draem.lightning_model as draem_module  # noqa: E402
from anomalib.data import Folder, ImageBatch  # noqa: E402
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator  # noqa: E402
from anomalib.models import Draem  # noqa: E402
from anomalib.models.image.draem.torch_model import DiscriminativeSubNetwork, ReconstructiveSubNetwork  # noqa: E402

from cai_aug.anomalib import CAIAnomalyGenerator, CAIDraem  # noqa: E402
from cai_aug.engine.bank import AnomalyBank  # noqa: E402
from cai_aug.engine.cai import CAI  # noqa: E402
from cai_aug.frontends import anomalib as frontend  # noqa: E402
from cai_aug.frontends.offline import run_local  # noqa: E402
from cai_aug.io.demo_data import demo_images, write_demo_normals  # noqa: E402
from cai_aug.io.images import read_mask  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory: pytest.TempPathFactory, bank: Path) -> Path:
    """Normal images and their ``cai-aug synth`` output, as an anomalib ``Folder`` dataset reads them."""
    root = tmp_path_factory.mktemp("folder")
    write_demo_normals(root / "normal", n=4, size=SIZE)
    run_local(root / "normal", CAI(AnomalyBank.from_folder(bank), seed=0), root / "synth", per_image=1, progress=False)
    return root


class _SmallDraemModel(draem_module.DraemModel):
    """DRAEM's torch model with 8-channel sub-networks of the same classes: CPU steps take milliseconds."""

    def __init__(self, sspcab: bool = False) -> None:
        torch.nn.Module.__init__(self)
        self.reconstructive_subnetwork = ReconstructiveSubNetwork(sspcab=sspcab, base_width=8)
        self.discriminative_subnetwork = DiscriminativeSubNetwork(in_channels=6, out_channels=2, base_width=8)


@pytest.fixture(autouse=True)
def small_draem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(draem_module, "DraemModel", _SmallDraemModel)


def _folder(root: Path) -> Folder:
    return Folder(
        name="tiny",
        root=root,
        normal_dir="normal",
        abnormal_dir="synth/images",
        mask_dir="synth/masks",
        train_batch_size=2,
        eval_batch_size=2,
        num_workers=0,
    )


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("batched", [False, True])
def test_shapes_dtype_device_and_types_match_perlin(bank: Path, batched: bool, device: str) -> None:
    images = (demo_images(3, SIZE) if batched else demo_images(1, SIZE)[0]).to(device)
    torch.manual_seed(0)
    theirs = PerlinAnomalyGenerator(probability=1.0)(images)
    ours = CAIAnomalyGenerator(bank, probability=1.0)(images)
    assert type(ours) is type(theirs) is tuple and len(ours) == len(theirs) == 2
    for mine, real in zip(ours, theirs):
        assert type(mine) is type(real) is torch.Tensor
        assert mine.shape == real.shape and mine.device == real.device
    assert ours[0].dtype == theirs[0].dtype == images.dtype
    assert ours[1].dtype.is_floating_point and theirs[1].dtype.is_floating_point
    assert set(ours[1].unique().tolist()) <= {0.0, 1.0}


def test_probability_semantics_match_perlin(bank: Path) -> None:
    """Both: probability 0 leaves every image unchanged with an empty mask; 1 changes every image; 0.5 some."""
    images = demo_images(6, SIZE)
    torch.manual_seed(0)
    for probability, low, high in ((0.0, 0, 0), (1.0, 5, 6), (0.5, 1, 5)):
        for generator in (
            PerlinAnomalyGenerator(probability=probability),
            CAIAnomalyGenerator(bank, probability=probability),
        ):
            augmented, mask = generator(images)
            has_mask = mask.flatten(1).amax(1) > 0
            assert torch.equal((augmented - images).abs().flatten(1).amax(1) > 0, has_mask), type(generator)
            assert low <= int(has_mask.sum()) <= high, (type(generator).__name__, probability)
            assert generator.probability == probability


def test_accepts_every_perlin_keyword(bank: Path) -> None:
    import inspect

    theirs = set(inspect.signature(PerlinAnomalyGenerator.__init__).parameters) - {"self"}
    ours = set(inspect.signature(CAIAnomalyGenerator.__init__).parameters)
    assert theirs <= ours


def test_keywords_without_cai_meaning_warn_once(bank: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frontend, "_WARNED", set())
    with pytest.warns(UserWarning) as caught:
        CAIAnomalyGenerator(anomaly_source_path=bank, blend_factor=(0.2, 1.0), rotation_range=(-90, 90), dual_mask=True)
    assert sorted(str(w.message).split("ignores ")[1].split("=")[0] for w in caught) == [
        "blend_factor",
        "dual_mask",
        "rotation_range",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CAIAnomalyGenerator(anomaly_source_path=bank, probability=1.0, blend_factor=0.5, dual_mask=True)


def test_real_draem_training_step_with_our_generator(bank: Path) -> None:
    model = Draem(dtd_dir=bank, evaluator=False, visualizer=False)
    model.augmenter = CAIAnomalyGenerator(bank, probability=1.0)
    batch = ImageBatch(image=demo_images(2, SIZE), gt_label=torch.zeros(2, dtype=torch.bool), image_path=["a", "b"])
    model.log = lambda *args, **kwargs: None  # no trainer attached to log to
    loss = model.training_step(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.reconstructive_subnetwork.encoder.block1[0].weight.grad is not None


def test_slightly_out_of_range_input_is_clamped(bank: Path) -> None:
    images = demo_images(2, SIZE) * 1.004  # an antialiased bicubic resize overshoots this much
    augmented, _ = CAIAnomalyGenerator(bank, probability=0.0)(images)
    assert float(augmented.max()) <= 1.0 and torch.allclose(augmented, images.clamp(0, 1))


def test_normalised_input_is_a_clear_error(bank: Path) -> None:
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with pytest.raises(ValueError, match="normalised"):
        CAIAnomalyGenerator(bank, probability=1.0)((demo_images(2, SIZE) - mean) / std)


def test_seed_none_follows_the_global_torch_rng(bank: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    generator = CAIAnomalyGenerator(bank, probability=1.0, seed=None)
    torch.manual_seed(5)
    first = generator.make_keys(3)
    torch.manual_seed(5)
    assert torch.equal(generator.make_keys(3), first)
    assert not torch.equal(generator.make_keys(3), first)


def test_folder_reads_synth_output(folder_data: Path) -> None:
    datamodule = _folder(folder_data)
    datamodule.setup()
    samples = [item for item in datamodule.test_data] + [item for item in datamodule.val_data]
    abnormal = [item for item in samples if int(item.gt_label) == 1]
    assert len(abnormal) == 4 and all(item.gt_mask is not None for item in abnormal)
    for item in abnormal:
        stem = Path(item.image_path).stem
        written = read_mask(folder_data / "synth" / "masks" / f"{stem}_mask.png")
        assert torch.equal(item.gt_mask.bool().reshape(written.shape), torch.as_tensor(written).bool())
        assert item.image.shape == (3, SIZE, SIZE)


def test_caidraem_two_epoch_engine_fit(folder_data: Path, bank: Path, tmp_path: Path) -> None:
    from anomalib.engine import Engine

    model = CAIDraem(
        bank=bank,
        probability=1.0,
        seed=0,
        pre_processor=CAIDraem.configure_pre_processor((SIZE, SIZE)),
        evaluator=False,
        visualizer=False,
        post_processor=False,
    )
    engine = Engine(
        max_epochs=2,
        default_root_dir=tmp_path,
        logger=False,
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=_folder(folder_data))
    assert isinstance(model.augmenter, CAIAnomalyGenerator)
    assert model.augmenter.epoch == 1 and model.augmenter.calls == 2  # set_epoch(1), then 4 images / 2 per batch
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    assert checkpoint["cai_aug"] == {"epoch": 1, "calls": 2, "seed": 0, "follow_host_seed": False}


def test_caidraem_downloads_nothing(bank: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("CAIDraem tried to download DTD")

    monkeypatch.setattr(draem_module, "download_and_extract", refuse)
    model = CAIDraem(bank=bank, evaluator=False, visualizer=False)
    assert isinstance(model, Draem) and isinstance(model.augmenter, CAIAnomalyGenerator)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CAIDraem(bank=bank / "missing")


def test_caidraem_seed_comes_from_lightning(bank: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch import seed_everything

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test: seed_everything writes the environment
    model = CAIDraem(bank=bank, evaluator=False, visualizer=False)
    seed_everything(123)
    assert torch.equal(model.augmenter.make_keys(2), CAIAnomalyGenerator(bank, seed=123).make_keys(2))
    seed_everything(124)
    assert not torch.equal(model.augmenter.make_keys(2), CAIAnomalyGenerator(bank, seed=123).make_keys(2))


def test_caidraem_resumed_mid_epoch_continues_the_keys(bank: Path) -> None:
    first = CAIDraem(bank=bank, seed=7, evaluator=False, visualizer=False)
    first.on_train_epoch_start()
    for _ in range(3):
        first.augmenter.make_keys(2)
        first.augmenter.calls += 1  # what each forward does
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    resumed = CAIDraem(bank=bank, seed=7, evaluator=False, visualizer=False)
    resumed.on_load_checkpoint(checkpoint)
    resumed.on_train_epoch_start()  # the resumed epoch starts again: the counters must survive it
    assert resumed.augmenter.calls == 3
    assert torch.equal(resumed.augmenter.make_keys(2), first.augmenter.make_keys(2))


def test_caidraem_from_a_class_path_configuration(bank: Path) -> None:
    """``model: {class_path: cai_aug.anomalib.CAIDraem, init_args: ...}`` resolves and builds, as jsonargparse does."""
    import importlib

    import yaml

    config = yaml.safe_load(
        f"model:\n  class_path: cai_aug.anomalib.CAIDraem\n  init_args:\n    bank: {bank}\n    probability: 0.7\n"
    )["model"]
    module, name = config["class_path"].rsplit(".", 1)
    model = getattr(importlib.import_module(module), name)(**config["init_args"], evaluator=False, visualizer=False)
    assert type(model).__module__ == "cai_aug.anomalib" and type(model).__qualname__ == "CAIDraem"
    assert model.augmenter.probability == 0.7


def test_generator_import_pulls_in_neither_anomalib_nor_torchvision() -> None:
    code = "import sys, cai_aug.anomalib; assert not {'anomalib', 'torchvision'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_readme_anomalib_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached_demo_bank: Path) -> None:
    """The README's anomalib example, as written (DRAEM shrunk to 8 channels and 64 px by the fixtures)."""
    from anomalib.pre_processing import PreProcessor
    from conftest import run_readme
    from torchvision.transforms.v2 import Resize

    monkeypatch.setattr(
        Draem,
        "configure_pre_processor",
        classmethod(lambda cls, image_size=None: PreProcessor(transform=Resize((SIZE, SIZE), antialias=True))),
    )
    namespace = run_readme("anomalib", tmp_path, monkeypatch)
    model = namespace["model"]
    assert type(model).__name__ == "CAIDraem" and model.augmenter.epoch == 1 and model.augmenter.calls == 2


def test_readme_anomalib_yaml_builds_through_anomalib_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``anomalib train --config`` resolves the README's YAML: CAIDraem by class path, with its arguments."""
    pytest.importorskip("jsonargparse", reason="anomalib's command line needs jsonargparse")
    from anomalib.cli import AnomalibCLI
    from conftest import readme_blocks

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the configuration's seed_everything must not leak out of the test
    monkeypatch.delenv("PL_GLOBAL_SEED")
    (tmp_path / "cai_draem.yaml").write_text(readme_blocks("anomalib", "yaml")[0], encoding="utf-8")
    write_tiny_bank(tmp_path / "bank")
    monkeypatch.chdir(tmp_path)
    cli = AnomalibCLI(["train", "--config", "cai_draem.yaml"], run=False)
    assert type(cli.model).__module__ == "cai_aug.anomalib" and type(cli.model).__name__ == "CAIDraem"
    assert cli.model.augmenter.probability == 0.5 and cli.model.augmenter.follow_host_seed


def test_positional_order_is_perlins(bank: Path) -> None:
    """``(anomaly_source_path, probability, blend_factor)`` as ``PerlinAnomalyGenerator`` takes them."""
    perlin = PerlinAnomalyGenerator(str(bank), 0.5, (0.1, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = CAIAnomalyGenerator(bank, 0.5, (0.1, 1.0))
    assert ours.probability == perlin.probability == 0.5
    assert ours.seed == 0  # the third positional is the blend factor, never the seed
