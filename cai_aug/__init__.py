"""cai_aug: realistic pseudo anomalies by cross-domain anomaly injection (CAI).

Every public name is resolved lazily (``__getattr__``): ``import cai_aug`` is cheap and never pulls an
optional stack; the engine loads with its first name (``cai_aug.CAI``, ``cai_aug.CAIConfig`` ...).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "CAI",
    "AnomalyBank",
    "CAIAnomalyGenerator",
    "CAIAugment",
    "CAIConfig",
    "CAIDataset",
    "CAIResult",
    "PoissonStats",
    "poisson_blend",
    "poisson_blend_canvases",
    "sample_key",
    "synthesize",
]


def _module_of(name: str) -> Any:
    """The module that defines the public ``name`` (plain imports, so import-linter sees every one)."""
    if name in ("CAI", "CAIResult"):
        from cai_aug.engine import cai as module
    elif name == "AnomalyBank":
        from cai_aug.engine import bank as module
    elif name == "CAIConfig":
        from cai_aug.engine import config as module
    elif name == "synthesize":
        from cai_aug.engine import algorithm1 as module
    elif name == "sample_key":
        from cai_aug.engine import rng as module
    elif name in ("poisson_blend", "poisson_blend_canvases", "PoissonStats"):
        from cai_aug import poisson as module
    elif name == "CAIDataset":
        from cai_aug.frontends import dataset as module
    elif name == "CAIAugment":
        from cai_aug.frontends import augment as module
    else:
        from cai_aug.frontends import anomalib as module
    return module


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'cai_aug' has no attribute {name!r}")
    value = getattr(_module_of(name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
