"""Fuzzing `cai-aug synth` over hostile folders: names of random bytes and lengths (not UTF-8, near the
file-name limit, colliding once flattened), nested folders and symlinks, every image mode and size,
empty, truncated, non-image and bomb files. Whatever the folder, a run

* ends with exit status 0 or 2, never a traceback;
* creates, changes or deletes nothing outside ``--out``;
* records each pseudo anomaly once, with its own image and mask, and no file without its record;
* killed with SIGKILL at any moment and resumed, gives the uninterrupted run's folder byte for byte.

Bounded for CI (``CAI_FUZZ_EXAMPLES``, default 8, and a quarter of it for the kills, at least 2: under a
minute in all), after the cases that broke earlier releases; raise it for a longer run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from cai_aug.cli import main

EXAMPLES = int(os.environ.get("CAI_FUZZ_EXAMPLES", "8"))
KILL_EXAMPLES = max(2, EXAMPLES // 4)
REPO = Path(__file__).resolve().parents[2]
# names that meet once folders become "__" and a suffix is dropped, or that are odd on their own
NAMES = [b"a", b"sub__b", b"b", b"with space", "\u00fcn\u00efc\u00f8d\u00e9".encode(), b"dots.in.name", b"-dash", b"_"]
FOLDERS = [b"", b"sub/", b"a b/\xe7/", b"deep/er/still/", b"\xff/"]
SUFFIXES = [b".png", b".PNG", b".tif", b".bmp", b".jpg"]
GOOD = ["L", "I;16", "RGB", "RGBA", "LA", "P", "grey3", "1"]
BAD = ["empty", "truncated", "text", "bomb", "hidden", "mask"]
KINDS = GOOD + BAD + ["symlink"]
SIDES = [8, 16, 17, 40, 64, 96]
# any byte but "/" and NUL; long names reach the 255-byte limit with their suffix
name_bytes = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),  # twice as likely: names that collide
    st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")),
    st.integers(200, 250).map(lambda n: b"L" * n),
)


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
    return Image.fromarray(rgb).convert(kind)


# what an input's mode becomes on output (formats are kept; a bilevel or palette file cannot hold a blend)
EXPECTED_MODE = {"1": "L", "P": "RGB", "I": "I;16"}

file_spec = st.tuples(
    st.sampled_from(KINDS),
    name_bytes,
    st.sampled_from(FOLDERS),
    st.sampled_from(SUFFIXES),
    st.sampled_from(SIDES),
    st.sampled_from(SIDES),
)


def _save(picture: Image.Image, path: bytes, suffix: bytes) -> None:
    formats = {b".png": "PNG", b".tif": "TIFF", b".bmp": "BMP", b".jpg": "JPEG"}
    with open(path, "wb") as handle:
        picture.save(handle, format=formats[suffix.lower()])


def _write_folder(root: Path, specs: list[tuple]) -> None:
    base = os.fsencode(root)
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    for index, (kind, name, folder, suffix, height, width) in enumerate(specs):
        name = name[: 250 - len(suffix)]
        if kind == "hidden":
            name = b"." + name
        if kind == "mask":
            name = name[:240] + b"_mask"
        if kind in ("bomb", "symlink"):
            suffix = b".png"
        picture = None
        if kind in GOOD or kind in ("hidden", "mask", "truncated"):
            picture = _picture("RGB" if kind in ("hidden", "mask", "truncated") else kind, height, width, index)
            if suffix.lower() == b".jpg" and picture.mode not in ("L", "RGB"):
                suffix = b".png"  # JPEG holds no alpha, palette or 16-bit plane
            if suffix.lower() == b".bmp" and picture.mode in ("I;16", "LA", "RGBA"):
                suffix = b".png"
        path = base + b"/" + folder + name + suffix
        if os.path.lexists(path):
            continue  # the same name drawn twice
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == "empty":
            open(path, "wb").close()
        elif kind == "text":
            with open(path, "wb") as handle:
                handle.write(b"not an image")
        elif kind == "bomb":
            with open(path, "wb") as handle:
                handle.write(_bomb())
        elif kind == "symlink":
            target = elsewhere / f"target{index}.png"
            _picture("RGB", height, width, index).save(target)
            os.symlink(os.fsencode(target), path)
        else:
            _save(picture, path, suffix)
            if kind == "truncated":
                with open(path, "r+b") as handle:
                    handle.truncate(max(60, os.path.getsize(path) // 2))
    if (root / "sub").is_dir() and not (root / "linked").exists():  # a symlinked folder: listed under its name
        (root / "linked").symlink_to(root / "sub", target_is_directory=True)


def _tree(root: Path, leave_out: Path | None = None) -> dict[bytes, tuple]:
    """Every entry under ``root`` (bytes names) with its kind, content and modification time."""
    state = {}
    skip = os.fsencode(leave_out) if leave_out is not None else None
    for current, folders, files in os.walk(os.fsencode(root)):
        folders[:] = [f for f in folders if os.path.join(current, f) != skip]
        for name in folders + files:
            path = os.path.join(current, name)
            info = os.lstat(path)
            if os.path.islink(path):
                state[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[path] = ("dir",)
            else:
                with open(path, "rb") as handle:
                    state[path] = ("file", handle.read(), info.st_mtime_ns)
    return state


def _run(argv: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)  # an uncaught exception here is the traceback a user would see
    return code, stderr.getvalue()


def _argv(root: Path, bank: Path, out: Path) -> list[str]:
    return ["synth", "--normal", str(root), "--bank", str(bank), "--out", str(out), "--per-image", "1", "--seed", "2"]


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, in seconds
)


# Names that broke earlier releases: outputs that collide once flattened, a name at the file-name limit,
# names and folders that are not UTF-8.
BROKE_BEFORE = [
    ("RGB", b"a", b"", b".png", 40, 40),
    ("L", b"a", b"", b".jpg", 40, 40),
    ("RGB", b"b", b"sub/", b".png", 40, 64),
    ("RGBA", b"sub__b", b"", b".png", 64, 40),
    ("RGB", b"L" * 246, b"", b".png", 40, 40),
    ("I;16", b"caf\xe9", b"\xff/", b".png", 40, 40),
]


@pytest.mark.slow
@FUZZ
@example(specs=BROKE_BEFORE)
@given(specs=st.lists(file_spec, min_size=0, max_size=6))
def test_synth_on_hostile_folders_keeps_its_invariants(demo_bank_dir, specs):
    from cai_aug.io.images import list_images

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "normal images \u00fc"
        root.mkdir()
        _write_folder(root, specs)
        out = Path(tmp) / "out put"
        outside = (_tree(Path(tmp)), _tree(demo_bank_dir))
        code, stderr = _run(_argv(root, demo_bank_dir, out))
        assert code in (0, 2) and "Traceback" not in stderr, stderr
        assert (_tree(Path(tmp), leave_out=out), _tree(demo_bank_dir)) == outside  # nothing touched outside --out
        try:
            inputs = list_images(root)
        except ValueError:
            inputs = []
        if not inputs:
            assert code == 2 and "cai-aug synth: error: no images under" in stderr
            return
        assert code == 0, stderr
        records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        for kind in ("image", "mask"):  # one file per record, none shared, none without its record
            names = [r[kind] for r in records]
            assert len(set(names)) == len(names)
            assert sorted(names) == sorted(f"{kind}s/{p.name}" for p in (out / f"{kind}s").iterdir())
        skipped_path = out / "skipped.jsonl"
        skipped = [json.loads(line) for line in skipped_path.read_text().splitlines()] if skipped_path.exists() else []
        keys = [p.relative_to(root).as_posix() for p in inputs]
        recorded = {r["normal"] for r in records}
        assert all(s["reason"] for s in skipped)
        assert not ({s["normal"] for s in skipped} & recorded)
        assert recorded | {s["normal"] for s in skipped} == set(keys)  # every input made or named
        for record in records:
            source = Image.open(root / record["normal"])
            result = Image.open(out / record["image"])
            expected = EXPECTED_MODE.get(source.mode, source.mode)
            if source.mode == "P" and "transparency" in source.info:
                expected = "RGBA"
            assert result.mode == expected and result.size == source.size
            assert Image.open(out / record["mask"]).size == source.size


@pytest.mark.slow
@settings(FUZZ, max_examples=KILL_EXAMPLES)
@given(specs=st.lists(file_spec, min_size=3, max_size=6), delay=st.floats(0.0, 1.0))
def test_synth_killed_at_any_moment_then_resumed_equals_an_uninterrupted_run(demo_bank_dir, specs, delay):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "normal"
        root.mkdir()
        _write_folder(root, [*specs, ("RGB", b"good", b"", b".png", 64, 64)])
        whole, killed = Path(tmp) / "whole", Path(tmp) / "killed"
        assert _run(_argv(root, demo_bank_dir, whole))[0] == 0
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "cai_aug", *_argv(root, demo_bank_dir, killed)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60  # from the output folder's creation: mid-run, or at its end
            while process.poll() is None and not killed.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
        code, stderr = _run([*_argv(root, demo_bank_dir, killed), "--resume"])
        assert code == 0, stderr
        assert _outputs(killed) == _outputs(whole)


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
    assert not (tmp_path / "o").exists()  # nothing left behind by a run that could not start
