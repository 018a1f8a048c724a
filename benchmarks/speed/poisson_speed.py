"""CPU speed of the batched Poisson solver against OpenCV's seamlessClone looped over the same cases.

Usage::

    python benchmarks/speed/poisson_speed.py [--size 256] [--batch 10] [--repeats 3] [--plot PATH.png]

Cases are irregular star-shaped patterns of about 26, 77 and 180 px (small, medium and large defects)
and the paper's 4:3:3 mix (4 large, 3 medium, 3 small per 10 images). Each row times, on the same images and
masks and in the same run: ``cv2.seamlessClone`` on one thread in a Python loop, and ``poisson_blend``
on the whole batch with 1 and with 2 torch threads (exact: ``rtol=1e-4``), and with 1 thread in the
fast mode ``atol=1/255`` (largest error one grey level; ``fast err`` is its measured largest error
against the exact solve, in grey levels). Times are the best of ``--repeats`` runs, per image.

On the CPU ``poisson_blend`` runs the compiled solve of ``kernels/cpu_kernel.cpp`` when it
builds (``compiled: yes`` in the title); ``--torch-loop`` adds two columns with the torch CG loop it
replaces (``loop1``: exact, ``loopf``: fast, 1 thread), timed in the same run.

``--clock cpu`` times the one-thread columns (OpenCV, torch1, fast1) with this process's CPU time
instead of the wall clock: on a shared, loaded machine it is far steadier, and it is the same clock
for OpenCV and torch, so the ratios stay fair (the 2-thread column always uses the wall clock).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from cai_aug.poisson import cpu_kernel, poisson_blend

SIZES = {"small": 26, "medium": 77, "large": 180}
MIX = ("large",) * 4 + ("medium",) * 3 + ("small",) * 3


def star_mask(size: int, diameter: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """An irregular star-shaped pattern of about ``diameter`` px, placed away from the image border.

    Returns the ``(size, size)`` bool mask and its bbox centre ``(x, y)`` (OpenCV's ``p``).
    """
    r0 = diameter / 2.0
    phase = rng.uniform(0, 2 * math.pi, 2)
    margin = 2
    lo = int(math.ceil(r0 * 1.3)) + margin
    cy, cx = (rng.integers(lo, size - lo) if size - lo > lo else size // 2 for _ in range(2))
    yy, xx = np.mgrid[:size, :size]
    theta = np.arctan2(yy - cy, xx - cx)
    radius = r0 * (1 + 0.2 * np.sin(3 * theta + phase[0]) + 0.08 * np.sin(7 * theta + phase[1]))
    mask = np.hypot(yy - cy, xx - cx) <= radius
    # seamlessClone needs the mask away from the image border: leave a 2-px frame
    mask[:margin] = mask[-margin:] = False
    mask[:, :margin] = mask[:, -margin:] = False
    ys, xs = np.nonzero(mask)
    centre = ((xs.min() + xs.max() + 1) // 2, (ys.min() + ys.max() + 1) // 2)
    return mask, centre


def make_cases(kinds: tuple[str, ...], size: int, seed: int):
    rng = np.random.default_rng(seed)
    n = len(kinds)
    yy, xx = np.mgrid[:size, :size] / size
    target = np.empty((n, size, size, 3), dtype=np.uint8)
    source = np.empty_like(target)
    masks, centres = [], []
    for i, kind in enumerate(kinds):
        base = 0.5 + 0.25 * np.sin(6 * yy + i)[..., None] * np.array([1.0, 0.8, 0.6])
        target[i] = np.clip(255 * (base + 0.05 * rng.standard_normal((size, size, 3))), 0, 255)
        texture = 0.5 + 0.3 * np.cos(40 * xx + 25 * yy)[..., None] + 0.1 * rng.standard_normal((size, size, 3))
        source[i] = np.clip(255 * texture, 0, 255)
        m, c = star_mask(size, SIZES[kind], rng)
        masks.append(m)
        centres.append(c)
    return target, source, np.stack(masks), centres


CLOCK = time.perf_counter


def time_opencv(target, source, masks, centres, mode: str, repeats: int) -> float:
    import cv2

    cv2.setNumThreads(1)
    flag = cv2.NORMAL_CLONE if mode == "normal" else cv2.MIXED_CLONE
    best = math.inf
    for _ in range(repeats):
        t0 = CLOCK()
        for i in range(len(target)):
            # OpenCV 5 writes into the mask it is given: pass a fresh copy each call
            m = masks[i].astype(np.uint8) * 255
            cv2.seamlessClone(source[i], target[i], m.copy(), centres[i], flag)
        best = min(best, CLOCK() - t0)
    return best / len(target)


def time_torch(
    target, source, masks, mode: str, repeats: int, threads: int, atol: float | None = None, loop: bool = False
):
    """Seconds per image (best of ``repeats``), the stats and the output of ``poisson_blend``.

    ``loop``: the torch CG loop instead of the compiled CPU solve.
    """
    cpu_kernel.USE = not loop
    torch.set_num_threads(threads)
    t = torch.from_numpy(target).permute(0, 3, 1, 2).float().div_(255)
    s = torch.from_numpy(source).permute(0, 3, 1, 2).float().div_(255)
    m = torch.from_numpy(masks)[:, None]
    clock = CLOCK if threads == 1 else time.perf_counter
    best, stats, out = math.inf, None, None
    for _ in range(repeats):
        t0 = clock()
        out, stats = poisson_blend(t, s, m, mode, atol=atol, return_stats=True)
        best = min(best, clock() - t0)
    cpu_kernel.USE = True
    return best / len(target), stats, out


def shape_gallery(size: int) -> dict[str, np.ndarray]:
    """Regions of every kind: discs of growing diameter, a ring, blobs, border, corner, lines, noise."""
    yy, xx = np.mgrid[:size, :size]
    c = size // 2

    def disc(cy: float, cx: float, r: float) -> np.ndarray:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    shapes = {f"disc {d}px": disc(c, c, d / 2) for d in (5, 26, 77, 180, 200, 240) if d < size}
    shapes["ring 180/80px"] = disc(c, c, 90 * size / 256) & ~disc(c, c, 40 * size / 256)
    shapes["two blobs"] = disc(size * 0.25, size * 0.25, size * 0.08) | disc(size * 0.7, size * 0.75, size * 0.14)
    shapes["border half-disc"] = disc(0, c, size * 0.2)
    shapes["corner quarter-disc"] = disc(size - 1, size - 1, size * 0.3)
    cross = np.zeros((size, size), dtype=bool)
    cross[size // 10 : size - size // 10, c] = True
    cross[c, size // 20 : size - size // 20] = True
    shapes["1-px cross"] = cross
    shapes["random 50% pixels"] = np.random.default_rng(0).random((size, size)) < 0.5
    return shapes


def iteration_table(size: int) -> None:
    """PCG iterations and residual reached per region shape (normal mode, 3 channels, rtol 1e-4)."""
    rng = np.random.default_rng(1)
    print(f"PCG iterations to rtol 1e-4 by region shape, {size}x{size}, 3 channels")
    print(f"{'region':<22} {'pixels':>7} {'iters':>6} {'residual':>9}")
    for name, mask in shape_gallery(size).items():
        t = torch.from_numpy(rng.random((1, 3, size, size))).float()
        s = torch.from_numpy(rng.random((1, 3, size, size))).float()
        _, st = poisson_blend(t, s, torch.from_numpy(mask)[None, None], return_stats=True)
        print(f"{name:<22} {int(mask.sum()):>7} {int(st.iterations[0]):>6} {float(st.residual[0]):>9.1e}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=10, help="images per row (the mix repeats 4:3:3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["normal", "mixed"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-iterations", action="store_true", help="skip the iterations-by-shape table")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("poisson_speed.png"))
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="clock of the 1-thread columns")
    parser.add_argument("--torch-loop", action="store_true", help="also time the torch CG loop (1 thread)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    if not args.no_iterations:
        iteration_table(args.size)
    rows = []
    header = (
        f"{'case':<8} {'mode':<6} {'B':>3} {'opencv ms':>10} {'torch1 ms':>10} {'torch2 ms':>10} "
        f"{'cv/t1':>6} {'cv/t2':>6} {'iters mean/max':>15} {'max resid':>10} {'fast1 ms':>9} {'cv/f1':>6} "
        f"{'fast iters':>10} {'fast err':>9}" + (f" {'loop1 ms':>9} {'loopf ms':>9}" if args.torch_loop else "")
    )
    print(
        f"poisson_blend vs cv2.seamlessClone, {args.size}x{args.size}, times per image (best of {args.repeats}, "
        f"{args.clock} clock, compiled: {'yes' if cpu_kernel.available() else 'no'})"
    )
    print(header)
    print("-" * len(header))
    for case in ("small", "medium", "large", "mix"):
        kinds = tuple(MIX[i % len(MIX)] for i in range(args.batch)) if case == "mix" else (case,) * args.batch
        target, source, masks, centres = make_cases(kinds, args.size, args.seed)
        for mode in args.modes:
            cv_ms = 1e3 * time_opencv(target, source, masks, centres, mode, args.repeats)
            t1, _, exact = time_torch(target, source, masks, mode, args.repeats, threads=1)
            t2, stats, _ = time_torch(target, source, masks, mode, args.repeats, threads=2)
            f1, fast_stats, fast = time_torch(target, source, masks, mode, args.repeats, threads=1, atol=1 / 255)
            if args.torch_loop:
                loop1 = 1e3 * time_torch(target, source, masks, mode, args.repeats, threads=1, loop=True)[0]
                loopf = 1e3 * time_torch(target, source, masks, mode, args.repeats, 1, 1 / 255, loop=True)[0]
            it = stats.iterations.double()
            row = dict(
                case=case, mode=mode, batch=len(kinds), opencv=cv_ms, torch1=1e3 * t1, torch2=1e3 * t2,
                it_mean=float(it.mean()), it_max=int(it.max()), resid=float(stats.residual.max()),
                fast1=1e3 * f1, fast_it=float(fast_stats.iterations.double().mean()),
                fast_err=255 * float((fast - exact).abs().max()),
            )  # fmt: skip
            rows.append(row)
            print(
                f"{case:<8} {mode:<6} {row['batch']:>3} {cv_ms:>10.2f} {row['torch1']:>10.2f} "
                f"{row['torch2']:>10.2f} {cv_ms / row['torch1']:>6.2f} {cv_ms / row['torch2']:>6.2f} "
                f"{row['it_mean']:>7.1f}/{row['it_max']:<7d} {row['resid']:>10.1e} {row['fast1']:>9.2f} "
                f"{cv_ms / row['fast1']:>6.2f} {row['fast_it']:>10.1f} {row['fast_err']:>9.2f}"
                + (f" {loop1:>9.2f} {loopf:>9.2f}" if args.torch_loop else ""),
                flush=True,
            )
    torch.set_num_threads(2)
    if args.plot:
        plot(rows, args.plot, args.size)
        print(f"plot: {args.plot}")


def plot(rows: list[dict], path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['case']}\n{r['mode']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    for k, (key, name) in enumerate(
        [("opencv", "cv2.seamlessClone (1 thread)"), ("torch1", "poisson_blend (1 thread)"),
         ("torch2", "poisson_blend (2 threads)"), ("fast1", "poisson_blend atol=1/255 (1 thread)")]
    ):  # fmt: skip
        ax.bar(x + (k - 1.5) * 0.2, [r[key] for r in rows], width=0.2, label=name)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per image")
    ax.set_title(f"Poisson blending at {size}x{size}, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
