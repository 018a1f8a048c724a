"""rembg matting as a foreground estimator (optional: ``pip install "cai_aug[rembg]"``).

rembg downloads model weights at first use, which never works offline, so the weights must already be
on disk. Where rembg looks for them is rembg's business and changes between its versions (``U2NET_HOME``,
``REMBG_HOME/models/<name>/``, ``~/.u2net`` ...): this module asks the installed rembg (its session
class's ``resolve_existing``, or ``u2net_home`` in older versions) instead of re-deriving the rules, and
refuses to build a session, which would download, when rembg finds no file. Custom models
(``u2net_custom``, ``dis_custom`` ...) take rembg's ``model_path``; ``providers`` and any other
``new_session`` keyword are passed through to rembg.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _session_class(model: str) -> Any | None:
    """rembg's session class for ``model``; ``None`` when rembg is not installed."""
    try:
        from rembg.sessions import sessions_class
    except ImportError:
        return None
    for session_class in sessions_class:
        if session_class.name() == model:
            return session_class
    names = sorted(session_class.name() for session_class in sessions_class)
    raise ValueError(f"rembg has no model {model!r}; it knows {', '.join(names)}")


def candidate_paths(model: str, **session_kwargs: Any) -> list[Path]:
    """Where the installed rembg looks for ``model``'s weights, in its order of preference.

    Custom models: their ``model_path``. Without rembg installed: ``$U2NET_HOME/<model>.onnx`` (default
    ``~/.u2net``), the location every rembg version reads, so the error can still say where to put it.
    """
    if model.endswith("_custom"):
        if session_kwargs.get("model_path") is None:
            raise ValueError(f"rembg model {model!r} needs model_path= (the .onnx file to load)")
        return [Path(os.path.expanduser(str(session_kwargs["model_path"]))).resolve()]
    session_class = _session_class(model)
    fname = f"{model}.onnx"
    if session_class is None:
        home = os.environ.get("U2NET_HOME", os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".u2net"))
        return [Path(os.path.expanduser(home)) / fname]
    if hasattr(session_class, "model_dir") and hasattr(session_class, "legacy_home"):  # rembg >= 2.0.7x
        return [
            Path(session_class.model_dir(**session_kwargs)) / fname,
            Path(session_class.legacy_home(**session_kwargs)) / fname,
        ]
    return [Path(session_class.u2net_home(**session_kwargs)) / fname]


def model_path(model: str, **session_kwargs: Any) -> Path:
    """The weights file rembg would load for ``model``: the first that exists, else its preferred place."""
    candidates = candidate_paths(model, **session_kwargs)
    return next((path for path in candidates if path.exists()), candidates[0])


class RembgForeground:
    """Callable ``(B, C, H, W) -> (B, 1, H, W)`` bool using a local rembg model; never downloads.

    Parameters
    ----------
    model : str
        rembg model name (``"u2netp"``, ``"isnet-general-use"``, ``"u2net_custom"`` ...).
    threshold : float
        Alpha above which a pixel is foreground.
    model_path : path, optional
        The ``.onnx`` file of a custom model (rembg's ``model_path``).
    providers : list of str, optional
        onnxruntime execution providers (rembg's ``providers``; default: rembg's choice).
    **session_kwargs
        Any other keyword of ``rembg.new_session``.
    """

    def __init__(
        self,
        model: str = "u2netp",
        threshold: float = 0.5,
        *,
        model_path: str | os.PathLike | None = None,
        providers: list[str] | None = None,
        **session_kwargs: Any,
    ) -> None:
        self.model = model
        self.threshold = threshold
        self.session_kwargs = dict(session_kwargs)
        if model_path is not None:
            self.session_kwargs["model_path"] = str(model_path)
        if providers is not None:
            self.session_kwargs["providers"] = list(providers)
        self._session = None

    def _load(self) -> Any:
        lookup = {k: v for k, v in self.session_kwargs.items() if k != "providers"}
        candidates = candidate_paths(self.model, **lookup)
        if not any(path.exists() for path in candidates):
            where = " or ".join(str(path) for path in candidates)
            raise FileNotFoundError(
                f"rembg model '{self.model}' not found at {where}. cai_aug never downloads weights: put the "
                f".onnx file there (rembg's own locations; U2NET_HOME or REMBG_HOME move them), pass "
                f"model_path= with model 'u2net_custom', or use foreground='auto'."
            )
        try:
            import rembg
        except ImportError as error:
            raise ImportError('foreground="rembg" needs rembg: pip install "cai_aug[rembg]"') from error
        return rembg.new_session(self.model, **self.session_kwargs)

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
