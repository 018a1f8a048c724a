"""The CuPy path of poisson_blend, run on the CPU: kernels/*.cu compiled by g++ and launched serially.

Without a GPU, this still checks the CUDA kernels' index arithmetic and the CuPy driver
(:mod:`cai_aug.poisson.cupy_backend`: launch order, buffers, per-plane scalars, freezing) end to end against
the torch path. A stand-in ``cupy`` module hands torch CPU tensors to the kernels as raw pointers and
runs every block and thread of a launch one after the other, which gives the same results as a GPU
for these kernels (no kernel reads what another thread of the same launch writes, except the
commutative block sums, emulated as plain adds).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from cai_aug.poisson import blend as poisson
from cai_aug.poisson import cupy_backend as poisson_cupy

PRELUDE = """
#define CAI_CUDA_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
struct cai_dim3 { unsigned int x, y, z; };
static cai_dim3 blockIdx, threadIdx, blockDim;
"""

_SIGNATURE = re.compile(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", re.S)


def _launchers(src: str) -> tuple[str, dict[str, list[str]]]:
    """C launchers that run every block and thread of a grid in turn, and each kernel's arg kinds."""
    code, kinds = [], {}
    for name, params in _SIGNATURE.findall(src):
        decls = [" ".join(p.split()) for p in params.split(",")]
        names = [d.replace("*", " ").split()[-1] for d in decls]
        kinds[name] = ["ptr" if "*" in d else "int" for d in decls]
        code.append(
            f'extern "C" void launch_{name}(unsigned gx_, unsigned gy_, unsigned bx_, {", ".join(decls)}) {{\n'
            "  blockDim.x = bx_; blockDim.y = 1; blockDim.z = 1;\n"
            "  for (unsigned y_ = 0; y_ < gy_; ++y_) for (unsigned x_ = 0; x_ < gx_; ++x_)\n"
            "    for (unsigned t_ = 0; t_ < bx_; ++t_) {\n"
            "      blockIdx.x = x_; blockIdx.y = y_; blockIdx.z = 0;\n"
            "      threadIdx.x = t_; threadIdx.y = 0; threadIdx.z = 0;\n"
            f"      {name}({', '.join(names)});\n"
            "    }\n}\n"
        )
    return "\n".join(code), kinds


class _Function:
    def __init__(self, lib: ctypes.CDLL, name: str, kinds: list[str]) -> None:
        self.fn = getattr(lib, f"launch_{name}")
        self.fn.restype = None
        self.fn.argtypes = [ctypes.c_uint] * 3 + [ctypes.c_void_p if k == "ptr" else ctypes.c_int for k in kinds]
        self.kinds = kinds

    def __call__(self, grid, block, args) -> None:
        gx, gy = (tuple(grid) + (1,))[:2]
        assert len(args) == len(self.kinds)
        values = []
        for kind, a in zip(self.kinds, args):
            if kind == "ptr":
                assert isinstance(a, torch.Tensor) and a.is_contiguous()
                values.append(ctypes.c_void_p(a.data_ptr()))
            else:
                assert isinstance(a, np.int32)
                values.append(int(a))
        self.fn(gx, gy, block[0], *values)


def _fake_cupy(tmp_path) -> types.ModuleType:
    """A ``cupy`` stand-in: RawModule compiles with g++, from_dlpack passes CPU tensors through."""
    libs: dict[str, tuple[ctypes.CDLL, dict[str, list[str]]]] = {}

    class RawModule:
        def __init__(self, code: str, **_: object) -> None:
            key = str(len(libs))
            launchers, kinds = _launchers(code)
            src = tmp_path / f"k{key}.cpp"
            src.write_text(PRELUDE + code + "\n" + launchers)
            so = tmp_path / f"k{key}.so"
            subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
            libs[key] = (ctypes.CDLL(str(so)), kinds)
            self.lib, self.kinds = libs[key]

        def get_function(self, name: str) -> _Function:
            return _Function(self.lib, name, self.kinds[name])

    fake = types.ModuleType("cupy")
    fake.__name__ = "cupy_cpu_emulation"
    fake.RawModule = RawModule
    fake.from_dlpack = lambda t: t
    return fake


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is absent: cannot emulate the CUDA kernels on the CPU")
    fake = _fake_cupy(tmp_path_factory.mktemp("cuda_emulation"))
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = fake
    poisson_cupy._cupy_module.cache_clear()
    original = poisson._use_cupy
    poisson._use_cupy = lambda device, backend: backend != "torch"
    yield fake
    poisson._use_cupy = original
    if saved is None:
        sys.modules.pop("cupy", None)
    else:
        sys.modules["cupy"] = saved
    poisson_cupy._cupy_module.cache_clear()


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _masks() -> torch.Tensor:
    h = w = 40
    line = torch.zeros(h, w, dtype=torch.bool)
    line[5:35, 12] = True
    pixel = torch.zeros(h, w, dtype=torch.bool)
    pixel[20, 20] = True
    return torch.stack(
        [
            _disc(h, w, 20, 20, 15),
            _disc(h, w, 20, 20, 17) & ~_disc(h, w, 20, 20, 6),
            _disc(h, w, 0, 39, 12),
            line,
            pixel,
            _disc(h, w, 8, 8, 5) | _disc(h, w, 30, 28, 7),
        ]
    )[:, None]


