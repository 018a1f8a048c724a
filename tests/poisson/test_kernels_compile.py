"""Every CUDA source in kernels/ compiles with nvcc for sm_90 (syntax and types, no GPU needed).

nvcc gets kernels/ as include path; NVRTC gets the sources with the shared header inlined.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cai_aug.poisson import cupy_backend as poisson_cupy

KERNEL_DIR = Path(__file__).resolve().parents[2] / "kernels"
KERNELS = sorted(KERNEL_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_kernel_sources_are_found() -> None:
    assert {p.name for p in KERNELS} >= set(poisson_cupy.KERNEL_FILES)
    sources = poisson_cupy.kernel_sources()
    assert set(sources) == set(poisson_cupy.KERNEL_FILES)
    assert all('extern "C"' in src for src in sources.values())


def test_kernel_sources_for_nvrtc_have_the_shared_header_inlined() -> None:
    header = (KERNEL_DIR / "common.cuh").read_text()
    for name, src in poisson_cupy.kernel_sources().items():
        assert '#include "common.cuh"' in (KERNEL_DIR / name).read_text(), name
        assert '#include "common.cuh"' not in src, name
        assert header.replace("#pragma once", "") in src, name
        assert "#pragma once" not in src, name


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", KERNELS, ids=[p.name for p in KERNELS])
def test_kernel_compiles_to_ptx(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".ptx")
    proc = subprocess.run(
        [NVCC, "--ptx", "-arch=sm_90", "-I", str(KERNEL_DIR), "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    # every extern "C" kernel keeps its unmangled name (CuPy's RawModule looks them up by name)
    for name in poisson_cupy._kernel_names(source.read_text()):
        assert f".entry {name}(" in ptx, name
