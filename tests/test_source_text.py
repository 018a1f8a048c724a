"""The package's code and native sources cite nothing that is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "cai_aug").rglob("*.py"), *(ROOT / "kernels").iterdir()])
STALE = re.compile(r"SPEC\.md|NOTES\.md|\.\./shared|\bissues?[ #-]*\d+", re.IGNORECASE)


@pytest.mark.parametrize("path", SOURCES, ids=[p.relative_to(ROOT).as_posix() for p in SOURCES])
def test_no_reference_to_files_or_issues_outside_the_repository(path: Path) -> None:
    found = [m.group(0) for m in STALE.finditer(path.read_text(encoding="utf-8"))]
    assert not found, found


def test_the_pattern_finds_what_it_looks_for() -> None:
    text = "see NOTES.md, SPEC.md and issue 14; ../shared/data; issue #3"
    assert len(STALE.findall(text)) == 5
