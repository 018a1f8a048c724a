"""Ray Data front end (extra ``cai_aug[ray]``): offline synthesis on a Ray cluster.

Two entry points:

* :class:`CAIMapper`, a callable class for ``Dataset.map_batches(CAIMapper, batch_format="numpy",
  compute=ray.data.ActorPoolStrategy(size=N), num_gpus=..., fn_constructor_kwargs={...})``. Each actor
  loads the anomaly bank once, runs the engine on its own device (CUDA when Ray gave it a GPU) and turns
  every input row (a normal image) into ``per_image`` output rows (pseudo anomalies) with the columns
  ``image_key``, ``index``, ``stem``, ``label``, ``source_class``, ``synthesis_type``, ``record`` (the
  manifest line, JSON, with every info field), ``skipped`` (empty, or why an input was left out, see
  ``skip_bad``) and, unless the actor writes the files itself (``out=``), ``image`` (in the input's own
  layout, dtype and channels: grey stays grey, uint16 stays uint16, alpha is copied) and ``mask``
  (``H x W`` uint8, 0/255). Images of different sizes in one dataset are fine: numpy batches of ragged
  images arrive, and leave, as object arrays.
* :func:`run_ray`, the ``cai-aug synth --engine ray`` back end: the same folder layout, manifest records
  and preview as the local engine (:func:`cai_aug.frontends.offline.run_local`). The actors read the normal
  images and write the pseudo anomalies themselves (atomically, under a temporary name, then renamed), so the
  input and output folders must be reachable by every worker (a shared file system on a multi-node
  cluster). The driver appends a manifest record only after the actor that made it has returned, i.e.
  after both of its files exist, so ``--resume`` continues a killed run exactly. Batches are recorded as
  they finish; at the end the manifest is put in the local engine's order. Inputs that cannot be used
  go to ``skipped.jsonl`` exactly as the local engine names them (or stop the run with ``strict``).

Every random decision is keyed by ``(seed, image key, anomaly index)`` (:mod:`cai_aug.engine.rng`) where the
image key is the path relative to the input folder: which actor, batch or node processes an image
changes nothing.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.engine.config import CAIConfig
from cai_aug.frontends.offline import (
    OfflineRecord,
    OutputFolder,
    list_normals,
    manifest_record,
    nothing_placed,
    read_normal,
    synthesize_normal,
)
from cai_aug.io.coerce import CoercedImage, coerce_image, require_min_side
from cai_aug.io.images import write_image, write_mask

__all__ = ["CAIMapper", "pool_resources", "relative_key", "run_ray", "sort_manifest", "write_batch"]

# CPUs left free for Ray Data's own tasks (reads, splits) on a local instance: without this, a pool of
# one-CPU actors that takes every core waits forever for the read task (see NOTES, "Scale-out").
_RESERVED_CPUS = 0.5


def _object_column(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array (numpy would otherwise try to stack equally sized images into one array)."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def _actor_device(requested: str | None) -> torch.device:
    """The device Ray gave this actor: CUDA when it was assigned a GPU, else the CPU."""
    if requested not in (None, "auto"):
        return torch.device(requested)
    try:
        import ray

        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # noqa: BLE001 - outside a Ray worker
        gpus = []
    if gpus and not torch.cuda.is_available():
        warnings.warn(
            f"Ray assigned GPU {gpus} to this actor but torch {torch.__version__} sees no CUDA device: "
            "running on the CPU (install a CUDA build of torch on the workers)",
            RuntimeWarning,
            stacklevel=2,
        )
    # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so ours is cuda:0.
    return torch.device("cuda") if gpus and torch.cuda.is_available() else torch.device("cpu")


def _actor_cpus() -> float | None:
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)) or None
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return None


def relative_key(path: str, root: str | os.PathLike | None, resolved: Path | None = None) -> str:
    """The image key of ``path`` (as Ray's ``path`` column gives it: absolute, relative to the driver's
    working folder, or with a file system scheme): its POSIX path relative to ``root``."""
    text = str(path)
    if "://" in text:
        text = text.split("://", 1)[1]
    if root is None:
        return PurePosixPath(text).as_posix()
    roots = [PurePosixPath(os.path.normpath(os.fspath(root)).replace(os.sep, "/"))]
    if resolved is not None:
        roots.append(PurePosixPath(resolved.as_posix()))
    normalized = PurePosixPath(os.path.normpath(text).replace(os.sep, "/"))
    for candidate in (normalized, PurePosixPath("/" + normalized.as_posix().lstrip("/"))):
        for base in roots:
            try:
                return candidate.relative_to(base).as_posix()
            except ValueError:
                continue
    raise ValueError(f"image {path} is not under the root folder {root}")


class CAIMapper:
    """Pseudo anomalies for a batch of normal images, as ``map_batches`` columns (one actor = one engine).

    Args:
        bank: anomaly bank folder (loaded once per actor) or an :class:`~cai_aug.engine.bank.AnomalyBank`.
        per_image: pseudo anomalies per normal image (the paper's multi-scale quotas, Algorithm 1).
        seed: base of every key; the same seed gives the same results wherever an image is processed.
        root: folder the image keys are relative to. Input rows carry either ``image`` (+ ``path``, as
            ``ray.data.read_images(root, include_paths=True)`` gives) or only a key column (the actor then
            reads ``root/<key>``). The key of an image is its path relative to ``root``, exactly as
            the local engine keys it, so both engines give the same records.
        out: when given, the actor writes ``images/<stem>.png`` and ``masks/<stem>_mask.png`` under this
            folder (atomically) and returns no pixel columns; the folder must be reachable by every worker.
        device: ``None``/``"auto"`` (CUDA if Ray assigned a GPU, else CPU) or an explicit device.
        classes, exclude: restrict the bank (see :meth:`AnomalyBank.from_folder`).
        image_column, path_column, key_column: input column names.
        skip_bad: an input image that cannot be used (unreadable, truncated, smaller than any pattern)
            becomes one row with ``index`` -1 and its reason in the ``skipped`` column, instead of an error
            that stops the pipeline (``run_ray`` turns those rows into ``skipped.jsonl``).
        **cai_kwargs: further :class:`~cai_aug.engine.cai.CAI` options (``mode``, ``quotas``, ``foreground``...).
    """

    def __init__(
        self,
        bank: str | os.PathLike | AnomalyBank,
        *,
        per_image: int = 10,
        seed: int = 0,
        root: str | os.PathLike | None = None,
        out: str | os.PathLike | None = None,
        device: str | None = None,
        classes: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        image_column: str = "image",
        path_column: str = "path",
        key_column: str = "key",
        skip_bad: bool = False,
        **cai_kwargs: Any,
    ) -> None:
        if per_image < 1:
            raise ValueError(f"per_image must be >= 1, got {per_image}")
        cpus = _actor_cpus()
        if cpus is not None:
            torch.set_num_threads(max(1, int(cpus)))
        self.device = _actor_device(device)
        if not isinstance(bank, AnomalyBank):
            bank = AnomalyBank.from_folder(bank, classes=classes, exclude=exclude)
        self.cai = CAI(bank, seed=seed, device=self.device, **cai_kwargs)
        bank.storage_on(self.device)  # ready on the actor's device before the first batch
        self.per_image = int(per_image)
        self.seed = int(seed)
        self.root_given = None if root is None else str(root)
        self.root = None if root is None else Path(root).resolve()
        self.out = None if out is None else Path(out)
        self.image_column, self.path_column, self.key_column = image_column, path_column, key_column
        self.skip_bad = bool(skip_bad)

    # -------------------------------------------------------------------------------------------- keys
    def _image_key(self, path: str) -> str:
        return relative_key(path, self.root_given, self.root)

    def _rows(self, batch: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray | None, set[int]]]:
        if self.key_column in batch:
            keys = [str(k) for k in batch[self.key_column]]
        elif self.path_column in batch:
            keys = [self._image_key(p) for p in batch[self.path_column]]
        else:
            raise KeyError(
                f"a batch needs a {self.key_column!r} or {self.path_column!r} column "
                f"(read_images(..., include_paths=True)); it has {sorted(batch)}"
            )
        images = list(batch[self.image_column]) if self.image_column in batch else [None] * len(keys)
        skips = [set(json.loads(s)) for s in batch["skip"]] if "skip" in batch else [set()] * len(keys)
        return list(zip(keys, images, skips))

    # -------------------------------------------------------------------------------------------- call
    def synthesize(self, image: CoercedImage, key: str) -> list[OfflineRecord]:
        """Algorithm 1 for one read normal image on the actor's device, as the local engine runs it."""
        return synthesize_normal(self.cai, image, key, self.per_image, checked=self.skip_bad)

    def _read(self, key: str, array: Any) -> CoercedImage:
        """The row's image (its ``image`` column, else the file ``root/key``), checked usable."""
        if array is None:
            if self.root is None:
                raise ValueError("rows without an image column need root= to read the images from")
            return read_normal(self.root, key)
        return require_min_side(coerce_image(array, name=f"image {key}"), f"image {key}")

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = ("image_key", "index", "stem", "label", "source_class", "synthesis_type", "record", "skipped")
        columns: dict[str, list] = {name: [] for name in names}
        if self.out is None:
            columns["image"], columns["mask"] = [], []

        def row(key: str, index: int, stem: str, label: int, source: str, kind: str, record: str, skipped: str):
            for name, value in zip(names, (key, index, stem, label, source, kind, record, skipped)):
                columns[name].append(value)

        for key, array, skip in self._rows(batch):
            try:
                image = self._read(key, array)
                records = self.synthesize(image, key)
                if not records and self.skip_bad:
                    raise ValueError(nothing_placed(key))
            except ValueError as error:
                if not self.skip_bad:
                    raise
                row(key, -1, "", 0, "", "", "", str(error))
                if self.out is None:
                    columns["image"].append(None)
                    columns["mask"].append(None)
                continue
            for record in records:
                if record.index in skip:
                    continue
                anomaly = record.anomaly
                pixels = image.restore(anomaly.image)  # the input's own mode, depth and alpha
                if self.out is not None:
                    write_image(self.out / "images" / f"{record.stem}.png", pixels)
                    write_mask(self.out / "masks" / f"{record.stem}_mask.png", anomaly.mask)
                else:
                    columns["image"].append(np.asarray(pixels))
                    columns["mask"].append((anomaly.mask[0] > 0.5).to(torch.uint8).mul(255).cpu().numpy())
                info = anomaly.info
                line = json.dumps(manifest_record(record, self.seed))
                row(
                    key,
                    record.index,
                    record.stem,
                    int(anomaly.label),
                    str(info.get("source_class")),
                    str(info.get("synthesis_type")),
                    line,
                    "",
                )
        out = {
            "image_key": np.array(columns["image_key"], dtype=object),
            "index": np.array(columns["index"], dtype=np.int64),
            "stem": np.array(columns["stem"], dtype=object),
            "label": np.array(columns["label"], dtype=np.int64),
            "source_class": np.array(columns["source_class"], dtype=object),
            "synthesis_type": np.array(columns["synthesis_type"], dtype=object),
            "record": np.array(columns["record"], dtype=object),
            "skipped": np.array(columns["skipped"], dtype=object),
        }
        if self.out is None:
            out["image"] = _object_column(columns["image"])
            out["mask"] = _object_column(columns["mask"])
        return out


def write_batch(output: OutputFolder, batch: Mapping[str, np.ndarray], *, strict: bool = False) -> int:
    """Write one output batch of :class:`CAIMapper` into an output folder; returns records added.

    Pixel columns, when present, are written first (atomically); a record goes into the manifest only
    once both of its files exist. Records already in the manifest are skipped, so resuming never
    duplicates one. Rows of skipped inputs (``skip_bad``) go to ``skipped.jsonl``, or, with ``strict``,
    stop the run with a ``ValueError``.
    """
    written = 0
    has_pixels = "image" in batch and "mask" in batch
    reasons = batch["skipped"] if "skipped" in batch else [""] * len(batch["record"])
    for i, (line, reason) in enumerate(zip(batch["record"], reasons)):
        if reason:
            key = str(batch["image_key"][i])
            if strict:
                raise ValueError(f"{reason} (strict: stopped at the first input that cannot be used)")
            output.skip(key, str(reason))
            continue
        record = json.loads(line)
        output.unskip(record["normal"])
        if has_pixels:
            written += output.add(record, batch["image"][i], np.asarray(batch["mask"][i]))
        else:
            written += output.add(record)
    return written


# ------------------------------------------------------------------------------------------------ driver
def _short_ray_tmpdir() -> None:
    """Ray keeps Unix sockets under its temp dir, whose path must stay short (about 100 bytes)."""
    if "RAY_TMPDIR" in os.environ:
        return
    if len(tempfile.gettempdir()) > 20 and os.path.isdir("/tmp"):
        os.environ["RAY_TMPDIR"] = "/tmp"


def _start_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local instance sized to this machine; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    _short_ray_tmpdir()
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)  # Ray counts this machine's CPUs and GPUs (cgroup limits included)
    return True


