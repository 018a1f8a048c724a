"""``cai-aug demo``: the whole method on the built-in default, no download, no data to find."""

from __future__ import annotations

import argparse
from pathlib import Path

from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.engine.config import MODES, CAIConfig
from cai_aug.frontends.offline import run_local
from cai_aug.io.demo_data import write_demo_bank, write_demo_normals


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run CAI on built-in demo targets and defects")
    parser.add_argument("--out", default="cai_aug_demo", help="output folder (cai_aug_demo)")
    parser.add_argument("--images", type=int, default=6, help="normal images to draw (6)")
    parser.add_argument("--per-image", type=int, default=4, help="pseudo anomalies per image (4)")
    parser.add_argument("--mode", choices=MODES, default=CAIConfig().mode, help="Poisson guidance (%(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = Path(args.out)
    bank_dir = write_demo_bank(root / "demo_bank")
    normal_dir = write_demo_normals(root / "demo_normals", n=args.images)
    bank = AnomalyBank.from_folder(bank_dir)
    cai = CAI(bank, mode=args.mode, seed=args.seed, device=args.device)
    output = run_local(normal_dir, cai, root / "pseudo_anomalies", per_image=args.per_image, resume=True)
    print(f"demo bank: {bank_dir} ({len(bank)} synthetic defects in {len(bank.classes)} classes)")
    print(f"normal images: {normal_dir}")
    print(f"wrote {len(output.records())} pseudo anomalies to {output.root}; look at {output.root / 'preview.png'}")
    return 0
