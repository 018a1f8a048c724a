"""Every example script runs as written (``python examples/NAME.py --out DIR``) and writes its picture."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# script -> the picture it must write
PICTURES = {
    "albumentations_compose.py": "compose.png",
    "anomalib_draem.py": "draem_batch.png",
    "batch_transform.py": "step1.png",
    "dataset_loader.py": "epoch1.png",
    "build_bank.py": "bank.png",
}


@pytest.mark.parametrize("script", sorted(PICTURES))
def test_example_runs_and_writes_its_picture(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / PICTURES[script]).stat().st_size > 0


def test_examples_listed_here_are_all_the_examples() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts - {"cdm_train_and_sample.py"} == set(PICTURES)  # the CDM one needs model weights
