"""The documentation site: it builds strictly, its Python snippets run on their own, and the configuration
page and ``cai-aug synth --help`` cover every ``CAIConfig`` field."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cai_aug.engine.config import CAIConfig

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted((ROOT / "docs").glob("*.md"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _snippets() -> list[tuple[str, str]]:
    return [
        (f"{path.name}#{i}", code)
        for path in DOC_FILES
        for i, code in enumerate(PYTHON_BLOCK.findall(path.read_text()))
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


@pytest.mark.parametrize(("name", "code"), _snippets(), ids=[name for name, _ in _snippets()])
def test_docs_python_snippet_runs_on_its_own(name, code, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-2000:]}"


def test_mkdocs_build_strict(tmp_path):
    if shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    done = subprocess.run(
        ["mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "site" / "configuration" / "index.html").read_text()
    for field in dataclasses.fields(CAIConfig):
        assert f"<code>{field.name}</code>" in page, f"configuration page lacks {field.name}"


def test_synth_help_names_every_config_field():
    done = subprocess.run(
        [sys.executable, "-m", "cai_aug", "synth", "--help"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for field in dataclasses.fields(CAIConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in done.stdout, f"cai-aug synth --help lacks {flag}"
