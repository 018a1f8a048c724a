"""Visible change outside the mask: ``python -m benchmarks.masks --data <domain>... --bank <bank>``.

For each domain, the first ``--images`` normal training images (sorted by name, ``train/good``) are resized to
``--size`` x ``--size`` and given pseudo anomalies by ``CAI(bank, seed)`` (the library's defaults, or
``--preset`` / ``--option name=value``). Per pixel, the change is the channel-mean absolute difference between
the pseudo anomaly and its normal image. Reported, pooled over the images of a domain:

- ``outside``: the share of clearly visible change (> ``--visible``/255) that lies outside the mask;
- ``unchanged``: the share of mask pixels whose change is below ``--unchanged``/255;
- ``mask %``: the mask's share of the image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cai_aug import CAI, AnomalyBank
from cai_aug.engine import rng
from cai_aug.io.images import list_images


def load(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def measure(cai: CAI, images: torch.Tensor, keys: list[str], seed: int, visible: float, unchanged: float) -> dict:
    """Pooled shares over ``images (N,3,H,W)``; see the module docstring."""
    res = cai(images, keys=rng.sample_keys(seed, keys))
    change = (res.images - images).abs().mean(dim=1)  # (N,H,W)
    mask = res.masks[:, 0] > 0
    seen = change > visible / 255
    return {
        "images": len(images),
        "anomalous": int(res.labels.sum()),
        "outside": float((seen & ~mask).sum() / seen.sum().clamp(min=1)),
        "unchanged": float(((change < unchanged / 255) & mask).sum() / mask.sum().clamp(min=1)),
        "mask_share": float(mask.float().mean()),
        "visible_px": int(seen.sum()),
    }


def figure(bank: AnomalyBank, domains: list[Path], path: Path, size: int, seed: int, per_domain: int = 2) -> None:
    """Per image: the pseudo anomaly (majority rule), its change above 24/255 (white), and each rule's mask (grey,
    white where the change is visible) with the visible change outside it in red (majority, the paper's; then
    hysteresis; same seed: the same injection unless the rule makes another attempt succeed)."""
    import cv2

    tiles = []
    rules = {r: CAI(bank, seed=seed, mask_rule=r) for r in ("majority", "hysteresis")}
    for root in domains:
        paths = list_images(root / "train" / "good")[:per_domain]
        images = torch.stack([load(p, size) for p in paths])
        keys = rng.sample_keys(seed, [p.relative_to(root).as_posix() for p in paths])
        results = {r: cai(images, keys=keys) for r, cai in rules.items()}
        for i in range(len(images)):
            out = results["majority"].images[i]
            seen = ((out - images[i]).abs().mean(0) > 24 / 255).numpy()
            row = [
                (out.permute(1, 2, 0).numpy() * 255).astype(np.uint8),
                np.stack([seen * 255] * 3, -1).astype(np.uint8),
            ]
            for r in rules:  # each against its own result: a rule can change which attempt succeeds
                seen = ((results[r].images[i] - images[i]).abs().mean(0) > 24 / 255).numpy()
                mask = results[r].masks[i, 0].numpy() > 0
                tile = np.stack([mask * 90] * 3, -1).astype(np.uint8)  # the mask in grey
                tile[seen & mask] = 255
                tile[seen & ~mask] = (255, 0, 0)  # visible change outside the mask
                row.append(tile)
            tiles.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in row], 1))
    sheet = np.concatenate(tiles, 0)
    bar = np.full((22, sheet.shape[1], 3), 255, np.uint8)
    text = "pseudo anomaly | change > 24/255 | mask majority (paper) | mask hysteresis; red: change outside"
    cv2.putText(bar, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([bar, sheet], 0), cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.masks", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="MVTec-layout domain folders")
    p.add_argument("--bank", required=True)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--visible", type=float, default=24.0, help="clearly visible change, in 1/255 (24)")
    p.add_argument("--unchanged", type=float, default=2.0, help="no change, in 1/255 (2)")
    p.add_argument("--preset", default=None, help="CAIConfig preset (default: the library's defaults)")
    p.add_argument("--option", action="append", default=[], help="CAI option name=value (repeatable)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--figure", help="write a PNG comparing the majority and hysteresis masks (2 images per domain)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    options = {k: _value(v) for k, v in (o.split("=", 1) for o in args.option)}
    bank = AnomalyBank.from_folder(args.bank)
    if args.figure:
        figure(bank, [Path(d) for d in args.data], Path(args.figure), args.size, args.seed)
    cai = CAI(bank, preset=args.preset, seed=args.seed, **options)
    rows = []
    print("| domain | images | anomalous | visible change outside the mask | mask pixels unchanged | mask % | s |")
    print("|---|---|---|---|---|---|---|")
    for root in args.data:
        root = Path(root)
        paths = list_images(root / "train" / "good")[: args.images]
        images = torch.stack([load(p, args.size) for p in paths])
        keys = [p.relative_to(root).as_posix() for p in paths]
        t0 = time.perf_counter()
        row = {"domain": root.name, **measure(cai, images, keys, args.seed, args.visible, args.unchanged)}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"| {row['domain']} | {row['images']} | {row['anomalous']} | {100 * row['outside']:.2f} % | "
            f"{100 * row['unchanged']:.2f} % | {100 * row['mask_share']:.2f} | {row['seconds']:.0f} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
