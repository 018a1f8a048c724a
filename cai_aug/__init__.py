"""cai_aug: realistic pseudo anomalies by cross-domain anomaly injection (CAI).

The engine (bank, matching, location, poisson, masks, pipeline) is imported eagerly; front ends are
resolved lazily so that importing the package never pulls optional stacks.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AnomalyBank": "cai_aug.engine.bank",
    "CAI": "cai_aug.engine.cai",
    "CAIResult": "cai_aug.engine.cai",
    "poisson_blend": "cai_aug.poisson",
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
