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
* :func:`run_ray`, the ``cai-aug synth --engine ray`` back end, with the signature of the local engine
  (:func:`cai_aug.frontends.offline.run_local`) and its runner (:func:`cai_aug.io.output.run_offline`):
  the same folder layout, records, skips, resume rules and preview. The actors read the normal images
  and write the pseudo anomalies themselves (atomically), so the input and output folders must be
  reachable by every worker (a shared file system on a multi-node cluster). The driver records a
  pseudo anomaly only after the actor that made it has returned, i.e. after both of its files exist,
  so a resume continues a killed run exactly.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.engine.config import CAIConfig
from cai_aug.frontends.offline import list_normals, outcome, read_normal, run_identity
from cai_aug.io.coerce import CoercedImage, coerce_image, require_min_side
from cai_aug.io.output import Outcome, OutputFolder, output_stem, run_offline, write_files

__all__ = ["CAIMapper", "pool_resources", "relative_key", "run_ray", "write_batch"]

# CPUs left free for Ray Data's own tasks (reads, splits) on a local instance: without this, a pool of
# one-CPU actors that takes every core waits forever for the read task.
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

        if not ray.is_initialized():  # get_runtime_context() would start a local Ray instance
            return None
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
        config, preset: the engine configuration (a :class:`~cai_aug.engine.config.CAIConfig`, its dict, or a
            preset name such as ``"paper"``), as every front end takes them.
        **cai_kwargs: any :class:`~cai_aug.engine.config.CAIConfig` field (``mode``, ``quotas``, ``anomalies``...)
            on top of ``config``.
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
        config: CAIConfig | Mapping[str, Any] | None = None,
        preset: str | None = None,
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
        self.cai = CAI(bank, config, preset=preset, seed=seed, device=self.device, **cai_kwargs)
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
    def synthesize(self, image: CoercedImage, key: str, skip: set[int] = frozenset()) -> Outcome:
        """Algorithm 1 for one read normal image on the actor's device, as the local engine runs it."""
        return outcome(self.cai, image, key, self.per_image, skip)

    def _read(self, key: str, array: Any) -> CoercedImage:
        """The row's image (its ``image`` column, else the file ``root/key``), checked usable."""
        if array is None:
            if self.root is None:
                raise ValueError("rows without an image column need root= to read the images from")
            return read_normal(self.root, key)
        return require_min_side(coerce_image(array, name=f"image {key}"), f"image {key}")

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = ("image_key", "index", "stem", "label", "source_class", "synthesis_type", "record", "skipped")
        columns: dict[str, list] = {name: [] for name in (*names, "image", "mask")}

        def row(key: str, index: int, record: Mapping[str, Any], skipped: str, image: Any, mask: Any) -> None:
            values = (
                key,
                index,
                output_stem(key, index) if record else "",
                int(record.get("label", 0)),
                str(record.get("source_class", "")),
                str(record.get("synthesis_type", "")),
                json.dumps(record) if record else "",
                skipped,
                image,
                mask,
            )
            for name, value in zip(columns, values):
                columns[name].append(value)

        for key, array, skip in self._rows(batch):
            try:
                made = self.synthesize(self._read(key, array), key, skip)
            except ValueError as error:
                if not self.skip_bad:
                    raise
                row(key, -1, {}, str(error), None, None)
                continue
            for record, pixels, mask in made.made:
                if self.out is not None:
                    write_files(self.out, record, pixels, mask)  # on the worker: the driver only records
                    pixels, mask = None, None
                else:
                    pixels, mask = np.asarray(pixels), (mask[0] > 0.5).to(torch.uint8).mul(255).cpu().numpy()
                row(key, record["index"], record, "", pixels, mask)
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


