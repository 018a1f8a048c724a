"""The optional stack of CDM, imported once with an error that says how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType

_INSTALL_HINT = 'CDM needs the optional extra: pip install "cai_aug[cdm]" (diffusers, transformers, safetensors)'


def require(name: str) -> ModuleType:
    """Import ``name`` (diffusers, transformers, safetensors) or raise an ImportError naming the extra."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{_INSTALL_HINT}; importing {name!r} failed: {error}") from error


def check_all() -> None:
    """Fail early, at ``import cai_aug.cdm``, when any part of the extra is missing."""
    for name in ("diffusers", "transformers", "safetensors"):
        require(name)
