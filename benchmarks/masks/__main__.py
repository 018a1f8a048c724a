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
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    options = {k: _value(v) for k, v in (o.split("=", 1) for o in args.option)}
    cai = CAI(AnomalyBank.from_folder(args.bank), preset=args.preset, seed=args.seed, **options)
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