@pytest.mark.parametrize("mode", ["normal", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_cupy_path_matches_the_torch_path(emulated, mode: str, dtype: torch.dtype) -> None:
    masks = _masks()
    g = torch.Generator().manual_seed(1)
    t = torch.rand(len(masks), 3, 40, 40, generator=g, dtype=dtype)
    s = torch.rand(len(masks), 3, 40, 40, generator=g, dtype=dtype)
    ref, ref_stats = poisson.poisson_blend(t, s, masks, mode, backend="torch", return_stats=True)
    out, stats = poisson.poisson_blend(t, s, masks, mode, backend="cupy", return_stats=True)
    assert stats.backend == "cupy" and ref_stats.backend == "torch"
    assert (stats.residual <= 1e-4).all()
    assert (stats.iterations - ref_stats.iterations).abs().max() <= 1
    assert torch.allclose(out, ref, atol=1e-4, rtol=0)
    outside = ~masks.expand_as(out)
    assert torch.equal(out[outside], t[outside])


def test_emulated_cupy_path_freezes_converged_samples(emulated) -> None:
    masks = _masks()
    g = torch.Generator().manual_seed(2)
    t = torch.rand(len(masks), 1, 40, 40, generator=g)
    s = torch.rand(len(masks), 1, 40, 40, generator=g)
    batched, stats_b = poisson.poisson_blend(t, s, masks, backend="cupy", return_stats=True)
    for i in (0, 4):
        alone, stats_a = poisson.poisson_blend(t[i : i + 1], s[i : i + 1], masks[i : i + 1], return_stats=True)
        assert int(stats_a.iterations[0]) == int(stats_b.iterations[i])
        assert torch.allclose(alone[0], batched[i], atol=1e-5)


def test_a_failing_cupy_path_falls_back_to_torch_under_auto(emulated, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("NVRTC compilation failed (simulated)")

    monkeypatch.setattr(poisson_cupy, "solve_bucket", broken)
    monkeypatch.setattr(poisson_cupy, "_disabled", None)
    masks = _masks()
    t = torch.rand(len(masks), 3, 40, 40)
    s = torch.rand(len(masks), 3, 40, 40)
    with pytest.raises(RuntimeError, match="simulated"):
        poisson.poisson_blend(t, s, masks, backend="cupy")
    with pytest.warns(RuntimeWarning, match="CuPy path failed"):
        out, stats = poisson.poisson_blend(t, s, masks, return_stats=True)
    assert stats.backend == "torch"
    assert torch.equal(out, poisson.poisson_blend(t, s, masks, backend="torch"))
    assert not poisson_cupy.available()


def test_emulated_cupy_path_takes_the_visible_tolerance_like_the_torch_path(emulated) -> None:
    masks = _masks()
    g = torch.Generator().manual_seed(3)
    t = torch.rand(len(masks), 3, 40, 40, generator=g)
    s = torch.rand(len(masks), 3, 40, 40, generator=g)
    ref, ref_stats = poisson.poisson_blend(t, s, masks, backend="torch", atol=1 / 255, return_stats=True)
    out, stats = poisson.poisson_blend(t, s, masks, backend="cupy", atol=1 / 255, return_stats=True)
    exact = poisson.poisson_blend(t.double(), s.double(), masks, backend="torch", rtol=1e-10)
    _, to_rtol = poisson.poisson_blend(t, s, masks, backend="cupy", return_stats=True)
    assert stats.backend == "cupy"
    assert (stats.iterations - ref_stats.iterations).abs().max() <= 1
    assert stats.iterations.sum() < to_rtol.iterations.sum()  # atol did stop it
    assert (out.double() - exact).abs().max() <= 1 / 255
