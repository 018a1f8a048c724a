"""The output folder of an offline run: paths, records, atomic files, resumption, skipped inputs, a
preview, and the one offline loop (:func:`run_offline`) of the local engine, Ray and the CDM sampler.

Layout (MVTec-style)::

    <out>/images/<stem>.png        pseudo anomalies, in the input image's mode and bit depth
    <out>/masks/<stem>_mask.png    their masks (0/255, 8-bit grey)
    <out>/manifest.jsonl           one JSON record per pseudo anomaly, paths relative to <out>
    <out>/skipped.jsonl            one JSON record per input image that could not be used, with why
    <out>/run.json                 what defines the run (seed, options, bank, inputs), for resumes
    <out>/preview.png              a contact sheet of the first records

``<stem>`` is :func:`output_stem`: different inputs never share a file, and every name fits the file
system. Guarantees, whatever stops a run (SIGKILL, a full disk, a read-only folder, a crashed worker):

* a file appears under its name only once complete (written as ``.<name>.tmp``, then renamed);
* a record is appended to the manifest only after both of its files exist, in one ``write`` call that
  is undone if the disk takes only part of it;
* ``resume=True`` refuses a run made with other settings, keeps the records whose files exist, drops a
  line cut by a kill and leftover temporary files, and the writers skip what is done: the resumed
  folder equals an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
RUN = "run.json"


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

    A lock whose process is dead (a killed run) is taken over. A folder this call created is removed
    again when the run leaves it empty (it stopped before writing anything).

    Raises
    ------
    ValueError
        Another live process holds the folder, naming its pid.
    """
    path = Path(root) / LOCK
    created = not path.parent.exists()
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
            if created:
                with contextlib.suppress(OSError):  # not empty: the run wrote there
                    path.parent.rmdir()
        return
    raise ValueError(f"output folder {root}: could not take the lock {path}")


# A hashed stem ends in "-" and ten hex digits; a readable stem never does (see key_stem).
_DIGEST = re.compile(r"-[0-9a-f]{10}$")
# Longest stem in UTF-8 bytes: the longest file made from it, ".<stem>_<tag><index>_mask.png.tmp", must
# stay under the usual file-name limit of 255 bytes.
MAX_STEM_BYTES = 200
_PREFIX_BYTES = 120


def _plain(text: str) -> bool:
    """True for text that is a safe file-name part: valid UTF-8, no control characters, not hidden."""
    if not text or text.startswith("."):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a non-UTF-8 file name (undecodable bytes kept as surrogates)
        return False
    return text.isprintable()


def _readable(parts: list[str]) -> str:
    """``parts`` joined by ``__``, each made printable and valid UTF-8, cut to :data:`_PREFIX_BYTES`."""
    text = "__".join(parts)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in text).lstrip(".")
    return text.encode("utf-8")[:_PREFIX_BYTES].decode("utf-8", "ignore") or "image"


def key_stem(image_key: str) -> str:
    """The file stem of an input image key: readable where that is unambiguous, else with a digest.

    The key's folders become ``__`` and a ``.png`` suffix is dropped (``"sub/a.png"`` -> ``"sub__a"``);
    another suffix stays (``"a.jpg"`` -> ``"a.jpg"``). A key whose readable form could also come from
    another key (a ``__`` or an outer ``_`` in a part, a ``.`` left in a ``.png`` name, a name without
    suffix), or that is not a plain UTF-8 name (control characters, undecodable bytes, a leading ``.``),
    or that is longer than :data:`MAX_STEM_BYTES`, gets a readable prefix and ``-`` plus ten hex digits of
    its digest (``"sub__b.png"`` -> ``"sub__b-1a2b3c4d5e"``). So two different keys never share files,
    whatever their names, and every output file name stays within the file system's limit.
    """
    parts = image_key.split("/")
    base, dot, suffix = parts[-1].rpartition(".")
    if dot and suffix == "png" and base and "." not in base:
        last = base
    elif dot and base:
        last = parts[-1]
    else:
        last = ""  # no suffix: "a" would read as "a.png"
    named = [*parts[:-1], last]
    readable = "__".join(named)
    plain = (
        all(_plain(p) and p[0] != "_" and p[-1] != "_" and "__" not in p for p in named)
        and len(readable.encode("utf-8")) <= MAX_STEM_BYTES
        and not _DIGEST.search(readable)
    )
    if plain:
        return readable
    digest = hashlib.blake2b(image_key.encode("utf-8", "surrogateescape"), digest_size=5).hexdigest()
    return f"{_readable(named if last else parts)}-{digest}"


