"""Share of the pseudo-anomaly augmentation in a DRAEM training step (target: < 5%).

Usage::

    python benchmarks/speed/step_share.py --device cuda --batches 8 32 --size 256 --anomalib-steps 3
    python benchmarks/speed/step_share.py --device cpu --size 64 --batches 2 --width 8 --rec-width 8  # a try

For each batch size, on one device and the same 256x256 images:

- ``augment``: ``CAIAugment(bank, p=0.5)`` on the batch (the CAI engine with its Poisson blending, what a
  training loop calls per batch; DRAEM's own generator uses probability 0.5 as well);
- ``step``: one DRAEM training step: the reconstructive sub-network (an encoder-decoder of base width
  128, as in DRAEM) and the discriminative UNet of the detector harness (``benchmarks/detector/unet.py``,
  base width 64, 6 input channels: image and reconstruction), forward, DRAEM's loss (L2 + SSIM on the
  reconstruction, focal loss on the prediction), backward and an Adam step;
- ``share = augment / (augment + step)``: the part of a training iteration the augmentation takes when
  it runs in the loop, on the same device, without overlap.

Times are medians of ``--repeats`` runs after ``--warmup`` runs, the device synchronised around each.

``--anomalib-steps N`` then runs N real ``anomalib.models.Draem.training_step`` calls with
``CAIAnomalyGenerator`` as ``model.augmenter`` (anomalib's model, loss and optimiser settings), times them
and the augmenter alone, and reports the share the same way. anomalib imports natively where torchvision
matches torch (the GPU machine); where PyPI's CUDA torchvision sits on a CPU torch, the two operator
schemas its import needs (``torchvision::nms`` and ``qnms``, see ``benchmarks/torchvision_cpu.py``) are
defined first, only when torchvision's own ops are absent.

``--engine-steps`` first profiles the engine itself in its default configuration (``CAI(bank)(images)``
on ``--engine-batch`` demo images, one thread, ``--repeats`` calls after a warm-up): the share of each
step in the call's time, from timers around the engine's own functions (foreground; STM/MAS matching;
ILS placement; resampling the sources; the rest of the injection (canvases, Omega, foreground filter);
the Poisson solve; the difference mask; writing canvases back; the rest, bookkeeping).

``--json PATH`` writes every figure; ``--budget-s`` stops starting new measurements after that many seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.detector.losses import focal_loss  # noqa: E402
from benchmarks.detector.unet import DiscriminativeUNet, conv_block  # noqa: E402
from benchmarks.torchvision_cpu import torchvision_recipe  # noqa: E402

TARGET_SHARE = 0.05


# ---------------------------------------------------------------------------------------------- model


class ReconstructiveNetwork(nn.Module):
    """DRAEM's reconstructive sub-network: an encoder of five blocks (widths w, 2w, 4w, 8w, 8w, max-pooling
    between them) and a decoder that upsamples back through blocks of widths 8w, 4w, 2w, w without skip
    connections, then a 3x3 conv to the image's channels (DRAEM: w = 128)."""

    def __init__(self, channels: int = 3, width: int = 128) -> None:
        super().__init__()
        w = width
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList()
        cin = channels
        for cout in widths:
            self.encoder.append(conv_block(cin, cout))
            cin = cout
        self.decoder = nn.ModuleList()
        for cout in (8 * w, 4 * w, 2 * w, w):
            self.decoder.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                    nn.Conv2d(cin, cout, 3, padding=1),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                    conv_block(cout, cout if cout == w else cout // 2, mid=cout),
                )
            )
            cin = cout if cout == w else cout // 2
        self.head = nn.Conv2d(cin, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.encoder):
            x = block(F.max_pool2d(x, 2) if i else x)
        for up in self.decoder:
            x = up(x)
        return self.head(x)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM with a Gaussian window (per channel), images in [0, 1]."""
    c = a.shape[1]
    x = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum())[:, None] * (g / g.sum())[None, :]
    kernel = g.expand(c, 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=window // 2, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean()


class Draem(nn.Module):
    """Reconstructive + discriminative sub-networks and DRAEM's loss."""

    def __init__(self, width: int = 64, rec_width: int = 128) -> None:
        super().__init__()
        self.reconstructive = ReconstructiveNetwork(3, rec_width)
        self.discriminative = DiscriminativeUNet(in_channels=6, out_channels=2, width=width)

    def loss(self, clean: torch.Tensor, augmented: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        reconstruction = self.reconstructive(augmented)
        logits = self.discriminative(torch.cat([augmented, reconstruction], dim=1))
        l2 = F.mse_loss(reconstruction, clean)
        structural = 1 - ssim(reconstruction, clean)
        return l2 + 2 * structural + focal_loss(logits, masks)


# --------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_share(
    device: torch.device, batch: int, size: int, bank, width: int, rec_width: int, repeats: int, warmup: int
) -> dict:
    from cai_aug import CAIAugment
    from cai_aug.io.demo_data import demo_images

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = demo_images(batch, size=size).to(device)
    augment = CAIAugment(bank, p=0.5, seed=0)
    model = Draem(width, rec_width).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    augmented, masks, _ = augment(images)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        model.loss(images, augmented, masks).backward()
        optimiser.step()

    aug_s = median_seconds(lambda: augment(images), device, repeats, warmup)
    step_s = median_seconds(step, device, repeats, warmup)
    peak = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    return dict(
        batch=batch,
        size=size,
        augment_ms=1e3 * aug_s,
        step_ms=1e3 * step_s,
        share=aug_s / (aug_s + step_s),
        augment_images_per_s=batch / aug_s,
        peak_gib=peak,
    )


