"""``cai-aug validation-set``: an MVTec-layout pseudo-anomaly validation folder from held-out normals."""

from __future__ import annotations

import argparse

from cai_aug.frontends.validation import split_bank_sources, write_validation_set


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "validation-set",
        help="write an MVTec-layout pseudo-anomaly validation folder from held-out normal images",
        description="Pseudo anomalies on normal images that training never sees, written as test/good, "
        "test/<class> and ground_truth/<class>/<stem>_mask.png (anomalib's Folder datamodule reads it), to "
        "choose a detector's epoch and threshold without real defects. By default the bank is split by source "
        "dataset (the id prefix before '_'): the validation anomalies come from sources that training must "
        "then leave out (the command prints them).",
    )
    parser.add_argument("--normal", required=True, help="folder of held-out normal images")
    parser.add_argument("--bank", required=True, help="anomaly bank folder")
    parser.add_argument("--out", required=True, help="new or empty output folder")
    parser.add_argument("--per-image", type=int, default=1, help="pseudo anomalies per normal image (1)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sources", help="comma list of the bank's source datasets to validate with")
    group.add_argument("--whole-bank", action="store_true", help="use every source (no split by source)")
    parser.add_argument(
        "--source-fraction",
        type=float,
        default=0.25,
        help="largest share of the bank's entries on the validation side of the automatic split (0.25)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="engine device (default: the images')")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.whole_bank:
        sources = None
    elif args.sources:
        sources = [s.strip() for s in args.sources.split(",") if s.strip()]
        split_bank_sources(args.bank, validation=sources)  # checks the names and that some sources remain
    else:
        sources = list(split_bank_sources(args.bank, args.source_fraction, args.seed).validation)
    result = write_validation_set(
        args.normal, args.bank, args.out, per_image=args.per_image, sources=sources, seed=args.seed, device=args.device
    )
    total = sum(result.anomalies.values())
    print(f"wrote {result.good} good images and {total} pseudo anomalies ({result.anomalies}) to {result.root}")
    if result.skipped:
        print(f"no pseudo anomaly could be placed on {len(result.skipped)} image(s): {result.skipped[:5]}")
    if sources is not None:
        print(
            f"validation sources: {','.join(sources)}; train without them: --exclude / "
            f"AnomalyBank.from_folder(bank, exclude={sorted(sources)})"
        )
    return 0
