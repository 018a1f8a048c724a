"""``cai-aug synth``: a folder of normal images -> an MVTec-style folder of pseudo anomalies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cai_aug.cli.options import add_engine_options, engine_config
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.frontends.offline import run_local
from cai_aug.io.output import folder_lock


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the sub-commands that run the engine: the run, the bank and the engine."""
    parser.add_argument("--per-image", type=int, default=10, help="pseudo anomalies per normal image (10)")
    parser.add_argument("--classes", nargs="+", default=None, help="restrict the bank to these classes")
    parser.add_argument("--exclude", nargs="+", default=None, help="source datasets or ids to leave out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: the per-image work is small, and extra threads lose to their barriers "
        "as soon as the cores are shared; see benchmarks/RESULTS.md)",
    )
    add_engine_options(parser)


def make_engine(args: argparse.Namespace) -> CAI:
    """The engine of parsed ``synth`` flags: bank loaded, options checked, threads set."""
    config = engine_config(args)  # before the bank: a bad option fails without reading any file
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    bank = AnomalyBank.from_folder(args.bank, classes=args.classes, exclude=args.exclude, progress=True)
    return CAI(bank, config, seed=args.seed, device=args.device)


def register(subparsers) -> None:
    parser = subparsers.add_parser("synth", help="make pseudo anomalies for a folder of normal images")
    parser.add_argument("--normal", required=True, help="folder of normal images (searched recursively)")
    parser.add_argument("--bank", required=True, help="anomaly bank folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue a run that was stopped")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first input image that cannot be used (default: skip it, named in skipped.jsonl)",
    )
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local instance)")
    parser.add_argument("--workers", type=int, default=None, help="Ray actors")
    parser.add_argument("--batch-size", type=int, default=8, help="images per Ray batch")
    add_run_options(parser)
    parser.set_defaults(func=run)


def check_folders(out: str, **inputs: str) -> None:
    """Refuse an output folder that equals, contains or lies inside an input folder.

    Writing there would overwrite the user's inputs, or read the run's own outputs back as inputs.

    Raises
    ------
    ValueError
        Naming both folders.
    """
    target = Path(out).resolve()
    overlaps = []
    for flag, folder in inputs.items():
        source = Path(folder).resolve()
        if target == source or source in target.parents or target in source.parents:
            overlaps.append(f"--{flag} {folder}")
    if overlaps:
        raise ValueError(f"--out {out} overlaps {', '.join(overlaps)}: the output folder must lie outside every input")


def check_arguments(args: argparse.Namespace) -> None:
    """Cheap checks of the parsed flags, before any bank, image or cluster is touched.

    Raises
    ------
    ValueError
        A bad value, named.
    """
    engine_config(args)  # the engine's own bounds, before the bank or the output folder is touched
    counts = {"--per-image": args.per_image, "--batch-size": args.batch_size, "--workers": args.workers}
    for flag, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device {args.device}: not a torch device ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    for flag, folder, what in (("--bank", args.bank, "bank folder"), ("--normal", args.normal, "normal image folder")):
        path = Path(folder)
        if not path.exists():
            raise ValueError(f"{flag} {folder}: the {what} does not exist")
        if not path.is_dir():
            raise ValueError(f"{flag} {folder}: is not a folder (the {what})")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a file, not a folder")
    check_folders(args.out, normal=args.normal, bank=args.bank)


def run(args: argparse.Namespace) -> int:
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file or folder name is shown, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    check_arguments(args)
    with folder_lock(args.out):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    engine = make_engine(args)  # the bank is read here, before any Ray instance starts
    run_options = {"per_image": args.per_image, "resume": args.resume, "strict": args.strict}
    if args.engine == "ray":
        from cai_aug.frontends.ray import run_ray  # optional stack

        ray_options = {"address": args.address, "workers": args.workers, "batch_size": args.batch_size}
        output = run_ray(args.normal, engine, args.out, **run_options, **ray_options)
    else:
        output = run_local(args.normal, engine, args.out, **run_options)
    total = len(output.records())
    preview = output.root / "preview.png"
    shown = f" (preview: {preview})" if preview.exists() else ""
    if args.resume and output.written == 0:
        print(f"nothing left to do: {output.root} already holds the whole run ({total} pseudo anomalies){shown}")
    else:
        in_all = f" ({total} in all)" if total != output.written else ""
        print(f"wrote {output.written} pseudo anomalies to {output.root}{in_all}{shown}")
    if output.skipped:
        print(
            f"skipped {len(output.skipped)} input image(s) that could not be used: see {output.root / 'skipped.jsonl'}",
            file=sys.stderr,
        )
    return 0
