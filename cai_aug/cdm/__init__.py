"""CAI-guided diffusion mechanism (CDM), optional: ``pip install "cai_aug[cdm]"``.

Learns, from CAI's own pseudo anomalies, one textual-inversion embedding per anomaly class plus a
spatial encoder (mask -> tokens) for a frozen latent diffusion model, then makes new pseudo anomalies
by blended latent diffusion (CAI paper Sec. 3.3; AnomalyDiffusion). The engine never imports this
package; importing it needs diffusers, transformers and safetensors.

- :func:`train_cdm` / ``cai-aug cdm-train``: masked textual inversion, small resumable checkpoints.
- :class:`CDMSampler` / ``cai-aug cdm-sample``: ``sampler(images, masks) -> (images, masks, labels)``.
- :func:`load_components`, :func:`make_tiny_pretrained`: a local SD-style diffusers folder in, or a
  tiny random one out (tests, examples); never a download.
"""

from __future__ import annotations

from ._deps import check_all

check_all()

from .checkpoint import CDMEmbeddings, load_checkpoint, save_checkpoint  # noqa: E402
from .data import PseudoAnomalyDataset, scan_pseudo_folder  # noqa: E402
from .models import (  # noqa: E402
    CDMComponents,
    build_components,
    check_pretrained,
    load_components,
    make_tiny_pretrained,
    save_components,
    sd15_configs,
    tiny_configs,
    tiny_tokenizer,
)
from .sampler import CDMResult, CDMSampler  # noqa: E402
from .train import CDMTrainConfig, CDMTrainer, TrainResult, new_embeddings, train_cdm  # noqa: E402

__all__ = [
    "CDMComponents",
    "CDMEmbeddings",
    "CDMResult",
    "CDMSampler",
    "CDMTrainConfig",
    "CDMTrainer",
    "PseudoAnomalyDataset",
    "TrainResult",
    "build_components",
    "check_pretrained",
    "load_checkpoint",
    "load_components",
    "make_tiny_pretrained",
    "new_embeddings",
    "save_checkpoint",
    "save_components",
    "scan_pseudo_folder",
    "sd15_configs",
    "tiny_configs",
    "tiny_tokenizer",
    "train_cdm",
]
