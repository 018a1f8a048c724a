"""Throughput of the full CAI pipeline and of the Poisson solve, per backend, image size and batch size.

Usage::

    python benchmarks/throughput.py                 # everything this machine can run
    python benchmarks/throughput.py --quick         # CPU-sized: 256x256, batches 1 and 8 (3 repeats)
    python benchmarks/throughput.py --paths cupy torch-cuda --sizes 256 512 --batches 1 64 256

Paths: ``cupy`` (CuPy kernels on the GPU), ``torch-cuda`` (torch path on the same GPU), ``torch-cpu``
(torch path on the CPU, ``--threads`` threads) and ``opencv`` (``cv2.seamlessClone`` in a Python loop on
one CPU thread; Poisson only, it has no pipeline of its own). Poisson cases are star-shaped patterns in
the paper's 4:3:3 mix of large / medium / small (about 180 / 77 / 26 px at 256x256, scaled with the
image size). The pipeline is ``cai_aug.CAI(bank, ...)(images)`` on the demo bank and demo images
(or ``--bank``). Times are the best of ``--repeats`` runs after one warm-up; CUDA is synchronised
around each run. Prints a table and writes a plot of throughput against batch size.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from poisson_speed import MIX, SIZES, star_mask  # noqa: E402

from cai_aug.poisson.solver import poisson_blend  # noqa: E402

PATHS = ("cupy", "torch-cuda", "torch-cpu", "opencv")


def path_available(path: str) -> str | None:
    """None when the path can run here, else the reason it cannot."""
    if path in ("cupy", "torch-cuda") and not torch.cuda.is_available():
        return "no CUDA device"
    if path == "cupy":
        from cai_aug.poisson import cupy_backend as poisson_cupy

        if not poisson_cupy.available():
            return "cupy not installed"
    if path == "opencv":
        try:
            import cv2  # noqa: F401
        except ImportError:
            return "opencv not installed"
    return None


def poisson_cases(batch: int, size: int, seed: int = 0):
    """Targets, sources (uint8 HWC), masks and OpenCV centres for ``batch`` patterns of the 4:3:3 mix."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    target = np.empty((batch, size, size, 3), dtype=np.uint8)
    source = np.empty_like(target)
    masks, centres = [], []
    for i in range(batch):
        kind = MIX[i % len(MIX)]
        base = 0.5 + 0.25 * np.sin(6 * yy + i)[..., None] * np.array([1.0, 0.8, 0.6])
        target[i] = np.clip(255 * (base + 0.05 * rng.standard_normal((size, size, 3))), 0, 255)
        texture = 0.5 + 0.3 * np.cos(40 * xx + 25 * yy)[..., None] + 0.1 * rng.standard_normal((size, size, 3))
        source[i] = np.clip(255 * texture, 0, 255)
        m, c = star_mask(size, max(3, round(SIZES[kind] * size / 256)), rng)
        masks.append(m)
        centres.append(c)
    return target, source, np.stack(masks), centres


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, repeats: int, device: torch.device) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_poisson(path: str, size: int, batch: int, repeats: int) -> dict:
    target, source, masks, centres = poisson_cases(batch, size)
    if path == "opencv":
        import cv2

        cv2.setNumThreads(1)

        def run() -> None:
            for i in range(batch):
                # OpenCV 5 writes into the mask it is given: always a fresh copy
                m = masks[i].astype(np.uint8) * 255
                cv2.seamlessClone(source[i], target[i], m, centres[i], cv2.NORMAL_CLONE)

        run()
        seconds = _best(run, repeats, torch.device("cpu"))
        return dict(solves=batch / seconds, iters=float("nan"), resid=float("nan"))
    device = torch.device("cpu" if path == "torch-cpu" else "cuda")
    backend = "cupy" if path == "cupy" else "torch"
    t = torch.from_numpy(target).permute(0, 3, 1, 2).float().div_(255).to(device)
    s = torch.from_numpy(source).permute(0, 3, 1, 2).float().div_(255).to(device)
    m = torch.from_numpy(masks)[:, None].to(device)
    warm = min(batch, 4)
    poisson_blend(t[:warm], s[:warm], m[:warm], backend=backend)
    stats = {}

    def run() -> None:
        stats["s"] = poisson_blend(t, s, m, backend=backend, return_stats=True)[1]

    seconds = _best(run, repeats, device)
    st = stats["s"]
    peak = float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / batch / 2**20
    return dict(
        solves=batch / seconds,
        iters=float(st.iterations.double().mean()),
        resid=float(st.residual.max()),
        peak_mib=peak,
    )


