"""Training and evaluation of the detector (the same hyper-parameters and seed for every synthesiser)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .losses import focal_loss
from .metrics import compute_all, pixel_ap
from .unet import DiscriminativeUNet
from .validation import Selection


@dataclass(frozen=True)
class Preset:
    size: int  # images are resized to size x size (divisible by 32)
    epochs: int
    width: int  # UNet base width (DRAEM: 64)
    batch: int
    lr: float
    per_image: int  # pseudo anomalies per normal training image (the paper: 10)
    eval_every: int = 1
    kfold: int = 3  # folds of real-kfold
    # the crop protocol (preset ``crop``): ``size`` is the long side of the working resolution (aspect
    # kept, native when smaller); training samples are ``crop`` x ``crop`` windows (a pseudo anomaly's
    # window always holds some of its mask); test images are evaluated whole, fully convolutionally
    crop: int = 0  # 0: train on whole size x size images (``paper``, ``smoke``)
    schedule: str = "constant"  # or "cosine": linear warm-up over ``warmup`` of the steps, cosine to 0
    warmup: float = 0.05
    eval_from: int = 1  # first epoch evaluated (then every ``eval_every``; the last epoch always)

    @property
    def keep_aspect(self) -> bool:
        return self.crop > 0


PRESETS = {
    # the paper's protocol: 256x256, 200 epochs, DRAEM's optimiser settings (Adam, lr 1e-4, batch 8)
    "paper": Preset(size=256, epochs=200, width=64, batch=8, lr=1e-4, per_image=10, eval_every=1, kfold=5),
    # a few minutes per synthesiser on 2 CPU cores
    "smoke": Preset(size=64, epochs=5, width=8, batch=16, lr=2e-3, per_image=2, eval_every=1, kfold=3),
    # a benchmark that can tell, on 2 CPU cores (about 3 min per synthesiser, seed and domain): working
    # resolution 256 px on the long side (native when smaller), 128-px training crops, cosine schedule
    "crop": Preset(
        size=256,
        epochs=8,
        width=16,
        batch=16,
        lr=2e-3,
        per_image=1,
        eval_every=1,
        kfold=3,
        crop=128,
        schedule="cosine",
        eval_from=1,
    ),
}

DEFAULT_SEEDS = {"crop": (0, 1, 2)}

SELECTION = {
    "mean": lambda m: np.nanmean([m["pixel_auroc"], m["pixel_ap"], m["pro"]]),
    "auroc": lambda m: m["pixel_auroc"],
    "ap": lambda m: m["pixel_ap"],
    "pro": lambda m: m["pro"],
}


@dataclass
class EvalSet:
    """Test images at model resolution and ground truth at native resolution."""

    images: torch.Tensor  # (N,3,H,W) float at the working resolution
    masks_low: list[np.ndarray | None]  # (H,W) bool at the working resolution (for epoch selection)
    masks: list[np.ndarray | None]  # native-resolution ground truth, None for good images
    shapes: list[tuple[int, int]]


@dataclass
class TrainResult:
    best_epoch: int
    last_epoch: int
    best_maps: np.ndarray  # (N,H,W) float32, working resolution
    last_maps: np.ndarray
    train_s: float
    history: list[dict] = field(default_factory=list)
    selected: dict[str, Selection] = field(default_factory=dict)  # per validation split


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int, device: torch.device) -> np.ndarray:
    """Anomaly maps of whole images, fully convolutionally: each batch is reflect-padded to a multiple
    of 32 (the UNet pools five times) and the map cropped back to the image."""
    model.eval()
    out = []
    h, w = images.shape[-2:]
    ph, pw = -h % 32, -w % 32
    for i in range(0, len(images), batch):
        x = images[i : i + batch].to(device)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        logits = model(x)[..., :h, :w]
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    return torch.cat(out).numpy().astype(np.float32)


def lr_factor(step: int, total: int, schedule: str, warmup: float = 0.05) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based) of ``total``."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    n_warm = max(1, int(round(warmup * total)))
    if step < n_warm:
        return (step + 1) / n_warm
    t = (step - n_warm) / max(1, total - n_warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def crop_windows(
    masks: torch.Tensor, crop: tuple[int, int], g: np.random.Generator, positives: list[np.ndarray | None]
) -> np.ndarray:
    """Top-left corners ``(M,2)`` of one ``crop`` window per sample: a window around a random mask pixel
    (placed at a random offset, so the pixel is anywhere inside) for a pseudo anomaly, a uniformly random
    window for a normal image. ``positives[i]`` are sample i's mask pixel coordinates (None if empty)."""
    h, w = masks.shape[-2:]
    ch, cw = crop
    out = np.zeros((len(masks), 2), dtype=np.int64)
    for i, pos in enumerate(positives):
        if pos is None:
            out[i] = g.integers(0, h - ch + 1), g.integers(0, w - cw + 1)
            continue
        py, px = pos[g.integers(0, len(pos))]
        y0 = g.integers(max(0, py - ch + 1), min(py, h - ch) + 1)
        x0 = g.integers(max(0, px - cw + 1), min(px, w - cw) + 1)
        out[i] = y0, x0
    return out


