"""The ``cai-aug`` command line: one sub-command per module."""

from __future__ import annotations

import argparse
import logging
import sys

from cai_aug import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cai-aug", description="Cross-domain anomaly injection: realistic pseudo anomalies."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    # Each sub-command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to
    # a callable taking the parsed namespace and returning an exit code; none imports a heavy stack here.
    from cai_aug.cli import build_bank, cdm, demo, synth, validation

    for module in (synth, demo, build_bank, cdm, validation):
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
