"""The files of an anomaly bank: ``MANIFEST.csv``, the names that may become paths, the defect-pixel rule.

One reader and one set of rules for the bank builder and the bank loader:

- ``MANIFEST.csv`` is read as people save it (UTF-8 with or without a byte-order mark, else
  Windows-1252/latin-1; extra columns kept; blank lines, surrounding spaces and missing trailing cells
  tolerated). What cannot be read unambiguously is refused with a ``ValueError`` naming the file and line.
- A class is a plain folder name and an id a plain file-name stem: nothing from a manifest, a flag or a
  file name may lead outside the bank folder (``..``, ``/``, absolute paths, hidden names are refused).
- A mask pixel is a defect where its value exceeds a threshold (0 by default: any non-zero label of an
  8-bit, 16-bit or colour mask).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MANIFEST = "MANIFEST.csv"
MANIFEST_COLUMNS = ("id", "class", "source_repo", "source_path", "license_if_known")
REQUIRED_COLUMNS = ("id", "class")
# a class is a folder name of letters, digits and "_-.+" (not starting with "."): never a path
_CLASS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
# an id + "_mask.png" + the writers' ".<name>.tmp" must fit the usual 255-byte file-name limit
MAX_ID_BYTES = 200
# modes whose values are read as they are (grey, 16/32-bit, float, bilevel, RGB, with or without alpha)
_VALUE_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB", "RGBA")


def check_class(name: str, where: str) -> str:
    """``name`` if it is a plain class folder name, else a ``ValueError`` saying ``where`` it came from."""
    if not isinstance(name, str) or not _CLASS.fullmatch(name):
        raise ValueError(
            f"{where}: class {name!r} is not a plain folder name (letters, digits, '_', '-', '.', '+'; "
            "no path, not hidden): refused, a bank class never leads outside the bank folder"
        )
    return name


def id_problem(entry_id: str) -> str | None:
    """Why ``entry_id`` cannot name an entry's files (None: it can)."""
    if not entry_id:
        return "an empty id"
    try:
        size = len(entry_id.encode("utf-8"))
    except UnicodeEncodeError:
        return f"id '{shown(entry_id)}' is not valid UTF-8 text (a file name of undecodable bytes)"
    if entry_id.startswith(".") or any(c in entry_id for c in "/\\") or not entry_id.isprintable():
        return f"id {entry_id!r} is no plain file name (path separator, control character or leading dot)"
    if size > MAX_ID_BYTES:
        return f"id of {size} bytes is longer than {MAX_ID_BYTES} (the file system's name limit)"
    return None


def shown(text: str | os.PathLike, *, lines: bool = False) -> str:
    """``text`` printable on any terminal: undecodable bytes of a file name and control characters as
    ``\\x..`` escapes (``lines``: newlines kept)."""
    text = str(text)
    try:
        data = text.encode("utf-8", "surrogateescape")  # a file name's undecodable bytes, back as they were
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")
    text = data.decode("utf-8", "backslashreplace")
    keep = "\n" if lines else ""
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode() for c in text)


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        utf8_line = data[: error.start].count(b"\n") + 1
    try:
        return data.decode("cp1252")  # what a spreadsheet saves as "CSV" on Windows (latin-1 and more)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}, line {utf8_line}: neither UTF-8 nor Windows-1252/latin-1 text "
            f"(byte {data[error.start]:#04x}); save the manifest as UTF-8 CSV"
        ) from error


def read_manifest(bank: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of ``<bank>/MANIFEST.csv`` (``[]`` when there is none), checked.

    Returns
    -------
    list of dict
        One dict per row, keys: the header's column names (stripped, lower case), values stripped.

    Raises
    ------
    ValueError
        Naming the file and line: no ``id`` or ``class`` column, a value under no column name, a row
        without id or class, an id given twice, an unsafe class or id, undecodable text, NUL bytes.
    """
    path = Path(bank) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return []
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    text = _decode(path.read_bytes(), path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    first_line: dict[str, int] = {}
    try:
        for cells in reader:
            line = reader.line_num
            cells = [cell.strip() for cell in cells]
            if not any(cells):
                continue  # blank lines and rows of empty cells, as spreadsheets write them
            if header is None:
                header = [cell.lower() for cell in cells]
                named = [name for name in header if name]
                missing = [name for name in REQUIRED_COLUMNS if name not in named]
                if missing:
                    raise ValueError(f"{path}, line {line}: no {' or '.join(missing)} column in header {cells}")
                if len(set(named)) != len(named):
                    raise ValueError(f"{path}, line {line}: a column is named twice in header {cells}")
                continue
            row = {name: "" for name in header if name}
            for index, cell in enumerate(cells):
                name = header[index] if index < len(header) else ""
                if name:
                    row[name] = cell
                elif cell:
                    raise ValueError(f"{path}, line {line}: value {cell!r} stands under no column name")
            for name in REQUIRED_COLUMNS:
                if not row[name]:
                    raise ValueError(f"{path}, line {line}: empty {name}")
            problem = id_problem(row["id"])
            if problem:
                raise ValueError(f"{path}, line {line}: {problem}")
            check_class(row["class"], f"{path}, line {line}")
            if row["id"] in first_line:
                earlier = first_line[row["id"]]
                raise ValueError(f"{path}, line {line}: id {row['id']!r} is listed already on line {earlier}")
            first_line[row["id"]] = line
            rows.append(row)
    except csv.Error as error:  # NUL bytes, an unterminated quote
        raise ValueError(f"{path}, line {reader.line_num}: {error}") from error
    return rows


def write_manifest(bank: str | os.PathLike, rows: Sequence[Mapping[str, str]]) -> None:
    """Write ``MANIFEST.csv`` (UTF-8) atomically: the standard columns first, then any extra ones the rows hold."""
    path = Path(bank) / MANIFEST
    extra = [name for row in rows for name in row if name not in MANIFEST_COLUMNS]
    columns = [*MANIFEST_COLUMNS, *dict.fromkeys(extra)]
    tmp = path.with_name(f".{MANIFEST}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()  # a left-over (or planted link) is replaced, never written through
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with open(descriptor, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in columns})
    os.replace(tmp, path)


def defect_mask(image: Image.Image, threshold: float = 0) -> np.ndarray:
    """The defect pixels of a mask image, ``(H, W)`` bool.

    A pixel is a defect where its value exceeds ``threshold`` in the file's own units (0..255 for 8-bit,
    0..65535 for 16-bit): with the default 0 any non-zero label counts, so a label mask with values
    1..N is read whole. Colour masks count a pixel whose largest colour channel exceeds it (palette
    files by their colours); an alpha channel is ignored.
    """
    if image.mode not in _VALUE_MODES:  # palette, CMYK, YCbCr ...: by colour
        image = image.convert("RGB")
    values = np.asarray(image)
    if values.ndim == 3:
        colour = values.shape[-1] - 1 if image.mode in ("LA", "RGBA") else values.shape[-1]
        values = values[..., :colour].max(axis=-1)
    return values > threshold
