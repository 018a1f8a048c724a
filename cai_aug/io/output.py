"""The output folder of an offline run: atomic files, a manifest, resumption, skipped inputs, a preview.

Layout (MVTec-style)::

    <out>/images/<stem>.png        pseudo anomalies, in the input image's mode and bit depth
    <out>/masks/<stem>_mask.png    their masks (0/255, 8-bit grey)
    <out>/manifest.jsonl           one JSON record per pseudo anomaly, paths relative to <out>
    <out>/skipped.jsonl            one JSON record per input image that could not be used, with why
    <out>/preview.png              a contact sheet of the first records

Guarantees, whatever stops a run (SIGKILL, a full disk, a read-only folder, a crashed worker):

* a file appears under its name only once complete (written as ``.<name>.tmp``, then renamed);
* a record is appended to the manifest only after both of its files exist, in one ``write`` call that
  is undone if the disk takes only part of it;
* ``resume=True`` keeps the records whose files exist, drops a line cut by a kill and leftover
  temporary files, and the writers skip what is done: the resumed folder equals an uninterrupted run.

Used by ``cai-aug synth`` (local and Ray) and ``cai-aug cdm-sample``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cai_aug.io.images import read_image, read_mask, to_tensor, write_bytes, write_image, write_mask
from cai_aug.io.preview import contact_sheet

MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.jsonl"
PREVIEW = "preview.png"
LOCK = ".cai_aug.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


@contextlib.contextmanager
def folder_lock(root: str | os.PathLike) -> Iterator[Path]:
    """Hold ``root``'s writer lock (a file holding our pid) for the duration; one writer per folder.

    A lock whose process is dead (a killed run) is taken over.

    Raises
    ------
    ValueError
        Another live process holds the folder, naming its pid.
    """
    path = Path(root) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a stale lock removed between our tries by another taker: try again
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and _alive(holder):
                raise ValueError(f"output folder {root} is in use by process {holder} (lock {path})") from None
            path.unlink(missing_ok=True)  # its writer died: take it over
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
        return
    raise ValueError(f"output folder {root}: could not take the lock {path}")


def output_stem(image_key: str, index: int, tag: str = "") -> str:
    """File stem of pseudo anomaly ``index`` of the input image ``image_key``.

    The key's folders become ``__`` so nested inputs with the same file name never collide:
    ``output_stem("sub/a.png", 3) == "sub__a_003"``; ``tag`` names another synthesiser
    (``"cdm"`` -> ``"sub__a_cdm003"``).
    """
    stem = image_key.rsplit(".", 1)[0].replace("/", "__")
    return f"{stem}_{tag}{index:03d}"


def append_line(path: Path, line: str) -> None:
    """Append one line to ``path`` whole or not at all (a partial write on a full disk is cut back)."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as error:
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    try:
        size = os.fstat(descriptor).st_size
        try:
            written = os.write(descriptor, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as error:
            try:
                os.ftruncate(descriptor, size)
            except OSError:
                pass  # the resume check drops a cut line anyway
            raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    finally:
        os.close(descriptor)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    write_bytes(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))