# ------------------------------------------------------------------------------------------- anomalib


def measure_anomalib(device: torch.device, steps: int, batch: int, size: int, bank_dir: Path) -> dict:
    """``steps`` real anomalib ``Draem.training_step`` calls with ``CAIAnomalyGenerator`` as augmenter."""
    import warnings

    recipe = torchvision_recipe()
    from anomalib.data import ImageBatch
    from anomalib.models import Draem as AnomalibDraem

    from cai_aug import CAIAnomalyGenerator
    from cai_aug.io.demo_data import demo_images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        model = AnomalibDraem(dtd_dir=bank_dir)  # an existing folder: nothing is downloaded
        model.augmenter = CAIAnomalyGenerator(bank_dir, probability=0.5, seed=0)
        model = model.to(device).train()
        optimiser = torch.optim.Adam(model.model.parameters(), lr=1e-4)  # Draem.configure_optimizers
        images = demo_images(batch, size=size).to(device)
        data = ImageBatch(
            image=images,
            gt_label=torch.zeros(batch, dtype=torch.bool, device=device),
            image_path=[f"demo_{i}.png" for i in range(batch)],
        )
        losses = []

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            loss = model.training_step(data)["loss"]
            loss.backward()
            optimiser.step()
            losses.append(float(loss))

        step_s = median_seconds(step, device, steps, 1)
        aug_s = median_seconds(lambda: model.augmenter(images), device, steps, 0)
    finite = all(math.isfinite(v) for v in losses)
    return dict(
        steps=steps,
        batch=batch,
        size=size,
        step_ms=1e3 * step_s,
        augment_ms=1e3 * aug_s,
        share=aug_s / step_s,
        losses=losses,
        finite=finite,
        torchvision=recipe,
        augmenter=type(model.augmenter).__name__,
    )


# ------------------------------------------------------------------------------------------ engine steps

# (label, module, attribute): the engine functions timed; nested ones are subtracted from their caller
ENGINE_STEPS = (
    ("foreground", "cai_aug.engine.cai", "CAI.estimate_foreground"),
    ("matching (STM/MAS)", "cai_aug.engine.cai", "plan_synthesis"),
    ("placement (ILS)", "cai_aug.engine.cai", "place_pattern"),
    ("injection", "cai_aug.engine.cai", "inject"),
    ("  resampling", "cai_aug.engine.injection", "render_patterns"),
    ("  Poisson solve", "cai_aug.engine.injection", "poisson_blend_canvases"),
    ("mask", "cai_aug.engine.cai", "injection_mask"),
    ("write back", "cai_aug.engine.cai", "paste_"),
)


