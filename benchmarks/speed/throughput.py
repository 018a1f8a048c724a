"""Throughput of the full CAI pipeline and of the Poisson solve, per backend, image size and batch size.

Usage::

    python benchmarks/speed/throughput.py                 # everything this machine can run
    python benchmarks/speed/throughput.py --quick         # CPU-sized: 256x256, batches 1 and 8 (3 repeats)
    python benchmarks/speed/throughput.py --paths cupy torch-cuda --sizes 256 512 --batches 1 64 256
    python benchmarks/speed/throughput.py --cpu-batches 1 8 --threads 1 --budget-s 150 --json out.json

Paths: ``cupy`` (CuPy kernels on the GPU), ``torch-cuda`` (torch path on the same GPU), ``torch-cpu``
(torch path on the CPU, ``--threads`` threads) and ``opencv`` (``cv2.seamlessClone`` in a Python loop on
one CPU thread; Poisson only, it has no pipeline of its own). Poisson cases are star-shaped patterns in
the paper's 4:3:3 mix of large / medium / small (about 180 / 77 / 26 px at 256x256, scaled with the
image size). The pipeline is ``cai_aug.CAI(bank, ...)(images)`` on the demo bank and demo images (or
``--bank``) in the default configuration (three anomalies per image, what a user meets), and beside it
with ``anomalies=1`` (one pseudo anomaly per image, as ``seamlessClone`` makes one blend).
Times are the best of ``--repeats`` runs after one warm-up; CUDA is synchronised
around each run. Prints a table and writes a plot of throughput against batch size; ``--json`` writes
the rows and the device figures. Cases run size by size (all paths at 256 before any at 512);
``--budget-s`` stops starting new cases once that many seconds have passed.

On a CUDA device the table also shows the device's two floors for each GPU row, from the ceilings
measured in the same run (a large device-to-device copy for the bandwidth, counting bytes read and
written; a float32 matrix product without TF32 for the CUDA-core rate): the fewest bytes a solve must
move (``BYTES_PER_UNKNOWN`` per canvas pixel, channel and PCG iteration, times the measured iterations,
over each pattern's bounding box plus one pixel) over the bandwidth, and its float32 operations
(``FLOPS_PER_UNKNOWN``) over the rate. The pipeline floor adds reading the image and writing the image
and mask once. ``x floor`` is the measured time per image over the larger floor: how far from the limit.
Peak memory per image is ``torch.cuda.max_memory_allocated`` above the baseline, over the batch.
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

from cai_aug.poisson import poisson_blend  # noqa: E402

PATHS = ("cupy", "torch-cuda", "torch-cpu", "opencv")
GPU_PATHS = ("cupy", "torch-cuda")

# Traffic and work of one PCG iteration per canvas pixel and channel on the CuPy path (float32), counted
# from its fused kernels (cupy_backend.py): A p with <p, q> (2 values), the x/r update with <r, r> (6),
# the V-cycle on the fine level (4 colour sweeps x 3, residual + restriction 2.25, prolongation 2.25)
# times 4/3 for the coarse levels (22), <r, z> (2) and the new direction (3): 35 values, plus the
# operator's weights (east, south, diagonal, inverse: 19 reads per sample and iteration, x 4/3, shared
# by 3 channels: 8.4). Operations: stencil and dot 12, update 6, V-cycle 33 x 4/3 = 44, dot and
# direction 4. Lower bounds: the solver pads canvases to a few bucket sizes and keeps coarse levels.
BYTES_PER_UNKNOWN = 4 * 43.4
FLOPS_PER_UNKNOWN = 66.0
# the speed figures a user would otherwise have
PAPER_SECONDS_PER_IMAGE = 0.019  # CAI-N, one CPU process (the paper's speed figure)
FPIE_SECONDS_256 = 0.027  # Fast-Poisson-Image-Editing, one 256x256 image on an RTX 2080 (its README)


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


def canvas_pixels(masks: np.ndarray | torch.Tensor) -> float:
    """Mean over the batch of each mask's bounding box plus one pixel (clipped): the solver's unknowns."""
    m = torch.as_tensor(masks).bool().reshape(len(masks), *masks.shape[-2:])
    h, w = m.shape[-2:]
    total = 0
    for one in m:
        rows, cols = one.any(1).nonzero(), one.any(0).nonzero()
        if len(rows) == 0:
            continue
        y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 1, h - 1)
        x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 1, w - 1)
        total += (y1 - y0 + 1) * (x1 - x0 + 1)
    return total / max(len(m), 1)


def device_ceilings(device: torch.device, elements: int = 2**28, n: int = 8192) -> dict:
    """Measured bandwidth (device-to-device copy of ``elements`` float32, 1 GiB, counting bytes read and
    written) and float32 rate (an ``n``-cubed matrix product without TF32), each the best of 5 after a
    warm-up."""
    src = torch.rand(elements, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s = _best(lambda: dst.copy_(src), 5, device)
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        torch.mm(a, b)
        mm_s = _best(lambda: torch.mm(a, b), 5, device)
    finally:
        matmul.allow_tf32 = previous
    return dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        bandwidth_gbs=2 * elements * 4 / copy_s / 1e9,
        fp32_tflops=2 * n**3 / mm_s / 1e12,
    )


def add_floors(row: dict, size: int, ceilings: dict | None, channels: int = 3) -> None:
    """Memory and compute floors (seconds per image) of the solve and the pipeline, and the gap."""
    if not ceilings or row["path"] not in GPU_PATHS or not math.isfinite(row.get("iters", float("nan"))):
        return
    unknowns = row["canvas_px"] * channels * row["iters"]
    bandwidth, rate = ceilings["bandwidth_gbs"] * 1e9, ceilings["fp32_tflops"] * 1e12
    solve_floor = max(unknowns * BYTES_PER_UNKNOWN / bandwidth, unknowns * FLOPS_PER_UNKNOWN / rate)
    row["poisson_mem_floor_us"] = 1e6 * unknowns * BYTES_PER_UNKNOWN / bandwidth
    row["poisson_flop_floor_us"] = 1e6 * unknowns * FLOPS_PER_UNKNOWN / rate
    row["poisson_floor_x"] = (1.0 / row["solves"]) / solve_floor
    if "images" in row:
        io_bytes = 4 * size * size * (2 * channels + 1)  # image in, image and mask out, float32
        pipe_floor = solve_floor + io_bytes / bandwidth
        row["pipeline_floor_us"] = 1e6 * pipe_floor
        row["pipeline_floor_x"] = (1.0 / row["images"]) / pipe_floor


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
        return dict(solves=batch / seconds, iters=float("nan"), resid=float("nan"), canvas_px=canvas_pixels(masks))
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
        canvas_px=canvas_pixels(masks),
    )


def bench_pipeline(path: str, size: int, batch: int, repeats: int, bank, foreground: str) -> dict:
    """Pipeline images/s in the default configuration (``images``) and with one anomaly per image
    (``images_one``); ``anomalies``: the default's anomalies per image."""
    import cai_aug
    from cai_aug.io.demo_data import demo_images

    device = torch.device("cpu" if path == "torch-cpu" else "cuda")
    backend = "cupy" if path == "cupy" else "torch"
    images = demo_images(batch, size=size).to(device)
    result: dict = {}
    for name, anomalies in (("images", None), ("images_one", 1)):
        options = {} if anomalies is None else {"anomalies": anomalies}
        cai = cai_aug.CAI(bank, foreground=foreground, seed=0, device=device, backend=backend, **options)
        cai(images[: min(batch, 4)])
        out = {}

        def run(cai=cai, out=out) -> None:
            out["r"] = cai(images)

        seconds = _best(run, repeats, device)
        result[name] = batch / seconds
        if anomalies is None:
            result["anomalies"] = cai.config.anomalies
            result["labels"] = float(out["r"].labels.float().mean())
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                run()
                _sync(device)
                result["pipeline_peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / batch / 2**20
    return result


def default_ratios(bank, size: int, batch: int, rounds: int, foreground: str) -> dict:
    """The default configuration against ``cv2.seamlessClone`` in this process, one CPU thread: medians
    over ``rounds`` interleaved rounds (module docstring). Times in seconds per image / per call."""
    import statistics

    import cv2

    import cai_aug
    from cai_aug.io.demo_data import demo_images

    cv2.setNumThreads(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        target, source, masks, centres = poisson_cases(batch, size)
        cv_masks = [m.astype(np.uint8) * 255 for m in masks]

        def opencv() -> None:
            for i in range(batch):
                # OpenCV 5 writes into the mask it is given: always a fresh copy
                cv2.seamlessClone(source[i], target[i], cv_masks[i].copy(), centres[i], cv2.NORMAL_CLONE)

        images = demo_images(batch, size=size)
        default = cai_aug.CAI(bank, foreground=foreground, seed=0, device="cpu")
        one = cai_aug.CAI(bank, foreground=foreground, seed=0, device="cpu", anomalies=1)
        engines = {"default": default, "one": one}
        for fn in (opencv, lambda: default(images), lambda: one(images)):
            fn()  # warm-up: the compiled kernel, caches

        def per_image(fn) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) / batch

        samples: dict[str, list[float]] = {"opencv": [], "default": [], "one": []}
        for _ in range(rounds):
            first = per_image(opencv)
            times = {name: per_image(lambda e=engine: e(images)) for name, engine in engines.items()}
            samples["opencv"].append(min(first, per_image(opencv)))
            for name, seconds in times.items():
                samples[name].append(seconds)
        k = default.config.anomalies
        ratio = {
            "image": [d / c for d, c in zip(samples["default"], samples["opencv"])],
            "injection": [d / k / c for d, c in zip(samples["default"], samples["opencv"])],
            "one": [o / c for o, c in zip(samples["one"], samples["opencv"])],
        }
        median = statistics.median
        return dict(
            size=size,
            batch=batch,
            rounds=rounds,
            anomalies=k,
            opencv_s=median(samples["opencv"]),
            image_s=median(samples["default"]),
            injection_s=median(samples["default"]) / k,
            one_s=median(samples["one"]),
            image_x_opencv=median(ratio["image"]),
            injection_x_opencv=median(ratio["injection"]),
            one_x_opencv=median(ratio["one"]),
            image_x_paper=median(samples["default"]) / PAPER_SECONDS_PER_IMAGE,
            injection_x_paper=median(samples["default"]) / k / PAPER_SECONDS_PER_IMAGE,
            one_x_paper=median(samples["one"]) / PAPER_SECONDS_PER_IMAGE,
            opencv_spread_s=(min(samples["opencv"]), max(samples["opencv"])),
        )
    finally:
        torch.set_num_threads(threads)


def print_default_ratios(r: dict) -> None:
    print(
        f"default configuration ({r['anomalies']} anomalies per image), {r['size']}x{r['size']}, batch {r['batch']}, "
        f"one CPU thread, median of {r['rounds']} interleaved rounds; one seamlessClone = {1e3 * r['opencv_s']:.2f} ms "
        f"(4:3:3 mix; {1e3 * r['opencv_spread_s'][0]:.2f} to {1e3 * r['opencv_spread_s'][1]:.2f} ms over the rounds)"
    )
    print(f"{'':<24} {'ms':>8} {'x seamlessClone':>16} {'x paper 19 ms':>14}")
    lines = (("per image (default)", "image"), ("per injection", "injection"), ("one anomaly per image", "one"))
    for label, key in lines:
        print(f"{label:<24} {1e3 * r[key + '_s']:>8.2f} {r[key + '_x_opencv']:>16.2f} {r[key + '_x_paper']:>14.2f}")
    print()


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
    parser.add_argument("--budget-s", type=float, default=None, help="start no new case after this many seconds")
    parser.add_argument("--no-floors", action="store_true", help="skip measuring the GPU's bandwidth and rate")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and device figures here")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("throughput.png"))
    parser.add_argument("--ratio-size", type=int, default=256, help="image side of the default-vs-OpenCV timing")
    parser.add_argument("--ratio-batch", type=int, default=8, help="images per round of that timing")
    parser.add_argument("--ratio-rounds", type=int, default=7, help="interleaved rounds (0: skip it)")
    args = parser.parse_args()
    start = time.perf_counter()
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
    ceilings = None
    if torch.cuda.is_available() and not args.no_floors and any(p in GPU_PATHS for p in args.paths):
        try:
            ceilings = device_ceilings(torch.device("cuda"))
            print(
                f"measured ceilings: {ceilings['bandwidth_gbs']:.0f} GB/s device-to-device (read + write), "
                f"{ceilings['fp32_tflops']:.1f} TFLOP/s float32 without TF32"
            )
        except Exception as exc:  # noqa: BLE001 - the rows matter more than the floors
            print(f"measuring the device's ceilings FAILED ({type(exc).__name__}: {exc}); no floors")
        torch.cuda.empty_cache()
    meta = dict(device=device_name, torch=torch.__version__, threads=args.threads, ceilings=ceilings, argv=sys.argv)
    if (
        bank is not None
        and args.ratio_rounds > 0
        and "torch-cpu" in args.paths
        and "opencv" in args.paths
        and not path_available("opencv")
    ):
        meta["default_vs_opencv"] = default_ratios(
            bank, args.ratio_size, args.ratio_batch, args.ratio_rounds, args.foreground
        )
        print_default_ratios(meta["default_vs_opencv"])
        if args.json:
            write_json(args.json, meta, [], [])
    header = (
        f"{'path':<11} {'size':>5} {'batch':>5} {'poisson/s':>10} {'iters':>6} {'max resid':>10} "
        f"{'MiB/img':>8} {'pipeline img/s':>15} {'1-anomaly img/s':>15} {'pipe MiB/img':>12} {'floor us/img':>12} "
        f"{'x floor':>8}"
    )
    print(header)
    print("-" * len(header))
    rows: list[dict] = []
    skipped: list[dict] = []
    available = {}
    for path in args.paths:
        available[path] = path_available(path)
        if available[path]:
            print(f"{path:<11} skipped: {available[path]}")
    for size in args.sizes:
        for path in args.paths:
            if available[path]:
                continue
            for batch in cpu_batches if path in ("torch-cpu", "opencv") else args.batches:
                if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                    print(f"{path:<11} {size:>5} {batch:>5} skipped: past the {args.budget_s:.0f} s budget", flush=True)
                    skipped.append(dict(path=path, size=size, batch=batch, reason="budget"))
                    continue
                row = dict(path=path, size=size, batch=batch)
                try:
                    row.update(bench_poisson(path, size, batch, args.repeats))
                    if bank is not None and path != "opencv":
                        row.update(bench_pipeline(path, size, batch, args.repeats, bank, args.foreground))
                except Exception as exc:  # noqa: BLE001 - one failing case must not lose the others
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    print(f"{path:<11} {size:>5} {batch:>5} FAILED: {row['error'][:300]}", flush=True)
                    skipped.append(row)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                add_floors(row, size, ceilings)
                rows.append(row)
                print(format_row(row), flush=True)
                if args.json:
                    write_json(args.json, meta, rows, skipped)
    print_ratios(rows)
    if args.json:
        write_json(args.json, meta, rows, skipped)
        print(f"json: {args.json}")
    if args.plot and rows:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    if any("error" in r for r in skipped):
        sys.exit(1)


def format_row(row: dict) -> str:
    nan = float("nan")
    pipe = f"{row['images']:>15.1f}" if "images" in row else f"{'-':>15}"
    pipe += f" {row['images_one']:>15.1f}" if "images_one" in row else f" {'-':>15}"
    floor_us = row.get("pipeline_floor_us", row.get("poisson_mem_floor_us"))
    gap = row.get("pipeline_floor_x", row.get("poisson_floor_x"))
    return (
        f"{row['path']:<11} {row['size']:>5} {row['batch']:>5} {row['solves']:>10.1f} {row['iters']:>6.1f} "
        f"{row['resid']:>10.1e} {row.get('peak_mib', nan):>8.2f} {pipe} {row.get('pipeline_peak_mib', nan):>12.2f} "
        + (f"{floor_us:>12.2f} {gap:>8.1f}" if floor_us is not None else f"{'-':>12} {'-':>8}")
    )


def write_json(path: Path, meta: dict, rows: list[dict], skipped: list[dict]) -> None:
    import json

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    data = dict(meta, rows=[{k: clean(v) for k, v in r.items()} for r in rows], skipped=skipped)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def print_ratios(rows: list[dict]) -> None:
    """Ratios measured in this run, as time multiples (below 1: faster): the default pipeline per image
    and per injection (the image over its anomalies) and the one-anomaly pipeline per image, against one
    ``seamlessClone`` call on the same size (OpenCV's row of the same batch, else its largest batch at that
    size) and against the paper's 0.019 s per pseudo-anomaly image; also the Poisson solve's speed against
    OpenCV's and the solve against Fast-Poisson-Image-Editing's 27 ms per 256x256 image (an RTX 2080; its
    own figure, not measured here)."""
    opencv = {(r["size"], r["batch"]): r["solves"] for r in rows if r["path"] == "opencv"}
    opencv_size = {}
    for r in sorted((r for r in rows if r["path"] == "opencv"), key=lambda r: r["batch"]):
        opencv_size[r["size"]] = r["solves"]
    nan = float("nan")
    print(
        f"\n{'path':<11} {'size':>5} {'batch':>5} {'image ms':>9} {'x cv':>6} {'inject x cv':>12} {'1-anom x cv':>12} "
        f"{'image x paper':>14} {'poisson speed / cv':>19} {'FPIE / ours':>12}"
    )
    for r in rows:
        if r["path"] == "opencv":
            continue
        cv = opencv.get((r["size"], r["batch"]), opencv_size.get(r["size"]))
        cv_s = 1.0 / cv if cv else nan
        image_s = 1.0 / r["images"] if r.get("images") else nan
        one_s = 1.0 / r["images_one"] if r.get("images_one") else nan
        k = r.get("anomalies", 1)
        fpie = FPIE_SECONDS_256 * r["solves"] if r["size"] == 256 else nan
        r["ratio_opencv"] = r["solves"] / cv if cv else nan
        r["image_x_opencv"], r["injection_x_opencv"] = image_s / cv_s, image_s / k / cv_s
        r["one_x_opencv"] = one_s / cv_s
        r["image_x_paper"], r["ratio_fpie"] = image_s / PAPER_SECONDS_PER_IMAGE, fpie
        print(
            f"{r['path']:<11} {r['size']:>5} {r['batch']:>5} {1e3 * image_s:>9.2f} {r['image_x_opencv']:>6.2f} "
            f"{r['injection_x_opencv']:>12.2f} {r['one_x_opencv']:>12.2f} {r['image_x_paper']:>14.2f} "
            f"{r['ratio_opencv']:>19.2f} {fpie:>12.1f}"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (("solves", axes[0], "Poisson solves / s"), ("images", axes[1], "pipeline images / s"))
    for key, ax, title in panels:
        for (p, size), group in _groups(rows).items():
            pts = [(r["batch"], r[key]) for r in group if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{p} {size}px" + (" default" if key == "images" else ""))
            one = [(r["batch"], r["images_one"]) for r in group if key == "images" and "images_one" in r]
            if one:
                ax.plot(*zip(*one), marker="x", linestyle="--", label=f"{p} {size}px 1 anomaly")
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
