"""The wheel: every package and every native source in it, the kernels found and compiled from an install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed() -> None:
    found = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "cai_aug").rglob("__init__.py")}
    assert set(SETUPTOOLS["packages"]) == found | {"cai_aug.kernels"}


def test_every_native_source_lives_in_kernels() -> None:
    native = {".c", ".cc", ".cpp", ".cu", ".cuh", ".h", ".hpp"}
    assert not [p for p in (ROOT / "cai_aug").rglob("*") if p.suffix in native]
    assert {p.name for p in (ROOT / "kernels").iterdir()} >= {"cpu_kernel.cpp", "common.cuh", "poisson_cg.cu"}
    assert SETUPTOOLS["package-dir"] == {"cai_aug.kernels": "kernels"}


# Run by the venv's own python: cai_aug from the installed wheel, torch from this interpreter's
# site-packages (on PYTHONPATH, which holds no cai_aug); a fresh cache and home force a fresh build.
INSTALLED_CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    import cai_aug
    from cai_aug.poisson import cpu_kernel, cupy_backend, poisson_blend
    from cai_aug.poisson.native import native_dir
    assert Path(cai_aug.__file__).is_relative_to(sys.prefix), cai_aug.__file__
    assert native_dir() == Path(cai_aug.__file__).parent / "kernels", native_dir()
    assert set(cupy_backend.kernel_sources()) == set(cupy_backend.KERNEL_FILES)
    assert cpu_kernel.available(), "the CPU kernel did not build from the installed sources"
    calls, solve = [], cpu_kernel.blend
    cpu_kernel.blend = lambda *args, **kw: calls.append(1) or solve(*args, **kw)
    target = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    source = torch.linspace(0, 1, 24).expand(2, 3, 24, 24).contiguous()
    mask = torch.zeros(2, 1, 24, 24, dtype=torch.bool)
    mask[..., 5:19, 4:20] = True
    out = poisson_blend(target, source, mask, rtol=1e-6)
    cpu_kernel.USE = False
    reference = poisson_blend(target, source, mask, rtol=1e-6)
    assert calls and torch.allclose(out, reference, atol=1e-4), (calls, (out - reference).abs().max())
    print("ok")
    """
)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_an_installed_wheel_finds_and_compiles_its_kernels(tmp_path: Path) -> None:
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("cai_aug", "kernels"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # offline, and blind to this checkout (a cai_aug on PYTHONPATH would count as installed already)
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}
    wheel_cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path]
    subprocess.run([*wheel_cmd, source], check=True, env=offline, cwd=tmp_path)
    (wheel,) = tmp_path.glob("cai_aug-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", wheel], check=True, env=offline, cwd=tmp_path)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "CAI_AUG_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(Path(torch.__file__).parents[1]),  # torch only: that folder holds no cai_aug
    }
    done = subprocess.run([python, "-c", INSTALLED_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