def output_stem(image_key: str, index: int, tag: str = "") -> str:
    """File stem of pseudo anomaly ``index`` of the input image ``image_key``: :func:`key_stem`, the tag
    of the synthesiser if any (``"cdm"``) and the index.

    >>> output_stem("sub/a.png", 3), output_stem("a.png", 0, "cdm"), output_stem("a.jpg", 1)
    ('sub__a_003', 'a_cdm000', 'a.jpg_001')
    """
    return f"{key_stem(image_key)}_{tag}{index:03d}"


def new_record(image_key: str, index: int, seed: int | None = None, tag: str = "", **info: Any) -> dict[str, Any]:
    """The manifest record of pseudo anomaly ``index`` of ``image_key``: its files (relative to the
    folder), its input key, its index, the seed and ``info`` (the synthesiser's decisions)."""
    stem = output_stem(image_key, index, tag)
    record = {"image": f"images/{stem}.png", "mask": f"masks/{stem}_mask.png", "normal": image_key, "index": index}
    if seed is not None:
        record["seed"] = seed
    return {**record, **info}


def digest(parts: Iterable[bytes]) -> str:
    """Sixteen hex digits of a digest of ``parts`` (each length-prefixed, so no two lists give one text)."""
    hasher = hashlib.blake2b(digest_size=8)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()


def describe_inputs(keys: Sequence[str]) -> str:
    """The inputs of a run as :class:`OutputFolder` stores them: their count and a digest of their keys."""
    return f"{len(keys)} images, digest {digest(key.encode('utf-8', 'surrogateescape') for key in keys)}"