class OutputFolder:
    """The output folder of an offline run (see the module for the layout and the guarantees).

    Parameters
    ----------
    root
        The folder (created if missing).
    resume
        Continue the run already in ``root``. Without it, a folder that holds a manifest is refused.

    Attributes
    ----------
    done : dict of str to set of int
        The indices recorded per input key.
    skipped : dict of str to str
        Input keys that could not be used, with the reason.

    Raises
    ------
    FileExistsError
        ``root`` holds a run and ``resume`` is False.
    OSError
        ``root`` cannot be created or written (read-only, full), naming it.
    """

    def __init__(self, root: str | os.PathLike, resume: bool = False) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise FileExistsError(f"output folder {self.root} is a file")
        manifest = self.root / MANIFEST
        if manifest.exists() and not resume and manifest.stat().st_size > 0:
            raise FileExistsError(f"{self.root} already holds a run ({MANIFEST}); pass resume or a new folder")
        try:
            (self.root / "images").mkdir(parents=True, exist_ok=True)
            (self.root / "masks").mkdir(parents=True, exist_ok=True)
            manifest.touch(exist_ok=True)  # a run that records nothing still has its (empty) manifest
        except OSError as error:
            raise OSError(error.errno, f"cannot create output folder {self.root}: {error.strerror}") from error
        if not os.access(self.root, os.W_OK):
            raise PermissionError(errno.EACCES, f"output folder {self.root} is not writable")
        self.done: dict[str, set[int]] = {}
        self.skipped: dict[str, str] = {}
        if resume:
            self._remove_leftovers()
            if manifest.exists():
                self._load_done(manifest)
            self._load_skipped()

    # ------------------------------------------------------------------------------------------ resume
    def _remove_leftovers(self) -> None:
        """Temporary files of writes a kill interrupted: they would stay beside the real files forever."""
        for folder in (self.root, self.root / "images", self.root / "masks"):
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)

    def _load_done(self, manifest: Path) -> None:
        kept = []
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                image, mask, key, index = record["image"], record["mask"], record["normal"], int(record["index"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line cut by a kill
            if (self.root / image).exists() and (self.root / mask).exists():
                kept.append(line)
                self.done.setdefault(key, set()).add(index)
        # Rewritten without cut lines so the manifest stays valid JSON lines.
        _write_lines(manifest, kept)

    def _load_skipped(self) -> None:
        path = self.root / SKIPPED
        if not path.exists():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                self.skipped[str(record["normal"])] = str(record["reason"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    # ------------------------------------------------------------------------------------------- state
    def done_indices(self, image_key: str) -> set[int]:
        """The indices of ``image_key`` already recorded."""
        return self.done.get(image_key, set())

    def is_done(self, image_key: str, per_image: int) -> bool:
        """True when ``image_key`` has ``per_image`` records."""
        return len(self.done.get(image_key, ())) >= per_image

    # ----------------------------------------------------------------------------------------- writing
    def add(
        self,
        record: dict[str, Any],
        image: torch.Tensor | np.ndarray | Image.Image | None = None,
        mask: torch.Tensor | np.ndarray | None = None,
    ) -> bool:
        """Write one pseudo anomaly and record it; False (nothing written) when it is already recorded.

        Parameters
        ----------
        record
            The manifest record: at least ``image`` and ``mask`` (paths relative to the folder),
            ``normal`` (the input key) and ``index``.
        image, mask
            The pixels (see :func:`~cai_aug.io.images.write_image`); None when a worker has already
            written the files (they must then exist, e.g. on a shared file system).

        Raises
        ------
        FileNotFoundError
            ``image``/``mask`` were not given and their files do not exist.
        OSError
            A file or the manifest could not be written; nothing is recorded.
        """
        key, index = str(record["normal"]), int(record["index"])
        if index in self.done.get(key, ()):
            return False
        image_path, mask_path = self.root / record["image"], self.root / record["mask"]
        if image is not None:
            write_image(image_path, image)
        if mask is not None:
            write_mask(mask_path, mask)
        if not (image_path.exists() and mask_path.exists()):
            raise FileNotFoundError(
                f"{image_path} or {mask_path} is missing: the output folder must be reachable by every "
                "worker and by the driver (a shared file system on a multi-node cluster)"
            )
        append_line(self.root / MANIFEST, json.dumps(record))
        self.done.setdefault(key, set()).add(index)
        return True

    def skip(self, image_key: str, reason: str) -> None:
        """Name an input image that could not be used in ``skipped.jsonl`` (once, sorted by key)."""
        if self.skipped.get(image_key) == reason:
            return
        self.skipped[image_key] = reason
        self._write_skipped()

    def unskip(self, image_key: str) -> None:
        """Forget a skip (a resumed run could use the image after all, e.g. the user replaced it)."""
        if self.skipped.pop(image_key, None) is not None:
            self._write_skipped()

    def _write_skipped(self) -> None:
        # Rewritten whole (and atomically) in key order: the same inputs give the same file, in whatever
        # order workers reported them and however often the run was resumed.
        lines = [json.dumps({"normal": key, "reason": self.skipped[key]}) for key in sorted(self.skipped)]
        path = self.root / SKIPPED
        if lines:
            _write_lines(path, lines)
        else:
            path.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------- reading
    def records(self) -> list[dict]:
        """The manifest's records, in file order."""
        path = self.root / MANIFEST
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def sort_manifest(self, keys: Sequence[str]) -> None:
        """Put the manifest in input order (``keys``, then index), whatever order workers finished in.

        Rewritten under a temporary name and renamed, so a kill never leaves a half manifest.
        """
        path = self.root / MANIFEST
        if not path.exists():
            return
        position = {key: i for i, key in enumerate(keys)}
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

        def order(line: str) -> tuple[int, str, int]:
            record = json.loads(line)
            return position.get(record["normal"], len(position)), record["normal"], int(record["index"])

        ordered = sorted(lines, key=order)
        if ordered != lines:
            _write_lines(path, ordered)

    def write_preview(
        self, count: int = 24, caption: Callable[[dict], str] | None = None, *, missing_ok: bool = False
    ) -> Path | None:
        """Contact sheet of the first ``count`` records (sorted by file name) with mask outlines.

        Raises
        ------
        ValueError
            No record to show (unless ``missing_ok``: then None).
        """
        records = sorted(self.records(), key=lambda r: r["image"])[:count]
        if not records:
            if missing_ok:
                return None
            raise ValueError(f"{self.root} holds no pseudo anomalies to preview")
        caption = caption or (lambda r: f"{r.get('source_class')} {r.get('synthesis_type', r.get('synthesiser', ''))}")
        images = [to_tensor(read_image(self.root / r["image"], "RGB")) for r in records]
        masks = [torch.from_numpy(read_mask(self.root / r["mask"]))[None].float() for r in records]
        path = self.root / PREVIEW
        write_image(path, contact_sheet(images, masks, [caption(r) for r in records]))
        return path