def crop_shape(crop: int, h: int, w: int) -> tuple[int, int]:
    """The training window: ``crop`` clipped to the image, rounded down to a multiple of 32."""
    ch, cw = min(crop, h) // 32 * 32, min(crop, w) // 32 * 32
    if ch == 0 or cw == 0:
        raise ValueError(f"images of {h}x{w} are too small for the UNet (needs 32 px)")
    return ch, cw


def to_native(maps: np.ndarray, shapes: list[tuple[int, int]], dtype=np.float16) -> list[np.ndarray]:
    """Bilinear resize of model-resolution maps to each ground truth's resolution, stored as ``dtype``
    (the reported metrics are computed from these stored values, so saved maps reproduce them)."""
    out = []
    for amap, shape in zip(maps, shapes):
        t = torch.from_numpy(amap)[None, None]
        if tuple(t.shape[-2:]) != tuple(shape):
            t = F.interpolate(t, size=shape, mode="bilinear", align_corners=False)
        out.append(t[0, 0].numpy().astype(dtype))
    return out


def train_detector(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    evalset: EvalSet,
    preset: Preset,
    seed: int,
    device: torch.device,
    best_by: str = "mean",
    desc: str = "train",
    progress: bool = True,
    valsets: dict[str, EvalSet] | None = None,
) -> TrainResult:
    """Train DRAEM's discriminative UNet with focal loss on ``train_x (M,3,S,S) uint8`` /
    ``train_y (M,1,S,S) uint8``; evaluate every ``eval_every`` epochs at model resolution to pick the
    best epoch on the test set (criterion ``best_by``: the oracle) and, for each of ``valsets``, the
    epoch with the best pixel AP on that pseudo-anomaly validation split; return the test maps of the
    oracle, the last and each validation-selected epoch."""
    torch.manual_seed(seed)
    model = DiscriminativeUNet(3, 2, preset.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    gen = torch.Generator().manual_seed(seed)
    crop_rng = np.random.default_rng(seed)
    score = SELECTION[best_by]
    best_score, best_epoch, best_maps = -np.inf, 0, None
    last_maps = None
    history = []
    selected: dict[str, Selection] = {}
    t0 = time.perf_counter()
    eval_s = 0.0
    n = len(train_x)
    h, w = train_x.shape[-2:]
    window = crop_shape(preset.crop, h, w) if preset.crop else None
    positives = None
    if window is not None:
        positives = [(lambda nz: nz.numpy() if len(nz) else None)(torch.nonzero(train_y[i, 0])) for i in range(n)]
    steps_per_epoch = sum(1 for i in range(0, n, preset.batch) if min(preset.batch, n - i) >= 2)
    total_steps = max(1, steps_per_epoch * preset.epochs)
    step_no = 0
    bar = tqdm(range(1, preset.epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen)
        corners = crop_windows(train_y, window, crop_rng, positives) if window is not None else None
        total, steps = 0.0, 0
        for i in range(0, n, preset.batch):
            idx = order[i : i + preset.batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            if window is None:
                xb, yb = train_x[idx], train_y[idx]
            else:
                ch, cw = window
                xb = torch.stack([train_x[j, :, a : a + ch, b : b + cw] for j, (a, b) in zip(idx, corners[idx])])
                yb = torch.stack([train_y[j, :, a : a + ch, b : b + cw] for j, (a, b) in zip(idx, corners[idx])])
            x = xb.to(device).float() / 255.0
            y = yb.to(device).float()
            for group in opt.param_groups:
                group["lr"] = preset.lr * lr_factor(step_no, total_steps, preset.schedule, preset.warmup)
            loss = focal_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_no += 1
            total += float(loss.detach())
            steps += 1
        row = {"epoch": epoch, "loss": total / max(steps, 1)}
        due = epoch >= preset.eval_from and (epoch - preset.eval_from) % preset.eval_every == 0
        if due or epoch == preset.epochs:
            te = time.perf_counter()
            maps = predict(model, evalset.images, max(preset.batch, 16), device)
            metrics = compute_all(list(maps), evalset.masks_low)
            row.update({f"low_{k}": v for k, v in metrics.items()})
            s = score(metrics)
            if best_maps is None or s > best_score:
                best_score, best_epoch, best_maps = s, epoch, maps
            for name, vs in (valsets or {}).items():
                vmaps = predict(model, vs.images, max(preset.batch, 16), device)
                vap = 100 * pixel_ap(list(vmaps), vs.masks_low)
                row[f"{name}_pixel_ap"] = vap
                if name not in selected or vap > selected[name].score:
                    selected[name] = Selection(epoch, vap, maps, vmaps)
            last_maps = maps
            eval_s += time.perf_counter() - te
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", best=best_epoch)
    train_s = time.perf_counter() - t0 - eval_s  # test-set evaluation excluded
    return TrainResult(best_epoch, preset.epochs, best_maps, last_maps, train_s, history, selected)