def write_files(
    root: str | os.PathLike,
    record: dict[str, Any],
    image: torch.Tensor | np.ndarray | Image.Image,
    mask: torch.Tensor | np.ndarray,
) -> None:
    """Write a record's image and mask under ``root`` (atomically), without recording it.

    For workers that write the files while the driver keeps the manifest (:meth:`OutputFolder.add`
    without pixels records them).
    """
    write_image(Path(root) / record["image"], image)
    write_mask(Path(root) / record["mask"], mask)


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
        Continue the run already in ``root``. Without it, a folder that holds a run is refused.
    run
        What defines the run (seed, options, inputs ...: JSON values by name), stored in ``run.json``.
        A resume with other values is refused, naming each difference. None: nothing stored or checked.

    Attributes
    ----------
    done : dict of str to set of int
        The indices recorded per input key.
    skipped : dict of str to str
        Input keys that could not be used, with the reason.
    written : int
        Records added by this object (not by an earlier run).

    Raises
    ------
    FileExistsError
        ``root`` holds a run and ``resume`` is False.
    ValueError
        ``resume`` of a run made with another ``run``.
    OSError
        ``root`` cannot be created or written (read-only, full), naming it.
    """

    def __init__(self, root: str | os.PathLike, resume: bool = False, run: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise FileExistsError(f"output folder {self.root} is a file")
        manifest, settings = self.root / MANIFEST, self.root / RUN
        started = settings.exists() or (manifest.exists() and manifest.stat().st_size > 0)
        if started and not resume:
            held = RUN if settings.exists() else MANIFEST
            raise FileExistsError(f"{self.root} already holds a run ({held}); pass resume or a new folder")
        self.run = None if run is None else json.loads(json.dumps(dict(run)))  # as it reads back from the file
        if resume and started and self.run is not None:
            self._check_run(settings)
        try:
            (self.root / "images").mkdir(parents=True, exist_ok=True)
            (self.root / "masks").mkdir(parents=True, exist_ok=True)
            if self.run is not None and not settings.exists():
                # before any record: a folder with records always says which run made them
                write_bytes(settings, (json.dumps(self.run, indent=1, sort_keys=True) + "\n").encode("utf-8"))
            manifest.touch(exist_ok=True)  # a run that records nothing still has its (empty) manifest
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else error.strerror
            raise OSError(error.errno, f"cannot create output folder {self.root}: {reason}") from error
        if not os.access(self.root, os.W_OK):
            raise PermissionError(errno.EACCES, f"output folder {self.root} is not writable")
        self.done: dict[str, set[int]] = {}
        self.skipped: dict[str, str] = {}
        self.written = 0
        if resume:
            self._remove_leftovers()
            if manifest.exists():
                self._load_done(manifest)
            self._load_skipped()

    def _check_run(self, settings: Path) -> None:
        """Refuse to resume a run made with other settings, naming each difference."""
        try:
            stored = json.loads(settings.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(
                f"cannot resume {self.root}: it holds records but not the settings that made them ({RUN}), so "
                "the resumed run could not be checked to be the same; write to a new folder"
            ) from None
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot resume {self.root}: its {RUN} is unreadable ({error})") from error
        if not isinstance(stored, dict):
            raise ValueError(f"cannot resume {self.root}: its {RUN} is not a JSON object")
        assert self.run is not None
        differences = [
            _difference(name, self.run, stored)
            for name in dict.fromkeys([*self.run, *stored])
            if self.run.get(name) != stored.get(name)
        ]
        if differences:
            raise ValueError(
                f"cannot resume {self.root}: it holds a run made with other settings: {'; '.join(differences)}. "
                "Resume with the run's settings, or write to a new folder"
            )

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
            written the files (:func:`write_files`; they must then exist, e.g. on a shared file system).

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
        if image is not None and mask is not None:
            write_files(self.root, record, image, mask)
        if not (image_path.exists() and mask_path.exists()):
            raise FileNotFoundError(
                f"{image_path} or {mask_path} is missing: the output folder must be reachable by every "
                "worker and by the driver (a shared file system on a multi-node cluster)"
            )
        append_line(self.root / MANIFEST, json.dumps(record))
        self.done.setdefault(key, set()).add(index)
        self.written += 1
        return True

    def take(self, outcome: Outcome, *, strict: bool = False) -> None:
        """Record what a synthesiser made of one input: its pseudo anomalies, or why it was skipped.

        Raises
        ------
        ValueError
            The input was skipped and ``strict`` is set: the run stops there.
        """
        if outcome.reason:
            if strict:
                raise ValueError(f"{outcome.reason} (strict: stopped at the first input that cannot be used)")
            self.skip(outcome.key, outcome.reason)
            return
        self.unskip(outcome.key)
        for record, image, mask in outcome.made:
            self.add(record, image, mask)

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


Pixels = torch.Tensor | np.ndarray | Image.Image


@dataclass
class Outcome:
    """What a synthesiser made of one input image.

    Attributes
    ----------
    key
        The input's key.
    made
        ``(record, image, mask)`` per pseudo anomaly (see :meth:`OutputFolder.add`; image and mask None
        when a worker has written the files).
    reason
        Why the input could not be used (then ``made`` is empty).
    """

    key: str
    made: list[tuple[dict[str, Any], Pixels | None, Pixels | None]] = field(default_factory=list)
    reason: str = ""


def run_offline(
    output: OutputFolder,
    keys: Sequence[str],
    produce: Callable[[list[str]], Iterable[Outcome]],
    *,
    per_image: int,
    strict: bool = False,
    progress: bool = True,
    desc: str = "cai-aug synth",
) -> OutputFolder:
    """The offline loop of every synthesiser: the inputs not done yet -> records, skips, a preview.

    Parameters
    ----------
    output
        The output folder (opened with the run's settings).
    keys
        Every input key of the run, in order.
    produce
        Called once with the keys still to do; yields one :class:`Outcome` per key, in any order (the
        manifest is put in input order at the end).
    per_image
        Pseudo anomalies per input: an input with that many records is done.
    strict
        Stop with a ``ValueError`` at the first input that cannot be used, instead of naming it in
        ``skipped.jsonl`` and going on.
    progress, desc
        A progress bar and its label.

    Returns
    -------
    OutputFolder
        ``output``; ``.written`` counts the records this call added, ``.skipped`` the inputs left out.
    """
    from tqdm.auto import tqdm

    todo = [key for key in keys if not output.is_done(key, per_image)]
    if todo:
        outcomes = produce(todo)
        try:
            with tqdm(total=len(todo), desc=desc, unit="image", disable=not progress) as bar:
                for outcome in outcomes:
                    output.take(outcome, strict=strict)
                    bar.update(1)
        finally:
            close = getattr(outcomes, "close", None)
            if close is not None:  # a generator's clean-up (a Ray instance it started) runs now
                close()
    output.sort_manifest(keys)
    output.write_preview(missing_ok=True)
    return output


def _difference(name: str, now: dict, stored: dict) -> str:
    """One setting that differs between this run and the stored one, as the refusal names it."""
    if name not in stored:  # a run of an older release, made before the option existed
        return f"{name} {json.dumps(now[name])} (the run predates this option)"
    if name not in now:
        return f"{name} (the run: {json.dumps(stored[name])}; this release has no such setting)"
    return f"{name} {json.dumps(now[name])} (the run: {json.dumps(stored[name])})"
