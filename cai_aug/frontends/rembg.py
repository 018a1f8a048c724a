"""rembg matting as a foreground estimator (optional: ``pip install "cai_aug[rembg]"``).

rembg downloads model weights at first use, which never works offline: the model file must already be
on disk. rembg looks for ``$U2NET_HOME/<name>.onnx`` (default ``~/.u2net/<name>.onnx``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def model_path(model: str) -> Path:
    """Where rembg expects the ``<model>.onnx`` file."""
    home = os.environ.get("U2NET_HOME", os.path.join(os.path.expanduser("~"), ".u2net"))
    return Path(home) / f"{model}.onnx"


class RembgForeground:
    """Callable ``(B, C, H, W) -> (B, 1, H, W)`` bool using a local rembg model."""

    def __init__(self, model: str = "u2netp", threshold: float = 0.5) -> None:
        self.model = model
        self.threshold = threshold
        self._session = None

    def _load(self):
        path = model_path(self.model)
        if not path.exists():
            raise FileNotFoundError(
                f"rembg model '{self.model}' not found at {path}. cai_aug never downloads weights: put "
                f"{self.model}.onnx there (or set U2NET_HOME to its folder), or use foreground='auto'."
            )
        try:
            import rembg
        except ImportError as error:
            raise ImportError('foreground="rembg" needs rembg: pip install "cai_aug[rembg]"') from error
        return rembg.new_session(self.model)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self._session is None:
            self._session = self._load()
        import rembg
        from PIL import Image

        masks = []
        for image in images:
            array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            array = array.expand(3, -1, -1).permute(1, 2, 0).numpy()
            alpha = rembg.remove(Image.fromarray(array), session=self._session, only_mask=True)
            masks.append(torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0 > self.threshold))
        return torch.stack(masks)[:, None].to(images.device)
