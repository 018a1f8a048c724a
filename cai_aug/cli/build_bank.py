"""``cai-aug build-bank``: MVTec-layout datasets -> anomaly bank entries with a defect-to-class map."""

from __future__ import annotations

import argparse

from cai_aug.io.bank_builder import DEFAULT_DEFECT_MAP, build_bank, parse_map
from cai_aug.io.bank_files import shown


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-bank",
        help="turn MVTec-layout datasets (test/<defect>, ground_truth/<defect>) into anomaly bank entries",
        description=(
            "Copy the test defects of MVTec-layout datasets into an anomaly bank "
            "(BANK/<class>/<dataset>_<defect>_<stem>.png + _mask.png) and record them in BANK/MANIFEST.csv. "
            "Defects are mapped to classes by a default table for MVTec AD and VisA names plus --map; "
            "unmapped defects are skipped and counted. Unusable files (unreadable, a mask of another size, "
            "no mask) are skipped and listed; --strict stops at the first one. Nothing is written outside BANK, "
            "and a refused build writes nothing."
        ),
    )
    parser.add_argument(
        "--mvtec",
        nargs="+",
        metavar="DIR",
        help="MVTec-layout dataset folder(s), or folders of them (e.g. the MVTec AD root)",
    )
    parser.add_argument("--out", metavar="BANK", help="bank folder (created or extended)")
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="DEFECT=CLASS[,...]",
        help="defect-to-class mapping on top of the defaults (repeatable; DEFECT=- skips a defect)",
    )
    parser.add_argument("--no-default-map", action="store_true", help="use only --map, not the default table")
    parser.add_argument(
        "--dataset-name",
        action="append",
        default=None,
        metavar="NAME",
        help="dataset name for ids and provenance, once per --mvtec DIR (default: the folder name)",
    )
    parser.add_argument(
        "--exclude-dataset",
        action="append",
        default=[],
        metavar="NAME",
        help="the dataset under evaluation: refuse to add it (or to extend a bank that holds it)",
    )
    parser.add_argument("--license", default="", help="licence text for the manifest's license_if_known")
    parser.add_argument("--max-side", type=int, default=None, help="downscale sources longer than this")
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=0.0,
        metavar="T",
        help="a mask pixel is a defect where its value exceeds T, in the file's units (default 0: any non-zero label)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first unusable file instead of skipping it")
    parser.add_argument("--list-map", action="store_true", help="print the default defect-to-class table and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_map:
        for defect, cls in sorted(DEFAULT_DEFECT_MAP.items()):
            print(f"{defect}={cls}")
        return 0
    if not args.mvtec or not args.out:
        raise ValueError("--mvtec DIR [DIR ...] and --out BANK are required")
    report = build_bank(
        args.mvtec,
        args.out,
        parse_map(args.map),
        dataset_names=args.dataset_name,
        exclude_datasets=args.exclude_dataset,
        use_default_map=not args.no_default_map,
        license_text=args.license,
        max_side=args.max_side,
        strict=args.strict,
        mask_threshold=args.mask_threshold,
    )
    print(report.summary())
    print(f"bank: {shown(args.out)}")
    return 0
