"""The one-shot GPU check (``benchmarks/gpu_check.sh``) on a CPU: its dry run resolves every file, test,
flag and wheel name it uses, and names what is missing when something is."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
FETCH = ROOT / "benchmarks" / "fetch_gpu_wheels.sh"


def _run(*args: str, script: Path = SCRIPT, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": "/tmp"}
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_resolves_everything_the_gpu_check_uses() -> None:
    proc = _run("--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry run ok" in proc.stdout
    # the wheels folder is git-ignored: absent in CI ("not fetched yet"), checked where it was fetched
    assert "wheels: not fetched yet" in proc.stdout or "wheels: " in proc.stdout
    assert "tests: " in proc.stdout and " collected from " in proc.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_names_what_is_missing(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    shutil.copy(SCRIPT, bench / "gpu_check.sh")
    (bench / "gpu_wheels.txt").write_text("# comment\nanomalib==2.7.0\nkornia>=0.9\ntorch==2.11.0\nanomalib==2.7.0\n")
    (bench / "wheels").mkdir()
    (bench / "wheels" / "anomalib-2.6.0-py3-none-any.whl").write_bytes(b"")
    proc = _run("--dry-run", script=bench / "gpu_check.sh")
    assert proc.returncode != 0
    out = proc.stdout
    assert "DRY RUN FAILED" in out
    for expected in (
        "file benchmarks/speed/throughput.py",
        "file benchmarks/speed/step_share.py",
        "file tests/poisson/test_gpu_poisson.py",
        "'kornia>=0.9' is not name==version",
        "pins torch, which the GPU machine already has",
        "anomalib is pinned twice",
        "wheel anomalib==2.7.0: not in benchmarks/wheels",
    ):
        assert expected in out, (expected, out)


def test_scripts_parse_and_print_their_usage() -> None:
    for script in (SCRIPT, FETCH):
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script
    proc = _run("--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "OUT_DIR" in proc.stdout
    assert _run("--no-such-option").returncode == 2
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(SCRIPT), str(FETCH)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_throughput_floors_arithmetic() -> None:
    """The floors the GPU rows are compared with: bounding box plus one pixel, bytes over bandwidth."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks" / "speed"))
    try:
        import throughput
    finally:
        sys.path.pop(0)
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[0, 10:20, 5:9] = True  # box 10x4 -> 12x6 with the one-pixel border
    masks[1, 0:3, 0:3] = True  # clipped at the image corner: 4x4
    assert throughput.canvas_pixels(masks) == (72 + 16) / 2
    row = dict(path="cupy", iters=10.0, canvas_px=1000.0, solves=1000.0, images=500.0)
    throughput.add_floors(row, 256, dict(bandwidth_gbs=1.0, fp32_tflops=1.0))
    unknowns = 1000 * 3 * 10
    assert row["poisson_mem_floor_us"] == pytest.approx(1e6 * unknowns * throughput.BYTES_PER_UNKNOWN / 1e9)
    assert row["poisson_floor_x"] == pytest.approx(1e-3 / (row["poisson_mem_floor_us"] * 1e-6))
    io_us = 1e6 * 4 * 256 * 256 * 7 / 1e9
    assert row["pipeline_floor_us"] == pytest.approx(row["poisson_mem_floor_us"] + io_us)
    cpu = dict(path="torch-cpu", iters=10.0, canvas_px=1000.0, solves=1.0)
    throughput.add_floors(cpu, 256, dict(bandwidth_gbs=1.0, fp32_tflops=1.0))
    assert "poisson_floor_x" not in cpu  # floors are the GPU's
