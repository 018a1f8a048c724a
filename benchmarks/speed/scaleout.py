"""Offline synthesis throughput: the local engine against Ray Data with 1 and 2 CPU actors.

Usage::

    python benchmarks/scaleout.py                          # 8 and 24 images of 64x64, 2 anomalies each
    python benchmarks/scaleout.py --counts 16 64 --image-size 256 --per-image 10 --workers 1 2 4

Each configuration makes the same pseudo anomalies (same seed, same folder layout, same manifest) from
demo normal images into a fresh output folder (best of ``--repeats``), end to end: reading the
normals, Algorithm 1, writing PNGs and the manifest, and the preview. Ray runs use one local Ray
instance (started once, its start-up reported separately) with ``run_ray`` as ``cai-aug synth --engine
ray`` calls it, so every run pays its actors' start-up (process, imports, bank load).

Two image counts separate the fixed cost ``a`` (start-up) from the cost per image ``b`` (``t = a + b n``,
fitted through the two points): the overhead Ray adds per image is ``b_ray - b_local1``, its fixed
overhead ``a_ray - a_local1``, against the local engine run with one torch thread as the actors run
(an actor with fewer than 2 CPUs gets 1 thread). Also measured: the CPU cost of writing one pseudo
anomaly (image + mask PNG) at 256x256, work the actors do on their CPU share whatever device runs the
engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch


def make_data(root: Path, count: int, size: int) -> tuple[Path, Path]:
    from cai_aug.io.demo_data import write_demo_bank, write_demo_normals

    bank = root / "bank"
    if not bank.exists():
        write_demo_bank(bank, per_class=4)
    normal = write_demo_normals(root / f"normal_{count}", n=count, size=size, seed=1)
    return bank, normal


def synth_args(bank: Path, normal: Path, out: Path, per_image: int, workers: int | None, batch: int):
    from cai_aug.cli import build_parser

    argv = [
        "synth",
        "--normal",
        str(normal),
        "--bank",
        str(bank),
        "--out",
        str(out),
        "--per-image",
        str(per_image),
        "--seed",
        "0",
    ]
    if workers:
        argv += ["--engine", "ray", "--workers", str(workers), "--batch-size", str(batch)]
    return build_parser().parse_args(argv)


def run_local_timed(args, threads: int | None = None) -> float:
    from cai_aug.cli.synth import make_engine
    from cai_aug.frontends.offline import run_local

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        run_local(args.normal, make_engine(args), args.out, per_image=args.per_image, progress=False)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)


def run_ray_timed(args) -> float:
    from cai_aug.cli.synth import make_engine
    from cai_aug.frontends.ray import run_ray

    start = time.perf_counter()
    options = {"per_image": args.per_image, "workers": args.workers, "batch_size": args.batch_size}
    run_ray(args.normal, make_engine(args), args.out, progress=False, **options)
    return time.perf_counter() - start


def write_cost(size: int = 256, repeats: int = 20) -> float:
    """Seconds of CPU to write one pseudo anomaly (image + mask PNG, atomically) at ``size``."""
    from cai_aug.io.demo_data import demo_images
    from cai_aug.io.images import write_image, write_mask

    image = demo_images(1, size)[0]
    mask = torch.zeros(1, size, size)
    mask[:, size // 4 : size // 2, size // 3 : size // 2] = 1
    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        for i in range(repeats):
            write_image(Path(tmp) / f"{i}.png", image)
            write_mask(Path(tmp) / f"{i}_mask.png", mask)
        return (time.process_time() - start) / repeats


def fit(times: dict[int, float]) -> tuple[float, float]:
    """``(a, b)`` of ``t = a + b n`` through the first and last point."""
    (n1, t1), (n2, t2) = sorted(times.items())[0], sorted(times.items())[-1]
    b = (t2 - t1) / (n2 - n1)
    return t1 - b * n1, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs=2, default=(8, 24), help="two numbers of normal images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-image", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per configuration")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_TMPDIR", "/tmp")
    root = Path(tempfile.mkdtemp(prefix="cai_scaleout_"))
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}",
        "load_average_before": os.getloadavg(),
        "counts": list(args.counts),
        "image_size": args.image_size,
        "per_image": args.per_image,
        "batch_size": args.batch_size,
        "times": {},
    }
    try:
        data = {n: make_data(root, n, args.image_size) for n in args.counts}
        results["write_cost_256_s"] = write_cost()
        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        results["ray_init_s"] = time.perf_counter() - start
        # "local 1 thread" runs as a one-CPU actor does (torch threads = its whole CPUs): the difference
        # to "ray x1" is what Ray adds, not a change in threading.
        configs = [("local", None), ("local 1 thread", None)] + [(f"ray x{w}", w) for w in args.workers]
        # Round robin over the configurations, best of --repeats: on a shared machine the load changes
        # during the run, and the minimum is the least disturbed measurement of each.
        for repeat in range(args.repeats):
            for name, workers in configs:
                times = results["times"].setdefault(name, {})
                for n in args.counts:
                    bank, normal = data[n]
                    out = root / f"out_{name.replace(' ', '')}_{n}"
                    run_args = synth_args(bank, normal, out, args.per_image, workers, args.batch_size)
                    if workers is None:
                        took = run_local_timed(run_args, threads=1 if "1 thread" in name else None)
                    else:
                        took = run_ray_timed(run_args)
                    shutil.rmtree(out)
                    times[n] = min(times.get(n, float("inf")), took)
                    print(f"[{repeat}] {name:14s} {n:4d} images: {took:7.2f} s  ({n / took:.2f} images/s)", flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["load_average_after"] = os.getloadavg()

    n_max = max(args.counts)
    print(
        f"\nmachine: {results['machine']}; load average before/after: "
        f"{results['load_average_before'][0]:.1f} / {results['load_average_after'][0]:.1f}"
    )
    print(
        f"ray.init: {results['ray_init_s']:.1f} s; writing one pseudo anomaly (2 PNGs, 256x256): "
        f"{1000 * results['write_cost_256_s']:.1f} ms CPU"
    )
    header = (
        "| engine | images/s at {n} | fixed cost a (s) | per image b (s) | images/s from b | "
        "Ray overhead per image (b - b_local1, ms) | Ray fixed overhead (a - a_local1, s) |"
    )
    print(header.format(n=n_max))
    print("|---|---|---|---|---|---|---|")
    summary = {}
    a_one, b_one = fit(results["times"]["local 1 thread"])
    for name, times in results["times"].items():
        a, b = fit(times)
        # Ray against the local engine at the actor's thread count (1 thread: actors get < 2 CPUs here)
        overhead = "" if name.startswith("local") else f"{1000 * (b - b_one):+.0f}"
        fixed = "" if name.startswith("local") else f"{a - a_one:+.1f}"
        print(f"| {name} | {n_max / times[n_max]:.2f} | {a:.1f} | {b:.3f} | {1 / b:.2f} | {overhead} | {fixed} |")
        summary[name] = {"a": a, "b": b}
    results["fit"] = summary
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
