"""`cai-aug synth` run as a user runs it: outputs kept apart from inputs, bad flags refused before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai_aug.io.demo_data import write_demo_normals

REPO = Path(__file__).resolve().parents[2]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "cai_aug", "synth", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def normals(tmp_path_factory):
    return write_demo_normals(tmp_path_factory.mktemp("guard_normals"), n=2, size=64)


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
@pytest.mark.parametrize("flag", ["normal", "bank"])
def test_out_overlapping_an_input_folder_is_refused(normals, demo_bank_dir, tmp_path, flag, where):
    inputs = {"normal": normals, "bank": demo_bank_dir}
    folder = inputs[flag]
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    out = {"same": folder, "inside": folder / "out", "contains": folder.parent}[where]
    result = _cli("--normal", str(normals), "--bank", str(demo_bank_dir), "--out", str(out))
    _refused(result, str(out), str(folder))
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (["--per-image", "0"], "--per-image"),
        (["--device", "foo"], "--device foo"),
        (["--engine", "ray", "--bank", "missing_bank"], "--bank missing_bank"),
    ],
)
def test_bad_flags_are_refused_before_any_work(normals, demo_bank_dir, tmp_path, flags, word):
    argv = ["--normal", str(normals), "--bank", str(demo_bank_dir), "--out", str(tmp_path / "out"), *flags]
    result = _cli(*argv)
    _refused(result, word)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(normals, demo_bank_dir, tmp_path):
    argv = ["--normal", str(normals), "--bank", str(demo_bank_dir), "--out", str(tmp_path / "out")]
    _refused(_cli(*argv, "--device", "cuda"), "CUDA")


def test_a_second_writer_on_one_output_folder_is_refused_naming_the_holder(normals, demo_bank_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".cai_aug.lock").write_text(f"{holder.pid}\n")
        result = _cli("--normal", str(normals), "--bank", str(demo_bank_dir), "--out", str(out), "--per-image", "1")
        _refused(result, str(holder.pid))
        assert not (out / "manifest.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_writer_is_taken_over(normals, demo_bank_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".cai_aug.lock").write_text(f"{dead.pid}\n")
    result = _cli("--normal", str(normals), "--bank", str(demo_bank_dir), "--out", str(out), "--per-image", "1")
    assert result.returncode == 0, result.stderr
    assert (out / "manifest.jsonl").read_text().strip()
    assert not (out / ".cai_aug.lock").exists()
