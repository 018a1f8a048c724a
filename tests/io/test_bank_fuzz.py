"""Fuzzing `cai-aug build-bank` over generated datasets and banks: file and folder names of random bytes
and lengths, images and masks of random modes and sizes (0-byte, truncated, of another size, 16-bit
labels, empty), earlier manifests as people edit them or as an attacker writes them, hostile ``--map``
targets. Every run ends in exit 0 or 2 (one line, never a traceback), nothing outside the bank is
created, changed or deleted, a refused run leaves the bank as it was, and afterwards the MANIFEST lists
exactly the bank's entries.

Bounded for CI (``CAI_FUZZ_EXAMPLES``, default 50: about 5 s; raise it for a longer run).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from cai_aug.cli import main

EXAMPLES = int(os.environ.get("CAI_FUZZ_EXAMPLES", "50"))
IMAGE_KINDS = ["RGB", "L", "I;16", "RGBA", "P", "empty", "truncated", "text"]
MASK_KINDS = ["binary", "labels16", "jpeg-noise", "zero", "other-size", "empty", "truncated", "missing"]
MANIFESTS = [
    "none",
    "utf8-bom",
    "cp1252",
    "extra-columns",
    "escape-class",
    "absolute-class",
    "nul",
    "garbage",
    "linked",
]
MAPS = [None, "crack=stain", "crack=../escaped", "crack=/tmp/abs", "scratch=-", "weird=hole"]
DEFECTS = [b"crack", b"scratch", b"weird", b"good", b"Cr\xe4ck", b"sp ace", b"\xff\xfe"]
SUFFIXES = [b".png", b".PNG", b".tif", b".bmp"]

name_bytes = (
    st.one_of(
        st.binary(min_size=1, max_size=12),
        st.integers(min_value=180, max_value=240).map(lambda n: b"L" * n),  # near the 255-byte name limit
    )
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
    .filter(lambda b: b not in (b".", b".."))
)

source = st.tuples(
    name_bytes,
    st.sampled_from(SUFFIXES),
    st.sampled_from(IMAGE_KINDS),
    st.sampled_from(MASK_KINDS),
    st.sampled_from([1, 5, 16, 33]),
    st.sampled_from([1, 7, 16, 40]),
)
dataset = st.dictionaries(st.sampled_from(DEFECTS), st.lists(source, max_size=4), max_size=3)


def _picture(kind: str, height: int, width: int, seed: int) -> Image.Image:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 200)
    return Image.fromarray(rgb).convert(kind)


def _mask(kind: str, height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    inside = np.zeros((height, width), dtype=bool)
    inside[height // 4 : height // 4 + max(1, height // 2), width // 4 : width // 4 + max(1, width // 2)] = True
    if kind == "labels16":
        return Image.fromarray((inside * rng.integers(1, 129)).astype(np.uint16))
    if kind == "jpeg-noise":
        return Image.fromarray(np.where(inside, 250, rng.integers(0, 9, inside.shape)).astype(np.uint8))
    if kind == "zero":
        return Image.fromarray(np.zeros((height, width), np.uint8))
    if kind == "other-size":
        return Image.fromarray(np.full((height + 3, width + 1), 255, np.uint8))
    return Image.fromarray(inside.astype(np.uint8) * 255)


def _write(path: bytes, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def _encode(image: Image.Image, suffix: bytes) -> bytes:
    buffer = io.BytesIO()
    fmt = {b".png": "PNG", b".PNG": "PNG", b".tif": "TIFF", b".bmp": "BMP"}[suffix]
    if fmt == "BMP" and image.mode in ("I;16", "RGBA"):
        fmt = "PNG"  # BMP holds no 16-bit plane nor alpha; the suffix stays, the reader goes by content
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_dataset(root: Path, spec: dict) -> None:
    base = os.fsencode(root)
    for folder in (b"test/good", b"ground_truth"):
        os.makedirs(base + b"/" + folder, exist_ok=True)
    for defect, sources in spec.items():
        test, truth = base + b"/test/" + defect, base + b"/ground_truth/" + defect
        os.makedirs(test, exist_ok=True)
        os.makedirs(truth, exist_ok=True)
        for index, (stem, suffix, image_kind, mask_kind, height, width) in enumerate(sources):
            stem = stem[: 255 - len(b"_mask") - len(suffix)]
            if image_kind in ("empty", "text", "truncated"):
                data = {"empty": b"", "text": b"not an image"}.get(image_kind)
                data = data if data is not None else _encode(_picture("RGB", height, width, index), suffix)[:40]
            else:
                data = _encode(_picture(image_kind, height, width, index), suffix)
            _write(test + b"/" + stem + suffix, data)
            if mask_kind == "missing":
                continue
            if mask_kind == "empty":
                mask = b""
            else:
                mask = _encode(_mask(mask_kind, height, width, index), b".png")
                mask = mask[:30] if mask_kind == "truncated" else mask
            _write(truth + b"/" + stem + b"_mask.png", mask)


def _earlier_bank(bank: Path, kind: str, victim: Path) -> None:
    """A bank built before (two entries), its manifest then edited as ``kind`` says."""
    if kind == "none":
        return
    (bank / "crack").mkdir(parents=True)
    rows = [("old_crack_000", "crack"), ("old_crack_001", "crack")]
    for entry_id, cls in rows:
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(bank / cls / f"{entry_id}.png")
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(bank / cls / f"{entry_id}_mask.png")
    header = "id,class,source_repo,source_path,license_if_known"
    lines = [f"{entry_id},{cls},old,x,Société" for entry_id, cls in rows]
    if kind == "extra-columns":
        header += ",notes,"
        lines = [line + ",checked," for line in lines] + [",,,,,,"]
    if kind == "escape-class":
        lines[0] = lines[0].replace(",crack,", f",../{victim.name},")
    if kind == "absolute-class":
        lines[0] = lines[0].replace(",crack,", f",{victim},")
    if kind == "nul":
        lines[1] += "\0"
    text = "\r\n".join([header, *lines]) + "\r\n"
    encoding = {"utf8-bom": "utf-8-sig", "cp1252": "cp1252"}.get(kind, "utf-8")
    data = text.encode(encoding)
    if kind == "garbage":
        data = b"id,class\n\x81\x8d\x8f\x90\x9d,crack\n"
    if kind == "linked":  # class folders that lead elsewhere
        (bank / "stain").symlink_to(victim, target_is_directory=True)
        (bank / "hole").symlink_to(victim, target_is_directory=True)
    (bank / "MANIFEST.csv").write_bytes(data)


def _snapshot(root: Path, skip: Path) -> dict[bytes, tuple[int, str]]:
    """Every path under ``root`` outside ``skip``: its kind and content hash (links by their target)."""
    seen = {}
    skipped = os.fsencode(skip)
    for current, folders, files in os.walk(os.fsencode(root)):
        folders[:] = [name for name in folders if os.path.join(current, name) != skipped]
        for name in folders + files:
            path = os.path.join(current, name)
            if path == skipped:
                continue
            if os.path.islink(path):
                seen[path] = (2, os.fsdecode(os.readlink(path)))
            elif os.path.isdir(path):
                seen[path] = (1, "")
            else:
                with open(path, "rb") as handle:
                    seen[path] = (0, hashlib.sha256(handle.read()).hexdigest())
    return seen


def _entries(bank: Path) -> set[tuple[str, str]]:
    found = set()
    for image in bank.glob("*/*.png"):
        if image.parent.is_symlink():  # not the bank's own folder (the build refuses to write there)
            continue
        if not image.stem.endswith("_mask") and (image.parent / f"{image.stem}_mask.png").exists():
            found.add((image.parent.name, image.stem))
    return found


def _rows(bank: Path) -> set[tuple[str, str]]:
    with (bank / "MANIFEST.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len({row["id"] for row in rows}) == len(rows)
    return {(row["class"], row["id"]) for row in rows}


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``main`` with a strict UTF-8 stdout and a backslash-escaping stderr, as a terminal has them."""
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict")
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace")
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)  # an exception here is the traceback a user would see
    stdout.flush()
    stderr.flush()
    return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, in seconds
)
@given(
    spec=dataset,
    manifest=st.sampled_from(MANIFESTS),
    mapping=st.sampled_from(MAPS),
    strict=st.booleans(),
    threshold=st.sampled_from([None, "0", "10", "200"]),
)
def test_build_bank_on_generated_folders_keeps_its_invariants(spec, manifest, mapping, strict, threshold):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, bank, victim = root / "data set", root / "bank", root / "victim"
        data.mkdir()
        victim.mkdir()
        for name in ("old_crack_000.png", "old_crack_000_mask.png"):
            (victim / name).write_bytes(b"someone else's file")
        _write_dataset(data, spec)
        _earlier_bank(bank, manifest, victim)
        before, bank_before = _snapshot(root, bank), _snapshot(bank, root / "nowhere")
        argv = ["build-bank", "--mvtec", str(data), "--out", str(bank)]
        argv += ["--map", mapping] if mapping else []
        argv += ["--strict"] if strict else []
        argv += ["--mask-threshold", threshold] if threshold else []
        code, stdout, stderr = _run(argv)
        assert code in (0, 2), stderr
        assert _snapshot(root, bank) == before  # nothing outside the bank created, changed or deleted
        if code == 2:
            (line,) = stderr.strip().splitlines()
            assert line.startswith("cai-aug build-bank: error: ")
            assert (_snapshot(bank, root / "nowhere") if bank.exists() else {}) == bank_before  # all or nothing
            return
        assert stderr == ""
        assert stdout.rstrip().endswith(f"bank: {bank}")
        assert _rows(bank) == _entries(bank)
        assert not list(bank.glob(".build-*")) and not list(bank.rglob("*.tmp"))
