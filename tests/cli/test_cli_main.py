"""The ``cai-aug`` entry point itself: version, and user errors as one line instead of a traceback."""

import errno

import pytest

import cai_aug
from cai_aug.cli import main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cai-aug {cai_aug.__version__}"


def test_disk_full_is_one_line_without_traceback(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cai_aug.cli.synth as synth

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "cannot write out/images/a.png: No space left on device")

    monkeypatch.setattr(synth, "run_local", full_disk)
    monkeypatch.setattr(synth, "make_engine", lambda args: None)
    (tmp_path / "normal").mkdir()
    (tmp_path / "bank").mkdir()
    argv = [
        "synth",
        "--normal",
        str(tmp_path / "normal"),
        "--bank",
        str(tmp_path / "bank"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "cai-aug synth: error: cannot write out/images/a.png: No space left on device"
    assert not any("Traceback" in line for line in err)
