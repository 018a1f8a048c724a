"""CDM's learned state and its small checkpoint files.

A checkpoint folder holds ``cdm_embeddings.safetensors`` (the class embeddings ``anomaly.vectors``
``(C, k, D)`` and the spatial encoder's weights ``encoder.*``, a few MB), ``cdm_config.json`` (classes,
shapes, training settings, step) and, for resuming, ``training_state.pt`` (step and optimiser state).
Files are written to a temporary name and renamed, so a killed run never leaves a half file.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .encoder import AnomalyEmbeddings, EncoderConfig, SpatialEncoder

FORMAT = "cai_aug.cdm/1"
WEIGHTS = "cdm_embeddings.safetensors"
CONFIG = "cdm_config.json"
STATE = "training_state.pt"


class CDMEmbeddings(nn.Module):
    """The spatial anomaly embedding ``e = {e_a, e_s}``: class tokens + tokens encoded from the mask."""

    def __init__(self, anomaly: AnomalyEmbeddings, encoder: SpatialEncoder) -> None:
        super().__init__()
        if anomaly.vectors.shape[-1] != encoder.config.embed_dim:
            raise ValueError("class embeddings and spatial encoder disagree on the embedding width")
        self.anomaly = anomaly
        self.encoder = encoder

    @property
    def classes(self) -> list[str]:
        return self.anomaly.classes

    @property
    def num_tokens(self) -> int:
        """k + n: learned tokens per prompt."""
        return self.anomaly.tokens_per_class + self.encoder.config.num_tokens

    def forward(self, class_index: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Class indices ``(B,)`` and masks ``(B, 1, H, W)`` -> tokens ``(B, k + n, D)``."""
        e_a = self.anomaly(class_index)
        e_s = self.encoder(masks.to(e_a.device))
        return torch.cat([e_a, e_s], dim=1)

    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "classes": self.classes,
            "tokens_per_class": self.anomaly.tokens_per_class,
            "encoder": self.encoder.config.to_dict(),
        }


def _one_line(exc: BaseException) -> str:
    """An exception as one line (torch's and safetensors' messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(
    folder: str | Path,
    embeddings: CDMEmbeddings,
    extra: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
) -> Path:
    """Write weights + config (+ resumable optimiser state when ``optimizer`` is given)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in embeddings.state_dict().items()}
    _atomic(folder / WEIGHTS, lambda p: save_file(tensors, str(p)))
    config = {**embeddings.describe(), **(extra or {}), "step": int(step)}
    _atomic(folder / CONFIG, lambda p: p.write_text(json.dumps(config, indent=2)))
    if optimizer is not None:
        state = {"step": int(step), "optimizer": optimizer.state_dict()}
        _atomic(folder / STATE, lambda p: torch.save(state, p))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON, with a clear error when the folder is not a CDM checkpoint."""
    path = Path(folder)
    if path.is_file():
        path = path.parent
    config_path = path / CONFIG
    if not config_path.is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a CDM checkpoint: expected {CONFIG} and {WEIGHTS}")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path} has format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def load_checkpoint(folder: str | Path, device: torch.device | str | None = None) -> CDMEmbeddings:
    """Rebuild :class:`CDMEmbeddings` from a checkpoint folder (or its weights file)."""
    path = Path(folder)
    path = path.parent if path.is_file() else path
    config = read_config(path)
    try:
        encoder = SpatialEncoder(EncoderConfig(**config["encoder"]))
        tensors = load_file(str(path / WEIGHTS))
        vectors = tensors["anomaly.vectors"]
        embeddings = CDMEmbeddings(AnomalyEmbeddings(list(config["classes"]), vectors), encoder)
        embeddings.load_state_dict(tensors)
    except (SafetensorError, KeyError, RuntimeError) as exc:  # a damaged or foreign checkpoint: one line, no trace
        raise ValueError(f"{path} is not a usable CDM checkpoint: {_one_line(exc)}") from exc
    return embeddings.to(device)


def load_training_state(folder: str | Path) -> dict[str, Any] | None:
    """``{"step", "optimizer"}`` written by :func:`save_checkpoint`, or None when absent."""
    path = Path(folder) / STATE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses arbitrary objects: say which file, in one line
        raise ValueError(
            f"{path}: holds objects other than tensors and plain values, or is no torch file; refused (never unpickled)"
        ) from exc
    except (EOFError, KeyError, RuntimeError) as exc:  # empty, truncated or foreign bytes
        raise ValueError(f"{path}: not a readable training state ({_one_line(exc)})") from exc
    if not isinstance(state, dict) or not {"step", "optimizer"} <= state.keys():
        raise ValueError(f"{path}: not a training state (expected a dict with 'step' and 'optimizer')")
    return state
