"""The README: short, its Python example runs and gives what it says, and its two set-up commands are the
ones CI runs (``.ci/run``)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from conftest import run_readme

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_python_example_gives_what_it_says(tmp_path, monkeypatch, cached_demo_bank):
    namespace = run_readme("engine", tmp_path, monkeypatch)
    result = namespace["result"]
    assert result.images.shape == (8, 3, 256, 256) and result.masks.shape == (8, 1, 256, 256)
    assert result.labels.sum() >= 6  # almost every image gets an anomaly
    assert (result.images - namespace["images"]).abs().amax(dim=(1, 2, 3)).gt(0).sum() == result.labels.sum()


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def _setup_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Set up and run (two commands)", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def _words(command: str) -> list[str]:
    """A command's words without pip's quiet flag, which CI adds."""
    return [word for word in shlex.split(command, comments=True) if word != "-q"]


def test_setup_commands_are_the_ones_ci_runs():
    """Each command of the README's two set-up lines is a line of ``.ci/run`` (CI only adds ``-q`` and writes
    the demo into its temporary folder)."""
    ci = [_words(line) for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    lines = _setup_lines()
    assert len(lines) == 2
    for line in lines:
        for command in line.split(" && "):
            words = _words(command)
            if words[:2] == ["cai-aug", "demo"]:
                assert any(other[:3] == ["cai-aug", "demo", "--out"] for other in ci)
            elif words[0] == ".":  # activating the venv: CI does the same
                assert [".", ".venv/bin/activate"] in ci
            else:
                assert words in ci, f"README set-up command not in .ci/run: {command}"