def outcomes(batch: Mapping[str, np.ndarray]) -> Iterator[Outcome]:
    """The :class:`~cai_aug.io.output.Outcome` of each input in one output batch of :class:`CAIMapper`."""
    has_pixels = "image" in batch and "mask" in batch
    reasons = batch["skipped"] if "skipped" in batch else [""] * len(batch["record"])
    current: Outcome | None = None
    for i, (line, reason) in enumerate(zip(batch["record"], reasons)):
        key = str(batch["image_key"][i])
        if current is not None and current.key != key:
            yield current
            current = None
        if reason:
            yield Outcome(key, reason=str(reason))
            continue
        current = current or Outcome(key)
        pixels = (batch["image"][i], np.asarray(batch["mask"][i])) if has_pixels else (None, None)
        current.made.append((json.loads(line), *pixels))
    if current is not None:
        yield current


def write_batch(output: OutputFolder, batch: Mapping[str, np.ndarray], *, strict: bool = False) -> int:
    """Write one output batch of :class:`CAIMapper` into an output folder; returns records added.

    Pixel columns, when present, are written first (atomically); a record goes into the manifest only
    once both of its files exist. Records already in the manifest are skipped, so resuming never
    duplicates one. Rows of skipped inputs (``skip_bad``) go to ``skipped.jsonl``, or, with ``strict``,
    stop the run with a ``ValueError``.
    """
    before = output.written
    for made in outcomes(batch):
        output.take(made, strict=strict)
    return output.written - before


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


def run_ray(
    normal: str | os.PathLike,
    cai: CAI,
    out: str | os.PathLike,
    *,
    per_image: int = 10,
    resume: bool = False,
    progress: bool = True,
    keys: Sequence[str] | None = None,
    strict: bool = False,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 8,
    mapper: type[CAIMapper] = CAIMapper,
) -> OutputFolder:
    """:func:`~cai_aug.frontends.offline.run_local` on a pool of Ray actors: the same folder, records,
    skips, resume rules and preview.

    Parameters
    ----------
    normal, cai, out, per_image, resume, progress, keys, strict
        As :func:`~cai_aug.frontends.offline.run_local`. Each actor gets a copy of ``cai``'s bank, options
        and seed; ``cai.device`` of type ``cuda`` asks for GPU actors.
    address
        Ray cluster address (None: the instance this process runs, else a local one sized to the machine).
    workers
        Actors (default: one per CPU, or per GPU).
    batch_size
        Images per batch.
    mapper
        The actor class (a subclass of :class:`CAIMapper`).

    Returns
    -------
    OutputFolder
        As :func:`~cai_aug.frontends.offline.run_local`.
    """
    import ray

    if per_image < 1:
        raise ValueError(f"per_image must be at least 1, got {per_image}")
    folder = Path(normal).resolve()
    keys = list(keys) if keys is not None else list_normals(folder)
    output = OutputFolder(out, resume=resume, run=run_identity(cai, keys, per_image))
    device = str(cai.device or "cpu")

    def produce(todo: list[str]) -> Iterator[Outcome]:
        started = _start_ray(address)
        try:
            pool, cpus, gpus = pool_resources(workers, device, ray.cluster_resources())
            size = max(1, int(batch_size))
            pool = max(1, min(pool, math.ceil(len(todo) / size)))
            items = [{"key": key, "skip": json.dumps(sorted(output.done_indices(key)))} for key in todo]
            dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / size))
            dataset = dataset.map_batches(
                mapper,
                batch_size=size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=pool),
                num_cpus=cpus,
                num_gpus=gpus,
                fn_constructor_kwargs={
                    "bank": cai.bank,
                    "per_image": per_image,
                    "seed": cai.seed,
                    "root": str(folder),
                    "out": str(output.root.resolve()),
                    "device": "auto" if gpus else "cpu",
                    "skip_bad": True,
                    "config": cai.config,
                },
            )
            # Batches are recorded as they finish (in any order), so a stopped run keeps all finished work.
            batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
            yield from _user_errors(made for batch in batches for made in outcomes(batch))
        finally:
            if started:
                ray.shutdown()

    return run_offline(output, keys, produce, per_image=per_image, strict=strict, progress=progress)


def _user_errors(items: Iterable[Outcome]) -> Iterator[Outcome]:
    """``items``, with a full disk or a read-only folder seen by a worker raised as the user's error, not Ray's."""
    try:
        yield from items
    except Exception as error:
        cause = _os_error_in(error)
        if cause is None or cause is error:
            raise
        raise cause from error


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
