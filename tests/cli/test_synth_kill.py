"""`cai-aug synth` killed with SIGKILL at random moments, several times in a row, then resumed: the
folder (every file, the manifest, the preview) is byte for byte the uninterrupted run's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai_aug.cli import main
from cai_aug.io.demo_data import write_demo_bank, write_demo_normals

REPO = Path(__file__).resolve().parents[2]
KILLS = 4


def _argv(data: Path, out: Path) -> list[str]:
    return [
        "synth",
        "--normal",
        str(data / "normal"),
        "--bank",
        str(data / "bank"),
        "--out",
        str(out),
        "--per-image",
        "3",
        "--seed",
        "3",
        "--threads",
        "1",
    ]


def _state(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _progress(out: Path) -> int:
    """Files written so far (images and masks), cheap to poll."""
    return sum(len(os.listdir(out / part)) for part in ("images", "masks") if (out / part).is_dir())


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    write_demo_bank(data / "bank", per_class=2)
    write_demo_normals(data / "normal", n=32, size=96, seed=1)
    assert main(_argv(data, tmp_path / "whole")) == 0
    want = _state(tmp_path / "whole")

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    chooser = random.Random(16)
    interrupted = 0  # kills that left work undone (a kill may also land after a run has finished)
    for attempt in range(KILLS):
        command = [sys.executable, "-m", "cai_aug", *_argv(data, out), *(["--resume"] if attempt else [])]
        before = _progress(out)
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            # wait until this run writes, then kill it a random moment later (mid-file, mid-record...)
            while process.poll() is None and _progress(out) <= before and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(chooser.uniform(0.0, 0.1))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
        if _state(out) == want:
            break  # this run finished: nothing left to interrupt
        interrupted += 1
    assert interrupted >= 2, "the runs ended before they could be killed: make the data larger"
    assert main([*_argv(data, out), "--resume"]) == 0
    assert _state(out) == want
