"""Training and evaluation of the detector (the same hyper-parameters and seed for every synthesiser)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .losses import focal_loss
from .metrics import compute_all
from .unet import DiscriminativeUNet


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


PRESETS = {
    # the paper's protocol: 256x256, 200 epochs, DRAEM's optimiser settings (Adam, lr 1e-4, batch 8)
    "paper": Preset(size=256, epochs=200, width=64, batch=8, lr=1e-4, per_image=10, eval_every=1, kfold=5),
    # a few minutes per synthesiser on 2 CPU cores
    "smoke": Preset(size=64, epochs=5, width=8, batch=16, lr=2e-3, per_image=2, eval_every=1, kfold=3),
}

SELECTION = {
    "mean": lambda m: np.nanmean([m["pixel_auroc"], m["pixel_ap"], m["pro"]]),
    "auroc": lambda m: m["pixel_auroc"],
    "ap": lambda m: m["pixel_ap"],
    "pro": lambda m: m["pro"],
}


@dataclass
class EvalSet:
    """Test images at model resolution and ground truth at native resolution."""

    images: torch.Tensor  # (N,3,S,S) float
    masks_low: list[np.ndarray | None]  # (S,S) bool at model resolution (for epoch selection)
    masks: list[np.ndarray | None]  # native-resolution ground truth, None for good images
    shapes: list[tuple[int, int]]


@dataclass
class TrainResult:
    best_epoch: int
    last_epoch: int
    best_maps: np.ndarray  # (N,S,S) float32, model resolution
    last_maps: np.ndarray
    train_s: float
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        logits = model(images[i : i + batch].to(device))
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    return torch.cat(out).numpy().astype(np.float32)


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
) -> TrainResult:
    """Train DRAEM's discriminative UNet with focal loss on ``train_x (M,3,S,S) uint8`` /
    ``train_y (M,1,S,S) uint8``; evaluate every ``eval_every`` epochs at model resolution to pick the
    best epoch (criterion ``best_by``); return the best and the last epoch's test maps."""
    torch.manual_seed(seed)
    model = DiscriminativeUNet(3, 2, preset.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    gen = torch.Generator().manual_seed(seed)
    score = SELECTION[best_by]
    best_score, best_epoch, best_maps = -np.inf, 0, None
    last_maps = None
    history = []
    t0 = time.perf_counter()
    eval_s = 0.0
    n = len(train_x)
    bar = tqdm(range(1, preset.epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for i in range(0, n, preset.batch):
            idx = order[i : i + preset.batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = train_x[idx].to(device).float() / 255.0
            y = train_y[idx].to(device).float()
            loss = focal_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        row = {"epoch": epoch, "loss": total / max(steps, 1)}
        if epoch % preset.eval_every == 0 or epoch == preset.epochs:
            te = time.perf_counter()
            maps = predict(model, evalset.images, max(preset.batch, 16), device)
            metrics = compute_all(list(maps), evalset.masks_low)
            row.update({f"low_{k}": v for k, v in metrics.items()})
            s = score(metrics)
            if best_maps is None or s > best_score:
                best_score, best_epoch, best_maps = s, epoch, maps
            last_maps = maps
            eval_s += time.perf_counter() - te
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", best=best_epoch)
    train_s = time.perf_counter() - t0 - eval_s  # test-set evaluation excluded
    return TrainResult(best_epoch, preset.epochs, best_maps, last_maps, train_s, history)