def bench_pipeline(path: str, size: int, batch: int, repeats: int, bank, foreground: str) -> dict:
    import cai_aug
    from cai_aug.io.demo_data import demo_images

    device = torch.device("cpu" if path == "torch-cpu" else "cuda")
    backend = "cupy" if path == "cupy" else "torch"
    cai = cai_aug.CAI(bank, foreground=foreground, seed=0, device=device, backend=backend)
    images = demo_images(batch, size=size).to(device)
    cai(images[: min(batch, 4)])
    out = {}

    def run() -> None:
        out["r"] = cai(images)

    seconds = _best(run, repeats, device)
    return dict(images=batch / seconds, labels=float(out["r"].labels.float().mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--cpu-batches", nargs="+", type=int, default=None, help="batches for CPU paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--bank", type=Path, default=None, help="anomaly bank folder (default: demo bank)")
    parser.add_argument("--foreground", default="auto")
    parser.add_argument("--no-pipeline", action="store_true", help="time the Poisson solve only")
    parser.add_argument("--quick", action="store_true", help="256x256, batches 1 and 8")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("throughput.png"))
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.batches = [256], [1, 8]
    cpu_batches = args.cpu_batches or args.batches
    torch.set_num_threads(args.threads)

    bank = None
    if not args.no_pipeline:
        import cai_aug
        from cai_aug.io.demo_data import write_demo_bank

        folder = args.bank or write_demo_bank(Path(tempfile.mkdtemp(prefix="cai_bank_")))
        bank = cai_aug.AnomalyBank.from_folder(folder)

    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"GPU: {device_name}; torch {torch.__version__}; CPU threads (torch): {args.threads}")
    header = (
        f"{'path':<11} {'size':>5} {'batch':>5} {'poisson/s':>10} {'iters':>6} {'max resid':>10} "
        f"{'MiB/img':>8} {'pipeline img/s':>15}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for path in args.paths:
        reason = path_available(path)
        if reason:
            print(f"{path:<11} skipped: {reason}")
            continue
        batches = cpu_batches if path in ("torch-cpu", "opencv") else args.batches
        for size in args.sizes:
            for batch in batches:
                row = dict(path=path, size=size, batch=batch)
                row.update(bench_poisson(path, size, batch, args.repeats))
                if bank is not None and path != "opencv":
                    row.update(bench_pipeline(path, size, batch, args.repeats, bank, args.foreground))
                rows.append(row)
                pipe = f"{row['images']:>15.1f}" if "images" in row else f"{'-':>15}"
                peak = row.get("peak_mib", float("nan"))
                print(
                    f"{path:<11} {size:>5} {batch:>5} {row['solves']:>10.1f} {row['iters']:>6.1f} "
                    f"{row['resid']:>10.1e} {peak:>8.2f} {pipe}",
                    flush=True,
                )
    print_ratios(rows)
    if args.plot and rows:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")


PAPER_SECONDS_PER_IMAGE = 0.019  # CAI-N, one CPU process (the paper's speed figure)


def print_ratios(rows: list[dict]) -> None:
    """Ratios measured in this run: Poisson solves against the OpenCV loop on the same cases, and the
    full pipeline against the paper's 0.019 s per pseudo-anomaly image."""
    opencv = {(r["size"], r["batch"]): r["solves"] for r in rows if r["path"] == "opencv"}
    print(f"\n{'path':<11} {'size':>5} {'batch':>5} {'poisson / opencv':>17} {'s per image':>12} {'paper / ours':>13}")
    for r in rows:
        if r["path"] == "opencv":
            continue
        versus = r["solves"] / opencv[(r["size"], r["batch"])] if (r["size"], r["batch"]) in opencv else float("nan")
        seconds = 1.0 / r["images"] if r.get("images") else float("nan")
        print(
            f"{r['path']:<11} {r['size']:>5} {r['batch']:>5} {versus:>17.2f} {seconds:>12.4f} "
            f"{PAPER_SECONDS_PER_IMAGE / seconds:>13.2f}"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax, title in (("solves", axes[0], "Poisson solves / s"), ("images", axes[1], "pipeline images / s")):
        for (p, size), group in _groups(rows).items():
            pts = [(r["batch"], r[key]) for r in group if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{p} {size}px")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _groups(rows: list[dict]) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["path"], r["size"]), []).append(r)
    return groups


if __name__ == "__main__":
    main()
