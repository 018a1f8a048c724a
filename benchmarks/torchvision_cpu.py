"""Let PyPI's torchvision (a CUDA build) import next to a CPU torch, for the benchmarks only.

Measured on the development machines: its compiled ops do not load with the CPU torch, and ``import
torchvision`` dies registering fake kernels for ``torchvision::nms`` and ``qnms``; defining those two
schemas first lets it import (detection ops stay unavailable; DRAEM and Perlin noise need none). The
library never does this: a user's own CPU or CUDA torchvision imports normally.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

_SCHEMAS: list[object] = []  # keeps the torch.library.Library alive


def torchvision_recipe() -> str:
    """Let a CUDA torchvision wheel import on a CPU torch: only when its ops are absent."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return "not needed"
    try:
        torch.ops.torchvision.nms  # noqa: B018 - defined when torchvision's ops are loaded already
        return "not needed"
    except (AttributeError, RuntimeError):
        pass
    import glob

    spec = importlib.util.find_spec("torchvision")
    try:
        for lib in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
            torch.ops.load_library(lib)
        torch.ops.torchvision.nms  # noqa: B018
        return "native (ops loaded)"
    except (OSError, RuntimeError, AttributeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SCHEMAS.append(lib)
    return "nms/qnms schemas defined (torchvision's ops do not load with this torch)"
