"""Where the native sources are: the repository's top-level ``kernels/`` folder, shipped as ``cai_aug/kernels``.

A wheel maps ``kernels/`` into the package (``pyproject.toml``: ``package-dir``), so an installed package
finds it beside its own modules; a checkout (an editable install or the repository on ``sys.path``)
finds it beside the ``cai_aug`` folder.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
_CANDIDATES = (_PACKAGE / "kernels", _PACKAGE.parent / "kernels")


def native_dir() -> Path:
    """The folder holding ``cpu_kernel.cpp`` and the CUDA sources (``*.cu``, ``*.cuh``).

    The installed location when neither holds them (a broken install): reading a source then fails
    with a ``FileNotFoundError`` naming the file.
    """
    return next((folder for folder in _CANDIDATES if (folder / "cpu_kernel.cpp").is_file()), _CANDIDATES[0])