def pool_resources(workers: int | None, device: str, cluster: Mapping[str, float]) -> tuple[int, float, float]:
    """``(actors, CPUs per actor, GPUs per actor)`` for a cluster's resources.

    CPU actors share the cluster's CPUs minus a reserve for Ray Data's own tasks, as fractional CPUs, so
    that a pool as large as the CPU count never starves the read task (default: one actor per CPU).
    GPU actors default to one per GPU; more workers than GPUs share them (fractional GPUs), which also
    spreads the actors' CPU work (reading and PNG encoding) over more processes. GPU actors get the same
    fair share of the CPUs.
    """
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    if str(device).startswith("cuda"):
        if gpus < 1:
            raise RuntimeError(f"--device {device} asks for GPU actors but the Ray cluster has no GPU")
        workers = workers or int(gpus)
        per_gpu = min(1.0, gpus / workers)
    else:
        workers = workers or max(1, int(cpus))
        per_gpu = 0.0
    per_cpu = max(0.1, (cpus - _RESERVED_CPUS) / workers)
    return workers, math.floor(per_cpu * 100) / 100, math.floor(per_gpu * 100) / 100


def run_ray(args: Any, *, mapper: type[CAIMapper] = CAIMapper, strict: bool | None = None) -> OutputFolder:
    """``cai-aug synth --engine ray``: the local engine's output, made by a pool of Ray actors.

    Uses ``args.normal``, ``args.bank``, ``args.out``, ``args.per_image``, ``args.seed``, ``args.mode``,
    ``args.quotas``, ``args.foreground``, ``args.classes``, ``args.exclude``, ``args.device`` (``cuda`` =
    one GPU per actor), ``args.resume``, ``args.address`` (None: a local instance sized to the machine, or
    the one this process already runs), ``args.workers``, ``args.batch_size`` and ``args.strict``
    (overridden by ``strict``: stop at the first input that cannot be used instead of naming it in
    ``skipped.jsonl``). ``mapper`` is the actor class (a subclass of :class:`CAIMapper`).
    """
    import ray

    strict = bool(getattr(args, "strict", False)) if strict is None else strict
    folder = Path(args.normal).resolve()
    keys = list_normals(folder)
    output = OutputFolder(args.out, resume=bool(args.resume))
    per_image = int(args.per_image)
    todo = [key for key in keys if not output.is_done(key, per_image)]
    if todo:
        started = _start_ray(getattr(args, "address", None))
        try:
            workers, cpus, gpus = pool_resources(
                getattr(args, "workers", None), getattr(args, "device", "cpu"), ray.cluster_resources()
            )
            batch_size = max(1, int(getattr(args, "batch_size", 8) or 8))
            workers = max(1, min(workers, math.ceil(len(todo) / batch_size)))
            items = [{"key": key, "skip": json.dumps(sorted(output.done_indices(key)))} for key in todo]
            dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / batch_size))
            dataset = dataset.map_batches(
                mapper,
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=cpus,
                num_gpus=gpus,
                fn_constructor_kwargs={
                    "bank": str(Path(args.bank).resolve()),
                    "per_image": per_image,
                    "seed": int(args.seed),
                    "root": str(folder),
                    "out": str(output.root.resolve()),
                    "device": "auto" if gpus else "cpu",
                    "classes": args.classes,
                    "exclude": args.exclude,
                    "skip_bad": True,
                    # every engine option the caller set (checked here, not inside the actors)
                    "config": CAIConfig.from_attributes(args).to_dict(),
                },
            )
            # Batches are recorded as they finish (in any order), so a stopped run keeps all finished work.
            try:
                for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    write_batch(output, batch, strict=strict)
            except Exception as error:
                # A full disk or a read-only folder seen by a worker: the user's error, not Ray's.
                cause = _os_error_in(error)
                if cause is None or cause is error:
                    raise
                raise cause from error
        finally:
            if started:
                ray.shutdown()
    output.sort_manifest(keys)
    output.write_preview(missing_ok=True)
    return output


def _os_error_in(error: BaseException) -> OSError | None:
    """The ``OSError`` a Ray task failed with (Ray wraps it in its own exceptions), or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


def sort_manifest(output: OutputFolder, keys: Sequence[str]) -> None:
    """Put the manifest in the local engine's order (input order of the images, then anomaly index)."""
    output.sort_manifest(keys)
