"""`cai-aug synth` run as a user runs it on inputs that used to lose or mix data: names that collide,
names near the file-system limit or not UTF-8, images over the pixel limit, and resumes that would
mix two runs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cai_aug.io.demo_data import demo_images

REPO = Path(__file__).resolve().parents[2]


def _cli(*argv: str | os.PathLike) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "cai_aug", "synth", *map(os.fsdecode, argv)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _synth(normal: Path, bank: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("--normal", normal, "--bank", bank, "--out", out, "--per-image", "1", "--seed", "1", *extra)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _picture(path: Path | bytes, size: int, seed: int = 0) -> None:
    pixels = (demo_images(1, size, seed=seed)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    with open(path, "wb") as handle:  # bytes paths too: names that are not UTF-8
        Image.fromarray(pixels).save(handle, format="JPEG" if os.fsdecode(path).endswith(".jpg") else "PNG")


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cai-aug synth: error:" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_inputs_whose_names_would_collide_each_get_their_own_files(tmp_path, demo_bank_dir):
    normal = tmp_path / "normal"
    (normal / "sub").mkdir(parents=True)
    sizes = {"a.png": 48, "a.jpg": 56, "sub/b.png": 64, "sub__b.png": 72}  # told apart by their size
    for seed, (key, size) in enumerate(sizes.items()):
        _picture(normal / key, size, seed)
    result = _synth(normal, demo_bank_dir, tmp_path / "out", "--per-image", "2")
    assert result.returncode == 0, result.stderr
    records = _records(tmp_path / "out")
    assert sorted((r["normal"], r["index"]) for r in records) == sorted((k, i) for k in sizes for i in range(2))
    for kind in ("image", "mask"):
        on_disk = sorted(f"{p.parent.name}/{p.name}" for p in (tmp_path / "out" / f"{kind}s").iterdir())
        assert sorted(r[kind] for r in records) == on_disk  # one file per record, none shared
    for record in records:
        assert Image.open(tmp_path / "out" / record["image"]).size == (sizes[record["normal"]],) * 2


def test_names_near_the_limit_and_not_utf8_are_processed(tmp_path, demo_bank_dir):
    normal = tmp_path / "normal"
    normal.mkdir()
    names = [b"x" * 246 + b".png", b"caf\xe9 latin-1.png", b"\xff\xfe.png", b"plain.png"]
    for seed, name in enumerate(names):
        _picture(os.fsencode(normal) + b"/" + name, 48, seed)
    out = tmp_path / "out"
    result = _synth(normal, demo_bank_dir, out)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert sorted(os.fsencode(r["normal"]) for r in _records(out)) == sorted(names)
    assert not (out / "skipped.jsonl").exists()
    assert len(list((out / "images").iterdir())) == len(names)


def _header_only_png(path: Path, width: int, height: int) -> None:
    """A PNG that states its size and holds no pixel data: decoding it would fail as truncated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_an_image_over_the_pixel_limit_is_skipped_before_decoding(tmp_path, demo_bank_dir):
    normal = tmp_path / "normal"
    normal.mkdir()
    _picture(normal / "fine.png", 48)
    _header_only_png(normal / "huge.png", 10_000, 10_000)
    result = _synth(normal, demo_bank_dir, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [s["normal"] for s in skipped] == ["huge.png"]
    assert "10000x10000 is 100.0 megapixels, over the limit of 67.1 megapixels (not decoded)" in skipped[0]["reason"]
    assert [r["normal"] for r in _records(tmp_path / "out")] == ["fine.png"]


def _two_images(tmp_path: Path) -> Path:
    normal = tmp_path / "normal"
    normal.mkdir()
    for seed in range(2):
        _picture(normal / f"n{seed}.png", 48, seed)
    return normal


def test_a_resume_with_other_settings_is_refused_naming_each_difference(tmp_path, demo_bank_dir):
    normal, out = _two_images(tmp_path), tmp_path / "out"
    assert _synth(normal, demo_bank_dir, out).returncode == 0
    before = (out / "manifest.jsonl").read_bytes()
    line = _one_line_error(_synth(normal, demo_bank_dir, out, "--resume", "--seed", "2", "--mode", "mixed"))
    assert f"cannot resume {out}" in line
    assert "seed 2 (the run: 1)" in line and 'mode "mixed" (the run: "both")' in line
    assert "per_image" not in line and "bank" not in line
    line = _one_line_error(_synth(normal, demo_bank_dir, out, "--resume", "--per-image", "3", "--classes", "crack"))
    assert "per_image 3 (the run: 1)" in line and "bank " in line and "seed" not in line
    _picture(normal / "n2.png", 48, 2)  # the inputs changed
    assert "inputs " in _one_line_error(_synth(normal, demo_bank_dir, out, "--resume"))
    assert (out / "manifest.jsonl").read_bytes() == before


def test_a_resume_of_a_finished_run_says_nothing_was_left_to_do(tmp_path, demo_bank_dir):
    normal, out = _two_images(tmp_path), tmp_path / "out"
    first = _synth(normal, demo_bank_dir, out)
    assert first.returncode == 0 and first.stdout.startswith("wrote 2 pseudo anomalies"), first.stdout
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = _synth(normal, demo_bank_dir, out, "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"nothing left to do: {out} already holds the whole run (2 pseudo anomalies)")
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_engine_alone_decides_the_colour_of_a_grey_image_stored_as_rgb(tmp_path, demo_bank_dir):
    normal = tmp_path / "normal"
    normal.mkdir()
    grey = (demo_images(1, 64, seed=3)[0].mean(0).numpy() * 255).astype(np.uint8)
    Image.fromarray(np.dstack([grey] * 3)).save(normal / "grey_as_rgb.png")
    channels_equal = {}
    for flag in ("--grey-injection", "--no-grey-injection"):
        out = tmp_path / flag
        assert _synth(normal, demo_bank_dir, out, flag, "--per-image", "2").returncode == 0
        results = [np.asarray(Image.open(out / r["image"])).astype(int) for r in _records(out)]
        assert all(r.shape == (64, 64, 3) for r in results)
        channels_equal[flag] = all((r[..., 0] == r[..., 1]).all() and (r[..., 1] == r[..., 2]).all() for r in results)
    # luminance only by default; the source's colour when the engine is told so, as online
    assert channels_equal == {"--grey-injection": True, "--no-grey-injection": False}
