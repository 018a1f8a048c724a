"""The compiled CPU solve (``kernels/cpu_kernel.cpp``): built with the system's C++ compiler on first use.

The same library holds the engine's two other CPU hot loops, each bit for bit its torch counterpart:
the bilinear resampling of bank sources into canvases (:func:`render_rgba`) and the window copies in
and out of images (:func:`crop`, :func:`paste_`), which replace several torch calls per sample.

Why: on the CPU the torch loop of :mod:`cai_aug.poisson.pcg` is bound by memory traffic (about 30
full-array passes per CG iteration) and, for small patterns, by per-call overhead (dozens of tiny
torch calls per multigrid level). The same algorithm written as one loop nest per (sample, channel)
plane keeps a plane's arrays in the cache and has no per-call overhead (measured: see
``benchmarks/speed/poisson_speed.py`` and the README).

The library is compiled once per source version and machine into a cache folder (``CAI_AUG_CACHE``,
else ``~/.cache/cai_aug``, else the temp folder: the first one owned by the user, created with mode
0700, that nobody else may write; a library file there is loaded only if it is the user's own and
nobody else may write it) with ``g++``/``c++`` (``CXX``
overrides), which adds about 3 s to the first solve of a process that finds no build there. Any
failure (no compiler, no writable folder, a load error) logs once and leaves the torch loop in charge:
same algorithm, same stopping rules, slower. ``CAI_AUG_POISSON_CPU_KERNEL=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from cai_aug.poisson import multigrid as mg
from cai_aug.poisson.constants import ATOL_STEP_FACTOR, STOP_FACTOR
from cai_aug.poisson.native import native_dir
from cai_aug.poisson.system import CanvasSystem

__all__ = ["USE", "available", "blend", "copy_enabled", "crop", "enabled", "paste_", "pcg", "render_rgba"]

logger = logging.getLogger(__name__)

SOURCE = native_dir() / "cpu_kernel.cpp"
# False: the CPU solves stay with the torch loop (tests of that loop, benchmarks against it)
USE = True
ENV_SWITCH = "CAI_AUG_POISSON_CPU_KERNEL"
# -march=native: the cache key holds the CPU's identity, so a shared cache never hands one CPU's build
# to another; the flag sets are tried in turn. No OpenMP runtime (only its simd pragmas): a second
# runtime next to torch's is not fork-safe; threads are Python threads, see blend()
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])
_COMMON = ["-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fopenmp-simd"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
    return "\n".join(keep)


def _cache_dirs() -> list[Path]:
    """Where the library may be built, in order: ``CAI_AUG_CACHE``, ``~/.cache/cai_aug``, the temp folder."""
    env = os.environ.get("CAI_AUG_CACHE")
    dirs = [Path(env)] if env else []
    try:
        dirs.append(Path.home() / ".cache" / "cai_aug")
    except RuntimeError:  # no home folder to be found
        pass
    return [*dirs, Path(tempfile.gettempdir()) / "cai_aug"]


def _private(path: Path, *, folder: bool) -> bool:
    """Whether ``path`` is the current user's own and nobody else may write it (no symbolic link).

    Why: a library loaded from the cache runs its constructors in this process, so a folder or a
    file that another user owns or may write would let that user run code as us.
    """
    try:
        st = path.lstat()
    except OSError:
        return False
    kind = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
    return kind and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _safe_folder(folder: Path) -> bool:
    """Create ``folder`` with mode 0700 if missing; whether it is a private folder of the current user."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    return _private(folder, folder=True) and os.access(folder, os.W_OK)


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (g++, c++ or $CXX)")
    src = SOURCE.read_bytes()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(src + " ".join([cxx, *flags, *_COMMON]).encode() + _cpu_identity().encode()).hexdigest()
        name = f"poisson_cpu_{key[:16]}.so"
        safe = [d for d in _cache_dirs() if _safe_folder(d)]
        if not safe:
            raise _NoSafeFolder(
                "no cache folder owned by this user and writable by nobody else "
                f"({', '.join(str(d) for d in _cache_dirs())})"
            )
        built = [d / name for d in safe if _private(d / name, folder=False)]
        lib_path = built[0] if built else None
        if lib_path is None:
            folder = safe[0]
            if (folder / name).exists():  # a file that is not ours or that others may write: never loaded
                raise _NoSafeFolder(f"{folder / name} is not owned by this user or is writable by others")
            lib_path = folder / name
            # build under a private name, then rename: concurrent processes never load a half-written file
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            os.close(fd)
            cmd = [cxx, *flags, *_COMMON, str(SOURCE), "-o", tmp]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired:
                done = None
            if done is None or done.returncode != 0:
                os.unlink(tmp)
                errors.append(f"{' '.join(flags)}: {'timeout' if done is None else done.stderr.strip()[-300:]}")
                continue
            os.chmod(tmp, 0o700)  # the linker made it under the umask: a group-writable file would be refused
            os.replace(tmp, lib_path)
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError as exc:  # e.g. an OpenMP runtime that links but does not load: the next flag set
            errors.append(f"{' '.join(flags)}: {exc}")
            continue
        for symbol in ("cai_poisson_pcg_f32", "cai_poisson_pcg_f64"):
            fn = getattr(lib, symbol)
            fn.restype = None
            fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p] * 8 + [ctypes.c_double] * 4 + [
                ctypes.c_int, ctypes.c_double, ctypes.c_int,
            ]  # fmt: skip
        for symbol in ("cai_poisson_blend_f32", "cai_poisson_blend_f64"):
            fn = getattr(lib, symbol)
            fn.restype = None
            fn.argtypes = [ctypes.c_int] * 2 + [ctypes.c_void_p] * 7 + [ctypes.c_int] + [ctypes.c_void_p] * 2 + [
                ctypes.c_double] * 4 + [ctypes.c_int, ctypes.c_double, ctypes.c_int]  # fmt: skip
        lib.cai_crop.restype = lib.cai_paste.restype = None
        lib.cai_crop.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int] + [
            ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]  # fmt: skip
        lib.cai_paste.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int] + [
            ctypes.c_void_p] * 5 + [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
        lib.cai_render_rgba.restype = None
        lib.cai_render_rgba.argtypes = (
            [ctypes.c_int] * 3 + [ctypes.c_void_p] * 13 + [ctypes.c_int] + [ctypes.c_void_p] * 2
        )
        return lib
    raise RuntimeError("compilation failed: " + " | ".join(errors))


class _NoSafeFolder(RuntimeError):
    """No private cache folder (or an unsafe library file in it): the torch loop is used, with a warning."""


def _library() -> ctypes.CDLL | None:
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _build()
            except _NoSafeFolder as exc:  # a security refusal: said loudly, once
                logger.warning("cai_aug.poisson: compiled CPU solver not loaded (%s); using the torch loop", exc)
                _state["lib"] = None
            except Exception as exc:  # any failure: the torch path stays in charge
                logger.info("cai_aug.poisson: compiled CPU solver unavailable (%s); using the torch loop", exc)
                _state["lib"] = None
    return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the compiled CPU solve can be used (builds it on the first call)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _library() is not None


def enabled(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a CPU solve in ``dtype`` on ``device`` goes to the compiled code (``USE``, the switch, a build)."""
    return USE and device.type == "cpu" and dtype in (torch.float32, torch.float64) and available()


def pcg(
    system: CanvasSystem, rtol: float, max_iter: int, atol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`cai_aug.poisson.pcg.pcg` on CPU float32 / float64 canvases, compiled (see the module)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled CPU solver is not available")
    b = system.rhs
    if b.dtype not in (torch.float32, torch.float64) or b.device.type != "cpu":
        raise ValueError(f"compiled CPU solver takes CPU float32 / float64, got {b.dtype} on {b.device}")
    n, c, h, w = b.shape
    arrays = [system.east, system.south, system.dirichlet, b]
    east, south, dirichlet, b = (a.to(b.dtype).contiguous() for a in arrays)
    guess = None if system.guess is None else system.guess.to(b.dtype).contiguous()
    x = torch.empty_like(b)
    iters = torch.zeros((n, c), dtype=torch.int64)
    rel = torch.zeros((n, c), dtype=torch.float64)
    fn = lib.cai_poisson_pcg_f32 if b.dtype == torch.float32 else lib.cai_poisson_pcg_f64
    fn(
        n, c, h, w, east.data_ptr(), south.data_ptr(), dirichlet.data_ptr(), b.data_ptr(),
        None if guess is None else guess.data_ptr(), x.data_ptr(), iters.data_ptr(), rel.data_ptr(),
        float(rtol), 0.0 if atol is None else float(atol), STOP_FACTOR, ATOL_STEP_FACTOR, int(max_iter),
        mg.COARSE_SCALE, mg.DENSE_MAX,
    )  # fmt: skip
    return x, iters, rel.to(b.dtype)


def blend(
    target: torch.Tensor,
    source: torch.Tensor,
    omega: torch.Tensor,
    inside: torch.Tensor | None,
    out: torch.Tensor,
    rois: list[tuple[int, int, int, int, int]],
    mode: str,
    rtol: float,
    atol: float | None,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU schedule of :func:`cai_aug.poisson.poisson_blend` in one call: per sample its ROI becomes the
    canvas, the system of :func:`cai_aug.poisson.system.assemble` is set up there, solved and its unknowns
    written into ``out`` (in place), with no per-bucket torch work at all.

    Args:
        target, source: ``(B, C, H, W)`` float32 / float64 (the working dtype); out: the same, written.
        omega, inside: ``(B, 1, H, W)`` bool (``inside`` may be ``None``: every pixel is in the image).
        rois: ``(index, y0, x0, h, w)`` per sample to solve.

    Returns:
        iterations ``(len(rois), C)`` int64 and relative residuals ``(len(rois), C)`` (``out``'s dtype).
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled CPU solver is not available")
    c = target.shape[1]
    # any strides: a permuted (channels-last) batch is read and written in place
    arrays = (target, source, out, omega, omega if inside is None else inside)
    strides = torch.tensor([a.stride() for a in arrays], dtype=torch.int64)
    iters = torch.zeros((len(rois), c), dtype=torch.int64)
    rel = torch.zeros((len(rois), c), dtype=torch.float64)
    fn = lib.cai_poisson_blend_f32 if out.dtype == torch.float32 else lib.cai_poisson_blend_f64

    def solve(part: list[int]) -> None:
        table = torch.tensor([rois[k] for k in part], dtype=torch.int64).reshape(len(part), 5)
        it, rl = torch.zeros((len(part), c), dtype=torch.int64), torch.zeros((len(part), c), dtype=torch.float64)
        fn(
            len(part), c, target.data_ptr(), source.data_ptr(), omega.data_ptr(),
            None if inside is None else inside.data_ptr(), out.data_ptr(), strides.data_ptr(), table.data_ptr(),
            int(mode == "mixed"), it.data_ptr(), rl.data_ptr(), float(rtol), 0.0 if atol is None else float(atol),
            STOP_FACTOR, ATOL_STEP_FACTOR, int(max_iter), mg.COARSE_SCALE, mg.DENSE_MAX,
        )  # fmt: skip
        iters[part], rel[part] = it, rl

    parts = _split(rois, min(torch.get_num_threads(), len(rois)))
    if len(parts) <= 1:
        solve(list(range(len(rois))))
    else:
        # samples write disjoint pixels and the call releases the GIL: the parts run on worker threads
        # that persist across calls, so that each keeps its workspace (fresh threads would pay its page
        # faults on every call: measured 2 threads slower than 1)
        futures = [_executor(len(parts) - 1).submit(solve, part) for part in parts[1:]]
        solve(parts[0])
        for future in futures:
            future.result()
    return iters, rel.to(out.dtype)


def _executor(workers: int) -> ThreadPoolExecutor:
    """This process's worker threads (at least ``workers``); a forked child makes its own, as the parent's
    threads do not exist there."""
    pid, size, executor = _state.get("executor", (None, 0, None))
    if executor is None or pid != os.getpid() or size < workers:
        if executor is not None and pid == os.getpid():
            executor.shutdown(wait=False)  # a larger one replaces it
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cai_aug_poisson")
        _state["executor"] = (os.getpid(), workers, executor)
    return executor  # type: ignore[return-value]


def _split(rois: list[tuple[int, int, int, int, int]], n: int) -> list[list[int]]:
    """Sample positions in ``n`` parts of about equal work (ROI area), largest first to the lightest part."""
    if n <= 1:
        return [list(range(len(rois)))]
    loads = [0] * n
    parts: list[list[int]] = [[] for _ in range(n)]
    for k in sorted(range(len(rois)), key=lambda k: -rois[k][3] * rois[k][4]):
        j = loads.index(min(loads))
        parts[j].append(k)
        loads[j] += rois[k][3] * rois[k][4]
    return [sorted(p) for p in parts if p]


def render_rgba(
    pixels: torch.Tensor,
    base: torch.Tensor,
    stride: torch.Tensor,
    row_taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    col_taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    extent: tuple[torch.Tensor, torch.Tensor],
    pattern: tuple[torch.Tensor, torch.Tensor],
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resampling of RGBA8 ``pixels`` (``(P, 4)`` uint8) into ``N`` canvases, compiled.

    Sample ``k`` reads pixel ``base[k] + y * stride[k] + x``; ``row_taps = (y0, y1, wy)`` ``(N, Hc)`` and
    ``col_taps = (x0, x1, wx)`` ``(N, Wc)`` are its bilinear taps (int64, int64, float32); only the first
    ``extent = (rows, cols)`` ``(N,)`` rows and columns are filled (zero / False beyond). Returns the RGB
    canvases ``(N, 3, Hc, Wc)`` float32 in [0, 1] and the mask ``(N, 1, Hc, Wc)`` bool: alpha >= 0.5
    inside the ``pattern = (height, width)`` box at offset ``(pad, pad)``. Bit for bit the torch path of
    :func:`cai_aug.engine.resample.render_patterns`.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled CPU kernels are not available")
    y0, y1, wy = (t.contiguous() for t in row_taps)
    x0, x1, wx = (t.contiguous() for t in col_taps)
    rows, cols = (t.contiguous() for t in extent)
    height, width = (t.contiguous() for t in pattern)
    base, stride, pixels = base.contiguous(), stride.contiguous(), pixels.contiguous()
    n, hc, wc = y0.shape[0], y0.shape[1], x0.shape[1]
    image = torch.zeros(n, 3, hc, wc)
    mask = torch.zeros(n, 1, hc, wc, dtype=torch.bool)
    tensors = (pixels, base, stride, y0, y1, wy, x0, x1, wx, rows, cols, height, width)
    lib.cai_render_rgba(n, hc, wc, *(t.data_ptr() for t in tensors), int(pad), image.data_ptr(), mask.data_ptr())
    return image, mask


def copy_enabled(images: torch.Tensor) -> bool:
    """Whether the compiled window copies (:func:`crop`, :func:`paste_`) take ``images``: a contiguous CPU
    tensor of 1-, 2-, 4- or 8-byte elements, with the compiled code available."""
    return (
        USE
        and images.device.type == "cpu"
        and images.is_contiguous()
        and images.element_size() in (1, 2, 4, 8)
        and available()
    )


def crop(
    images: torch.Tensor, rows: torch.Tensor, origin_y: torch.Tensor, origin_x: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Windows ``(N, C, height, width)`` of contiguous ``(B, C, H, W)`` images at per-sample origins ``(N,)``,
    window ``n`` cut from image ``rows[n]``; pixels outside the image take the nearest image pixel."""
    lib = _library()
    count, channels = origin_y.shape[0], images.shape[1]
    out = images.new_empty(count, channels, height, width)
    if count == 0:
        return out
    index = [t.to(torch.int64).contiguous() for t in (rows, origin_y, origin_x)]
    lib.cai_crop(
        count, channels, images.shape[-2], images.shape[-1], images.element_size(), images.data_ptr(),
        *(t.data_ptr() for t in index), height, width, out.data_ptr(),
    )  # fmt: skip
    return out


def paste_(
    images: torch.Tensor,
    canvas: torch.Tensor,
    rows: torch.Tensor,
    origin_y: torch.Tensor,
    origin_x: torch.Tensor,
    where: torch.Tensor | None = None,
    pick: torch.Tensor | None = None,
) -> None:
    """Write canvases (``images``' dtype) into contiguous ``images (B, C, H, W)`` in place, in order: write
    ``n`` puts canvas ``pick[n]`` (``n`` without ``pick``) of ``canvas (M, C, Hc, Wc)`` into image
    ``rows[n]`` at ``(origin_y[n], origin_x[n])``; pixels outside the image are dropped; ``where``
    ``(M, 1, Hc, Wc)`` bool: only those pixels (``where[pick[n]]`` for write ``n``)."""
    lib = _library()
    count = origin_y.shape[0]
    if count == 0:
        return
    canvas = canvas.contiguous()
    where = None if where is None else where.contiguous()
    index = [t.to(torch.int64).contiguous() for t in (rows, origin_y, origin_x)]
    pick = None if pick is None else pick.to(torch.int64).contiguous()
    lib.cai_paste(
        count, images.shape[1], images.shape[-2], images.shape[-1], images.element_size(), images.data_ptr(),
        canvas.data_ptr(), *(t.data_ptr() for t in index), canvas.shape[-2], canvas.shape[-1],
        None if where is None else where.data_ptr(), None if pick is None else pick.data_ptr(),
    )  # fmt: skip
