"""The ``cai-aug`` command line: one sub-command per module, registered lazily."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cai_aug import __version__

# (sub-command module, its one-line help). Each module defines ``register(subparsers)`` which adds
# its parser and sets ``func`` to a callable taking the parsed namespace and returning an exit code.
SUBCOMMANDS = (
    "cai_aug.cli.synth",
    "cai_aug.cli.demo",
    "cai_aug.cli.build_bank",
    "cai_aug.cli.cdm",
    "cai_aug.cli.validation",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cai-aug", description="Cross-domain anomaly injection: realistic pseudo anomalies."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as error:  # OSError: missing, existing, unwritable, disk full
        # our own OSErrors carry the whole message in strerror; str() would prefix "[Errno 28]"
        text = error.strerror if isinstance(error, OSError) and error.strerror and not error.filename else error
        print(f"cai-aug {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
