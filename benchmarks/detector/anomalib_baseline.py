"""``draem-anomalib``: DRAEM's pseudo anomalies from anomalib's own generator, as a faithful baseline.

``anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator`` (anomalib 2.x) with the bank's images
as its anomaly-source folder (never DTD: nothing is downloaded), every sample anomalous
(``probability=1``) and anomalib's defaults otherwise (``blend_factor=(0.2, 1.0)``, Perlin rotation
±90°, three of its ten source augmentations). anomalib collects every image under the folder, masks
included; the harness hands it only the bank's images (``*_mask.*`` dropped), as DRAEM's texture source
holds no masks. Each sample's draws come from torch's global generator, seeded from the sample's key
inside ``torch.random.fork_rng`` so the harness stays reproducible per (seed, image, anomaly index).

anomalib needs torchvision. PyPI's torchvision is a CUDA build whose compiled ops do not load with a CPU
torch, and its import then dies registering fake kernels for ``torchvision::nms`` / ``qnms``; defining
those two schemas first lets it import. The harness is a benchmark, not the
library, so it applies that recipe itself, only when torchvision's own ops are absent. The same CUDA
wheel's image extension does not load either, so ``torchvision.io.read_image`` (which anomalib reads the
source with) is then replaced, in anomalib's perlin module only, by a PIL reader with the same result
(``uint8 (3,H,W)`` RGB); everything else is anomalib's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.torchvision_cpu import torchvision_recipe

from .data import list_images
from .synthesisers import Synthesiser


class _PILImageIO:
    """Stand-in for ``torchvision.io`` where its image extension does not load: ``read_image(path, mode)``."""

    class ImageReadMode:
        RGB = "RGB"

    @staticmethod
    def read_image(path: str, mode: str = "RGB") -> torch.Tensor:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB")).copy()
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def perlin_generator_class():
    """anomalib's ``PerlinAnomalyGenerator`` (ImportError with the reason when anomalib cannot import)."""
    torchvision_recipe()
    try:
        from anomalib.data.utils.generators import perlin
    except Exception as exc:  # noqa: BLE001 - any failure means the baseline is unavailable
        raise ImportError(f"anomalib's PerlinAnomalyGenerator does not import: {exc}") from exc
    try:
        from torchvision.io.image import _assert_has_image_ops

        _assert_has_image_ops()
    except (ImportError, RuntimeError):
        perlin.io = _PILImageIO
    return perlin.PerlinAnomalyGenerator


class AnomalibPerlin(Synthesiser):
    name = "draem-anomalib"

    def __init__(self, sources: str | Path | Sequence[Path], blend_factor=(0.2, 1.0)) -> None:
        """``sources``: an anomaly-source folder, or its image paths."""
        cls = perlin_generator_class()
        sources = list_images(sources) if isinstance(sources, (str, Path)) else [Path(p) for p in sources]
        if not sources:
            raise ValueError("no anomaly-source images")
        # an empty folder first, so anomalib's own rglob collects nothing; then the images only
        self.gen = cls(anomaly_source_path=None, probability=1.0, blend_factor=blend_factor)
        self.gen.anomaly_source_paths = sources

    def generate(self, images, keys, ids=None):
        out_imgs, out_masks = [], []
        for b in range(images.shape[0]):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(keys[b]) & ((1 << 63) - 1))
                img, mask = self.gen(images[b].detach().cpu().float())
            mask = (mask > 0.5).float()
            out_imgs.append(img.clamp(0, 1) if mask.any() else images[b].detach().cpu().float())
            out_masks.append(mask.reshape(1, *img.shape[-2:]))
        return torch.stack(out_imgs).to(images.device), torch.stack(out_masks).to(images.device)
