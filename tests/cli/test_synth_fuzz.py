"""Fuzzing `cai-aug synth` over odd folders: odd names (spaces, unicode), symlinks, nested folders, tiny
and huge images, grey/16-bit/alpha/palette files, broken files. Every call ends in a valid result or a
clear error message, and never in a traceback.

Bounded for CI (``CAI_FUZZ_EXAMPLES``, default 6, raises the count for a longer run).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from cai_aug.cli import main

EXAMPLES = int(os.environ.get("CAI_FUZZ_EXAMPLES", "6"))
STEMS = ["plain", "with space", "ünïcødé", "日本語", "semi;colon", "quote'", "#hash", "dots.in.name", "-dash"]
FOLDERS = ["", "sub/", "a b/ç/", "deep/er/still/"]
SUFFIXES = [".png", ".PNG", ".tif", ".bmp", ".jpg"]
GOOD = ["L", "I;16", "RGB", "RGBA", "LA", "P", "grey3", "1"]
BAD = ["empty", "truncated", "text", "bomb", "hidden", "mask"]
KINDS = GOOD + BAD + ["symlink"]
SIDES = [8, 16, 17, 40, 64, 96, 300]


def _bomb() -> bytes:
    """A PNG header claiming 10^10 pixels: a decoder must refuse it, not allocate it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _picture(kind: str, height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgb[: height // 2] //= 2  # some structure for the foreground and location steps
    if kind == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if kind == "grey3":
        return Image.fromarray(np.repeat(rgb[..., :1], 3, -1))
    if kind in ("RGBA", "LA"):
        return Image.fromarray(rgb).convert(kind)
    return Image.fromarray(rgb).convert(kind)


# what an input's mode becomes on output (formats are kept; a bilevel or palette file cannot hold a blend)
EXPECTED_MODE = {"1": "L", "P": "RGB", "I": "I;16"}

file_spec = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from(STEMS),
    st.sampled_from(FOLDERS),
    st.sampled_from(SUFFIXES),
    st.sampled_from(SIDES),
    st.sampled_from(SIDES),
)


def _write_folder(root: Path, specs: list[tuple]) -> None:
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    for index, (kind, stem, folder, suffix, height, width) in enumerate(specs):
        name = f"{stem}{index}"
        if kind == "hidden":
            name = f".{name}"
        if kind == "mask":
            name = f"{name}_mask"
        path = root / folder / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("not an image")
        elif kind == "bomb":
            path.with_suffix(".png").write_bytes(_bomb())
        elif kind == "symlink":
            target = elsewhere / f"target{index}.png"
            _picture("RGB", height, width, index).save(target)
            path.with_suffix(".png").symlink_to(target)
        else:
            picture = _picture("RGB" if kind in ("hidden", "mask", "truncated") else kind, height, width, index)
            if suffix == ".jpg" and picture.mode not in ("L", "RGB"):
                suffix = ".png"  # JPEG holds no alpha, palette or 16-bit plane
            if suffix == ".bmp" and picture.mode in ("I;16", "LA", "RGBA"):
                suffix = ".png"
            path = path.with_suffix(suffix)
            picture.save(path)
            if kind == "truncated":
                path.write_bytes(path.read_bytes()[: max(60, path.stat().st_size // 2)])
    if (root / "sub").is_dir():  # a symlinked folder: its images are listed under the link's name
        (root / "linked").symlink_to(root / "sub", target_is_directory=True)


def _run(argv: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)  # an uncaught exception here is the traceback a user would see
    return code, stderr.getvalue()


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, in seconds
)
@given(specs=st.lists(file_spec, min_size=0, max_size=6))
def test_synth_on_odd_folders_ends_in_a_valid_result_or_a_clear_error(demo_bank_dir, specs):
    from cai_aug.io.images import list_images

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "normal images ü"
        root.mkdir()
        _write_folder(root, specs)
        out = Path(tmp) / "out put"
        argv = ["synth", "--normal", str(root), "--bank", str(demo_bank_dir), "--out", str(out), "--per-image", "1"]
        code, stderr = _run(argv)
        try:
            inputs = list_images(root)
        except ValueError:
            inputs = []
        if not inputs:
            assert code == 2 and "cai-aug synth: error: no images under" in stderr
            return
        assert code == 0, stderr
        records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        skipped_path = out / "skipped.jsonl"
        skipped = [json.loads(line) for line in skipped_path.read_text().splitlines()] if skipped_path.exists() else []
        keys = [p.relative_to(root).as_posix() for p in inputs]
        recorded = {r["normal"] for r in records}
        assert all(s["reason"] for s in skipped)
        assert {s["normal"] for s in skipped} | recorded <= set(keys)
        assert not ({s["normal"] for s in skipped} & recorded)
        assert len({r["image"] for r in records}) == len(records)  # nothing duplicated
        for record in records:
            source = Image.open(root / record["normal"])
            result = Image.open(out / record["image"])
            expected = EXPECTED_MODE.get(source.mode, source.mode)
            if source.mode == "P" and "transparency" in source.info:
                expected = "RGBA"
            assert result.mode == expected and result.size == source.size
            assert Image.open(out / record["mask"]).size == source.size
        # every usable input got its pseudo anomaly (the demo bank places one on anything >= 16 px)
        assert recorded | {s["normal"] for s in skipped} == set(keys)


@pytest.mark.parametrize(
    ("make_argv", "message"),
    [
        (lambda t, b: ["--normal", str(t / "absent"), "--bank", str(b), "--out", str(t / "o")], "does not exist"),
        (lambda t, b: ["--normal", str(t / "e"), "--bank", str(b), "--out", str(t / "o")], "no images under"),
        (lambda t, b: ["--normal", str(t / "f.png"), "--bank", str(b), "--out", str(t / "o")], "is not a folder"),
        (lambda t, b: ["--normal", str(t / "n"), "--bank", str(b), "--out", str(t / "f.png")], "is a file"),
        (lambda t, b: ["--normal", str(t / "n"), "--bank", str(t / "none"), "--out", str(t / "o")], "does not exist"),
    ],
    ids=["missing-normal", "empty-normal", "normal-is-a-file", "out-is-a-file", "missing-bank"],
)
def test_user_errors_are_one_line_messages(tmp_path, demo_bank_dir, make_argv, message):
    (tmp_path / "f.png").write_bytes(b"")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("no image here")
    (tmp_path / "n").mkdir()
    _picture("RGB", 32, 32, 0).save(tmp_path / "n" / "a.png")
    code, stderr = _run(["synth", *make_argv(tmp_path, demo_bank_dir), "--per-image", "1"])
    last = stderr.strip().splitlines()[-1]  # after the bank's progress bar
    assert code == 2 and last.startswith("cai-aug synth: error: ") and message in last
    assert "Traceback" not in stderr
