"""`cai-aug synth` on folders like factories produce: formats kept, grey kept grey, bad files skipped,
--strict, and a full disk or read-only folder that loses nothing."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from cai_aug.cli import main
from cai_aug.io import images as images_module
from cai_aug.io.demo_data import demo_images

PER_IMAGE = 2
SEED = 5


def _colour(index: int, size: int = 64) -> np.ndarray:
    return (demo_images(index + 1, size, seed=7)[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """One normal image per kept format."""
    root = tmp_path_factory.mktemp("formats")
    grey = _colour(0).mean(-1)
    Image.fromarray(grey.astype(np.uint8)).save(root / "grey8.png")
    Image.fromarray((grey * 257 + 40).astype(np.uint16)).save(root / "grey16.png")
    Image.fromarray(_colour(1)).save(root / "rgb.png")
    alpha = np.tile(np.arange(64, dtype=np.uint8)[None] * 4, (64, 1))
    Image.fromarray(np.dstack([_colour(2), alpha]), "RGBA").save(root / "rgba.png")
    Image.fromarray(np.repeat(grey.astype(np.uint8)[..., None], 3, -1)).save(root / "grey_as_rgb.png")
    return root


def _synth(normal: Path, bank: Path, out: Path, *extra: str) -> int:
    argv = ["synth", "--normal", str(normal), "--bank", str(bank), "--out", str(out)]
    return main([*argv, "--per-image", str(PER_IMAGE), "--seed", str(SEED), *extra])


@pytest.fixture(scope="module")
def formats_out(formats, demo_bank_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("formats_out") / "out"
    assert _synth(formats, demo_bank_dir, out) == 0
    return out


def _pairs(out: Path, normal: Path, key: str):
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    chosen = [r for r in records if r["normal"] == key]
    assert len(chosen) == PER_IMAGE
    for record in chosen:
        yield Image.open(out / record["image"]), Image.open(normal / key), np.asarray(Image.open(out / record["mask"]))


@pytest.mark.parametrize("key", ["grey8.png", "grey16.png", "rgb.png", "rgba.png", "grey_as_rgb.png"])
def test_output_has_the_input_mode_and_bit_depth(formats_out, formats, key):
    records = [json.loads(line) for line in (formats_out / "manifest.jsonl").read_text().splitlines()]
    boxes = [_anomaly_boxes(r) for r in records if r["normal"] == key]
    for (result, source, mask), box in zip(_pairs(formats_out, formats, key), boxes):
        assert (result.mode, result.size) == (source.mode, source.size)
        got, want = np.asarray(result), np.asarray(source)
        assert got.dtype == want.dtype
        # far from the pseudo anomalies the input comes through exactly, 16-bit values included (a weak
        # anomaly's solved region reaches beyond its mask: its box, grown by the margin, bounds it)
        far = ~(binary_dilation(mask > 0, iterations=16) | box)
        assert far.any() and np.array_equal(got[far], want[far])
        assert not np.array_equal(got, want)  # and there is an anomaly


def _anomaly_boxes(record: dict, size: int = 64, grow: int = 8) -> np.ndarray:
    """Where a record's anomalies were made: each made anomaly's pattern box, grown by ``grow`` pixels."""
    near = np.zeros((size, size), dtype=bool)
    for anomaly in [record, *record.get("more", [])]:
        if anomaly["label"]:
            top, left, height, width = anomaly["box"]
            near[max(top - grow, 0) : top + height + grow, max(left - grow, 0) : left + width + grow] = True
    return near


def test_alpha_channel_is_carried_through_unchanged(formats_out, formats):
    for result, source, _ in _pairs(formats_out, formats, "rgba.png"):
        assert np.array_equal(np.asarray(result)[..., 3], np.asarray(source)[..., 3])


def test_sixteen_bit_output_uses_the_16_bit_range(formats_out, formats):
    for result, _, mask in _pairs(formats_out, formats, "grey16.png"):
        inside = np.asarray(result)[mask > 0]
        assert (inside % 257 != 0).any()  # not 8-bit values scaled up: the blend computed at full depth


def test_grey_given_as_three_equal_channels_gets_a_grey_anomaly(formats_out, formats):
    for result, _, _ in _pairs(formats_out, formats, "grey_as_rgb.png"):
        pixels = np.asarray(result)
        assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    """Two good images among every kind of bad input, sorted so the first bad one is known."""
    root = tmp_path_factory.mktemp("bad")
    Image.fromarray(_colour(0)).save(root / "a_good.png")
    Image.fromarray(_colour(1)).save(root / "z_good.png")
    (root / "b_empty.png").write_bytes(b"")
    (root / "c_truncated.png").write_bytes((root / "a_good.png").read_bytes()[:400])
    (root / "d_not_an_image.jpg").write_text("hello")
    Image.fromarray(_colour(2)[:12]).save(root / "e_tiny.png")
    return root


EXPECTED_SKIPS = {
    "b_empty.png": "empty file",
    "c_truncated.png": "truncated",
    "d_not_an_image.jpg": "cannot identify",
    "e_tiny.png": "smaller than any usable pattern",
}


def test_bad_inputs_are_skipped_and_named_with_their_reason(bad_folder, demo_bank_dir, tmp_path):
    assert _synth(bad_folder, demo_bank_dir, tmp_path / "out") == 0
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [s["normal"] for s in skipped] == sorted(EXPECTED_SKIPS)
    for entry in skipped:
        assert EXPECTED_SKIPS[entry["normal"]] in entry["reason"]
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted({r["normal"] for r in records}) == ["a_good.png", "z_good.png"]


def test_strict_stops_at_the_first_bad_input(bad_folder, demo_bank, tmp_path):
    from cai_aug.engine.cai import CAI
    from cai_aug.frontends.offline import run_local

    with pytest.raises(ValueError, match="b_empty.png: empty file"):
        run_local(bad_folder, CAI(demo_bank, seed=SEED), tmp_path, per_image=PER_IMAGE, progress=False, strict=True)
    records = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert {json.loads(line)["normal"] for line in records} == {"a_good.png"}  # nothing after the bad one


def test_a_fixed_input_is_used_on_resume(bad_folder, demo_bank_dir, tmp_path):
    normal = tmp_path / "normal"
    normal.mkdir()
    for name in ("a_good.png", "b_empty.png"):
        (normal / name).write_bytes((bad_folder / name).read_bytes())
    out = tmp_path / "out"
    assert _synth(normal, demo_bank_dir, out) == 0
    (normal / "b_empty.png").write_bytes((bad_folder / "z_good.png").read_bytes())  # the user replaces it
    assert _synth(normal, demo_bank_dir, out, "--resume") == 0
    assert not (out / "skipped.jsonl").exists()
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2 * PER_IMAGE


def _folder_state(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(formats, demo_bank_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    assert _synth(formats, demo_bank_dir, out) == 0
    return _folder_state(out)


@pytest.mark.parametrize("failing_write", [3, 8])
def test_full_disk_then_resume_equals_an_uninterrupted_run(
    formats, demo_bank_dir, uninterrupted, tmp_path, monkeypatch, failing_write
):
    from cai_aug.cli.synth import make_engine
    from cai_aug.frontends.offline import run_local

    real_write, calls = os.write, []

    def filling_disk(descriptor, data):
        calls.append(1)
        if len(calls) >= failing_write:  # from here on the device is full; this write gets half through
            if len(calls) == failing_write:
                real_write(descriptor, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(descriptor, data)

    out = tmp_path / "out"
    args = ["synth", "--normal", str(formats), "--bank", str(demo_bank_dir), "--out", str(out)]
    from cai_aug.cli import build_parser

    parsed = build_parser().parse_args([*args, "--per-image", str(PER_IMAGE), "--seed", str(SEED)])
    engine = make_engine(parsed)
    monkeypatch.setattr(images_module.os, "write", filling_disk)
    with pytest.raises(OSError, match="cannot write .*No space left on device"):
        run_local(formats, engine, out, per_image=PER_IMAGE, progress=False)
    monkeypatch.undo()
    # nothing half-written is recorded: every manifest line is whole and names complete files
    for line in (out / "manifest.jsonl").read_text().splitlines() if (out / "manifest.jsonl").exists() else []:
        record = json.loads(line)
        assert (out / record["image"]).is_file() and Image.open(out / record["image"]).load() is not None
    assert not [p for p in out.rglob(".*.tmp")]
    assert _synth(formats, demo_bank_dir, out, "--resume") == 0  # space freed
    assert _folder_state(out) == uninterrupted


def test_read_only_output_folder_is_a_clear_error(formats, demo_bank, tmp_path, monkeypatch):
    from cai_aug.engine.cai import CAI
    from cai_aug.frontends.offline import run_local

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    engine = CAI(demo_bank, seed=SEED)
    monkeypatch.setattr(images_module.os, "open", read_only)
    # refused before any work, naming the folder and the reason
    with pytest.raises(OSError, match=r"cannot create output folder .*out: Read-only file system"):
        run_local(formats, engine, tmp_path / "out", per_image=PER_IMAGE, progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_output_folder_that_turns_read_only_mid_run_records_nothing_half_written(
    formats, demo_bank, tmp_path, monkeypatch
):
    from cai_aug.engine.cai import CAI
    from cai_aug.frontends.offline import run_local
    from cai_aug.io.output import OutputFolder

    real_open = os.open

    def read_only_images(path, *args, **kwargs):
        if "images" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, *args, **kwargs)

    OutputFolder(tmp_path / "out")  # the folder exists and is writable at the start
    monkeypatch.setattr(images_module.os, "open", read_only_images)
    with pytest.raises(OSError, match=r"cannot write .*grey16_000.png: Read-only file system"):
        run_local(formats, CAI(demo_bank, seed=SEED), tmp_path / "out", per_image=PER_IMAGE, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == ""
    assert not list((tmp_path / "out" / "images").iterdir())
