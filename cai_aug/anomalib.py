"""Public paths of the anomalib adapters: ``cai_aug.anomalib.CAIAnomalyGenerator`` and ``CAIDraem``.

``CAIDraem`` (a ``Draem``) imports anomalib, so it is resolved on first access: importing the
generator alone never pulls anomalib or torchvision in.
"""

from typing import Any

from cai_aug.frontends import anomalib as _anomalib
from cai_aug.frontends.anomalib import CAIAnomalyGenerator

__all__ = ["CAIAnomalyGenerator", "CAIDraem"]  # noqa: F822 - CAIDraem resolves in __getattr__


def __getattr__(name: str) -> Any:
    if name == "CAIDraem":
        return _anomalib.CAIDraem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
