"""CAIAnomalyGenerator against the call contract of anomalib 2.x's DRAEM anomaly generator.

anomalib cannot be imported on the development machines (its torchvision is a CUDA build, see
NOTES.md), so the contract of ``anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator`` is
written down here (``check_contract``) and checked; where anomalib does import, the real generator is
run through the same checks so the copy cannot drift from the original.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_frontend_augment import write_tiny_bank
from torch import nn

from cai_aug.frontends.anomalib import CAIAnomalyGenerator
from cai_aug.io.demo_data import demo_images

SIZE = 64


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


def check_contract(generator: nn.Module, device: str = "cpu") -> None:
    """anomalib 2.x ``PerlinAnomalyGenerator`` contract, as used by ``Draem.training_step``.

    - an ``nn.Module`` (anomalib's is a torchvision ``v2.Transform``, itself an ``nn.Module``);
    - ``forward(img)``; ``img`` ``[C, H, W]`` -> ``(augmented [C, H, W], mask [1, H, W])``;
      ``[B, C, H, W]`` -> ``(augmented [B, C, H, W], mask [B, 1, H, W])``;
    - outputs on the input's device, augmented with the input's dtype, masks floating point in {0, 1};
    - a ``probability`` constructor argument (chance per image; unchanged image and zero mask otherwise).
    """
    assert isinstance(generator, nn.Module)
    assert list(inspect.signature(generator.forward).parameters) == ["img"]
    batch = demo_images(3, SIZE).to(device)
    augmented, mask = generator(batch)
    assert augmented.shape == batch.shape and augmented.dtype == batch.dtype
    assert mask.shape == (3, 1, SIZE, SIZE) and mask.dtype.is_floating_point
    assert augmented.device == batch.device and mask.device == batch.device
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    single, single_mask = generator(batch[0])
    assert single.shape == batch[0].shape and single_mask.shape == (1, SIZE, SIZE)


def test_contract(bank: Path) -> None:
    check_contract(CAIAnomalyGenerator(bank, probability=0.5))
    for name in ("anomaly_source_path", "probability"):
        assert name in inspect.signature(CAIAnomalyGenerator.__init__).parameters


def test_probability(bank: Path) -> None:
    images = demo_images(3, SIZE)
    augmented, mask = CAIAnomalyGenerator(anomaly_source_path=bank, probability=0.0)(images)
    assert torch.equal(augmented, images) and mask.sum() == 0
    augmented, mask = CAIAnomalyGenerator(bank, probability=1.0)(images)
    has = mask.flatten(1).amax(1) > 0
    assert has.sum() >= 2
    assert torch.equal((augmented - images).abs().flatten(1).amax(1) > 0, has)
    with pytest.raises(ValueError, match="anomaly bank"):
        CAIAnomalyGenerator()


@dataclass
class _Batch:
    image: torch.Tensor


class _TinyDraem(nn.Module):
    """Reconstructive + discriminative sub-networks reduced to one conv each (DRAEM's structure)."""

    def __init__(self) -> None:
        super().__init__()
        self.reconstructive = nn.Conv2d(3, 3, 3, padding=1)
        self.discriminative = nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reconstruction = self.reconstructive(image)
        return reconstruction, self.discriminative(torch.cat([image, reconstruction], dim=1))


def test_swaps_into_a_draem_training_step(bank: Path) -> None:
    """The three lines of anomalib's ``Draem.training_step`` that use the generator, with a tiny model."""
    augmenter = CAIAnomalyGenerator(bank, probability=0.5)
    model = _TinyDraem()
    owner = nn.Module()
    owner.augmenter = augmenter  # what `model.augmenter = CAIAnomalyGenerator(...)` does on a Draem
    owner.model = model
    batch = _Batch(image=demo_images(2, SIZE))
    input_image = batch.image
    augmented_image, anomaly_mask = owner.augmenter(input_image)
    reconstruction, prediction = owner.model(augmented_image)
    loss = nn.functional.mse_loss(reconstruction, input_image) + nn.functional.cross_entropy(
        prediction, anomaly_mask[:, 0].long()
    )
    loss.backward()
    assert model.reconstructive.weight.grad is not None
    assert sum(p.numel() for p in owner.augmenter.parameters()) == 0  # nothing to train or checkpoint


def _imported_modules(module: str, root: Path, seen: set[str]) -> set[str]:
    """Every module named in an import statement of ``module``, following ``cai_aug`` imports."""
    if module in seen:
        return set()
    seen.add(module)
    path = root.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in found:
            names.add(name)
            if name.startswith("cai_aug") and root.joinpath(*name.split(".")).with_suffix(".py").exists():
                names |= _imported_modules(name, root, seen)
    return names


def test_imports_neither_anomalib_nor_torchvision() -> None:
    root = Path(__file__).resolve().parents[2]
    names = _imported_modules("cai_aug.frontends.anomalib", root, set())
    assert "cai_aug.frontends.augment" in names and "cai_aug.engine.cai" in names
    assert not [name for name in names if name.split(".")[0] in ("anomalib", "torchvision")]


def test_contract_copy_matches_real_anomalib(bank: Path) -> None:
    perlin = pytest.importorskip(
        "anomalib.data.utils.generators.perlin",
        reason="anomalib does not import here (CUDA torchvision build); the contract copy is checked instead",
    )
    real = perlin.PerlinAnomalyGenerator(probability=0.5)
    check_contract(real)
    real_init = inspect.signature(perlin.PerlinAnomalyGenerator.__init__).parameters
    ours_init = inspect.signature(CAIAnomalyGenerator.__init__).parameters
    assert {"anomaly_source_path", "probability"} <= set(real_init) & set(ours_init)
    images = demo_images(2, SIZE)
    ours = CAIAnomalyGenerator(bank, probability=1.0)(images)
    theirs = real(images)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
