"""What every example does first: parse ``--out`` and write the built-in demo bank there once.

The examples are scripts (``python examples/NAME.py``), so this module is imported by its file name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cai_aug.io.demo_data import write_demo_bank


def start(name: str, doc: str, argv: list[str] | None = None, *, bank: str = "bank", per_class: int = 6):
    """Parse ``--out`` (default ``out/examples/<name>``), create it, write the demo bank into ``<out>/<bank>``.

    Returns ``(out, bank_folder)``.
    """
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/examples") / name, help="output folder")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    folder = out / bank
    if not (folder / "MANIFEST.csv").exists():  # written once; later runs reuse it
        write_demo_bank(folder, per_class=per_class)
    return out, folder
