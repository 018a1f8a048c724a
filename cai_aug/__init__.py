"""cai_aug: realistic pseudo anomalies by cross-domain anomaly injection (CAI).

Every public name is resolved lazily (``_EXPORTS``): ``import cai_aug`` is cheap and never pulls an
optional stack; the engine loads with its first name (``cai_aug.CAI``, ``cai_aug.CAIConfig`` ...).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AnomalyBank": "cai_aug.engine.bank",
    "CAI": "cai_aug.engine.cai",
    "CAIConfig": "cai_aug.engine.config",
    "CAIResult": "cai_aug.engine.cai",
    "poisson_blend": "cai_aug.poisson",
    "poisson_blend_canvases": "cai_aug.poisson",
    "PoissonStats": "cai_aug.poisson",
    "synthesize": "cai_aug.engine.algorithm1",
    "sample_key": "cai_aug.engine.rng",
    "CAIDataset": "cai_aug.frontends.dataset",
    "CAIAugment": "cai_aug.frontends.augment",
    "CAIAnomalyGenerator": "cai_aug.frontends.anomalib",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cai_aug' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
