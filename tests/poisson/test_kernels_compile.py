"""Every CUDA source in kernels/ compiles with nvcc for sm_90 (syntax and types, no GPU needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cai_aug.poisson import cupy_backend as poisson_cupy

KERNELS = sorted((Path(__file__).resolve().parents[2] / "cai_aug" / "poisson" / "kernels").glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_kernel_sources_are_found() -> None:
    assert {p.name for p in KERNELS} >= set(poisson_cupy.KERNEL_FILES)
    sources = poisson_cupy.kernel_sources()
    assert set(sources) == set(poisson_cupy.KERNEL_FILES)
    assert all('extern "C"' in src for src in sources.values())


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", KERNELS, ids=[p.name for p in KERNELS])
def test_kernel_compiles_to_ptx(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".ptx")
    proc = subprocess.run(
        [NVCC, "--ptx", "-arch=sm_90", "-o", str(out), str(source)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    # every extern "C" kernel keeps its unmangled name (CuPy's RawModule looks them up by name)
    for name in poisson_cupy._kernel_names(source.read_text()):
        assert f".entry {name}(" in ptx, name