def engine_steps(device: torch.device, batch: int, size: int, bank, repeats: int) -> dict:
    """Share of each engine step in a default ``CAI(bank)(images)`` call (see the module docstring)."""
    import importlib

    from cai_aug import CAI
    from cai_aug.io.demo_data import demo_images

    spent: dict[str, float] = {label: 0.0 for label, _, _ in ENGINE_STEPS}
    patched = []

    def timed(label: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            _sync(device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(device)
                spent[label] += time.perf_counter() - t0

        return wrapper

    for label, module_name, attribute in ENGINE_STEPS:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)
        setattr(owner, name, timed(label, original))
        patched.append((owner, name, original))
    try:
        images = demo_images(batch, size=size).to(device)
        cai = CAI(bank, seed=0, device=device)
        cai(images)  # warm-up (compiled kernel, caches)
        for key in spent:
            spent[key] = 0.0
        total = median_seconds(lambda: cai(images), device, repeats, 0) * repeats  # about the sum of the calls
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
    exclusive = dict(spent)
    exclusive["injection"] -= spent["  resampling"] + spent["  Poisson solve"]
    exclusive["other"] = max(total - sum(spent[k] for k in spent if not k.startswith("  ")), 0.0)
    return dict(
        batch=batch,
        size=size,
        anomalies=cai.config.anomalies,
        ms_per_image=1e3 * total / repeats / batch,
        share={k: v / total for k, v in exclusive.items()},
    )


def print_engine_steps(r: dict) -> None:
    print(
        f"engine steps, default configuration ({r['anomalies']} anomalies per image), batch {r['batch']}, "
        f"{r['size']}x{r['size']}: {r['ms_per_image']:.2f} ms per image"
    )
    for label, share in r["share"].items():
        print(f"  {label.strip() if not label.startswith('  ') else '- ' + label.strip():<24} {share:>6.1%}")
    print()


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="discriminative UNet base width (DRAEM: 64)")
    parser.add_argument("--rec-width", type=int, default=128, help="reconstructive base width (DRAEM: 128)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bank", type=Path, default=None, help="anomaly bank folder (default: the demo bank)")
    parser.add_argument("--anomalib-steps", type=int, default=0, help="real anomalib Draem training steps")
    parser.add_argument("--anomalib-batch", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=None, help="start no new measurement after this")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--engine-steps", action="store_true", help="first, the share of each engine step")
    parser.add_argument("--engine-only", action="store_true", help="only the engine steps, no training step")
    parser.add_argument("--engine-batch", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    import cai_aug
    from cai_aug.io.demo_data import write_demo_bank

    bank_dir = args.bank or write_demo_bank(Path(tempfile.mkdtemp(prefix="cai_bank_")))
    bank = cai_aug.AnomalyBank.from_folder(bank_dir)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {args.size}x{args.size}; bank {bank_dir} ({len(bank)})")
    result: dict = dict(device=name, torch=torch.__version__, size=args.size, target_share=TARGET_SHARE, rows=[])
    failed = False

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - start > args.budget_s

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")

    if args.engine_steps or args.engine_only:
        result["engine_steps"] = engine_steps(device, args.engine_batch, args.size, bank, args.repeats)
        print_engine_steps(result["engine_steps"])
        save()
        if args.engine_only:
            return 0

    print(f"{'batch':>5} {'augment ms':>11} {'step ms':>9} {'share':>7} {'aug img/s':>10} {'peak GiB':>9}")
    for batch in args.batches:
        if over_budget():
            print(f"{batch:>5} skipped: past the {args.budget_s:.0f} s budget")
            continue
        try:
            row = measure_share(device, batch, args.size, bank, args.width, args.rec_width, args.repeats, args.warmup)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next measurement
            failed = True
            print(f"{batch:>5} FAILED: {type(exc).__name__}: {exc}")
            result["rows"].append(dict(batch=batch, error=f"{type(exc).__name__}: {exc}"))
            continue
        result["rows"].append(row)
        verdict = "ok" if row["share"] < TARGET_SHARE else f"over the {TARGET_SHARE:.0%} target"
        print(
            f"{batch:>5} {row['augment_ms']:>11.2f} {row['step_ms']:>9.2f} {row['share']:>7.1%} "
            f"{row['augment_images_per_s']:>10.0f} {row['peak_gib'] or float('nan'):>9.2f}  {verdict}",
            flush=True,
        )
        save()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.anomalib_steps > 0:
        if over_budget():
            print("anomalib: skipped, past the budget")
        else:
            try:
                a = measure_anomalib(device, args.anomalib_steps, args.anomalib_batch, args.size, Path(bank_dir))
                result["anomalib"] = a
                print(
                    f"anomalib Draem + {a['augmenter']}: {a['steps']} training steps at batch {a['batch']}, "
                    f"median {a['step_ms']:.1f} ms/step, augmenter {a['augment_ms']:.2f} ms ({a['share']:.1%}); "
                    f"losses {[round(v, 4) for v in a['losses']]}; torchvision: {a['torchvision']}"
                )
                failed |= not a["finite"]
            except Exception as exc:  # noqa: BLE001
                failed = True
                result["anomalib"] = dict(error=f"{type(exc).__name__}: {exc}")
                print(f"anomalib: FAILED: {type(exc).__name__}: {exc}")
    save()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
