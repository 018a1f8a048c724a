"""Ray Data front end (extra ``cai_aug[ray]``): offline synthesis on a Ray cluster.

Two entry points:

* :class:`CAIMapper`, a callable class for ``Dataset.map_batches(CAIMapper, batch_format="numpy",
  compute=ray.data.ActorPoolStrategy(size=N), num_gpus=..., fn_constructor_kwargs={...})``. Each actor
  loads the anomaly bank once, runs the engine on its own device (CUDA when Ray gave it a GPU) and turns
  every input row (a normal image) into ``per_image`` output rows (pseudo anomalies) with the columns
  ``image_key``, ``index``, ``stem``, ``label``, ``source_class``, ``synthesis_type``, ``record`` (the
  manifest line, JSON, with every info field) and, unless the actor writes the files itself (``out=``),
  ``image`` (``H x W x C`` uint8) and ``mask`` (``H x W`` uint8, 0/255). Images of different sizes in
  one dataset are fine: numpy batches of ragged images arrive, and leave, as object arrays.
* :func:`run_ray`, the ``cai-aug synth --engine ray`` back end: the same folder layout, manifest records
  and preview as the local engine (:func:`cai_aug.frontends.offline.run_local`). The actors read the normal images
  and write the pseudo anomalies themselves (atomically, under a temporary name, then renamed), so the
  input and output folders must be reachable by every worker (a shared file system on a multi-node
  cluster). The driver appends a manifest record only after the actor that made it has returned, i.e.
  after both of its files exist, so ``--resume`` continues a killed run exactly. Batches are recorded as
  they finish; at the end the manifest is put in the local engine's order.

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
from cai_aug.engine.matching import parse_quotas
from cai_aug.frontends.offline import MANIFEST, OfflineRecord, OutputFolder, list_normals, make_records, manifest_record
from cai_aug.io.images import read_image, to_tensor, to_uint8_array, write_image, write_mask

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


def _as_rgb(array: np.ndarray) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` -> ``(H, W, 3)`` uint8, as the local engine
    reads a file (PIL ``convert("RGB")``)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {array.shape}")
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        return np.ascontiguousarray(array[..., :3])
    if array.shape[-1] != 3:
        raise ValueError(f"an image must have 1, 3 or 4 channels, got {array.shape[-1]}")
    return array


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
    def synthesize(self, image: torch.Tensor, key: str) -> list[OfflineRecord]:
        """Algorithm 1 for one normal image ``(C, H, W)`` on the actor's device, as the local engine runs it."""
        return make_records(self.cai, image, key, self.per_image)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = ("image_key", "index", "stem", "label", "source_class", "synthesis_type", "record")
        columns: dict[str, list] = {name: [] for name in names}
        if self.out is None:
            columns["image"], columns["mask"] = [], []
        for key, array, skip in self._rows(batch):
            if array is None:
                if self.root is None:
                    raise ValueError("rows without an image column need root= to read the images from")
                array = read_image(self.root / key, "RGB")
            for record in self.synthesize(to_tensor(_as_rgb(array)).to(self.device), key):
                if record.index in skip:
                    continue
                anomaly = record.anomaly
                if self.out is not None:
                    write_image(self.out / "images" / f"{record.stem}.png", anomaly.image)
                    write_mask(self.out / "masks" / f"{record.stem}_mask.png", anomaly.mask)
                else:
                    columns["image"].append(to_uint8_array(anomaly.image))
                    columns["mask"].append((anomaly.mask[0] > 0.5).to(torch.uint8).mul(255).cpu().numpy())
                columns["image_key"].append(key)
                columns["index"].append(record.index)
                columns["stem"].append(record.stem)
                columns["label"].append(int(anomaly.label))
                columns["source_class"].append(str(anomaly.info.get("source_class")))
                columns["synthesis_type"].append(str(anomaly.info.get("synthesis_type")))
                columns["record"].append(json.dumps(manifest_record(record, self.seed)))
        out = {
            "image_key": np.array(columns["image_key"], dtype=object),
            "index": np.array(columns["index"], dtype=np.int64),
            "stem": np.array(columns["stem"], dtype=object),
            "label": np.array(columns["label"], dtype=np.int64),
            "source_class": np.array(columns["source_class"], dtype=object),
            "synthesis_type": np.array(columns["synthesis_type"], dtype=object),
            "record": np.array(columns["record"], dtype=object),
        }
        if self.out is None:
            out["image"] = _object_column(columns["image"])
            out["mask"] = _object_column(columns["mask"])
        return out


def write_batch(output: OutputFolder, batch: Mapping[str, np.ndarray]) -> int:
    """Write one output batch of :class:`CAIMapper` into an output folder; returns records added.

    Pixel columns, when present, are written first (atomically); a record goes into the manifest only
    once both of its files exist. Records already in the manifest are skipped, so resuming never
    duplicates one.
    """
    written = 0
    has_pixels = "image" in batch and "mask" in batch
    with (output.root / MANIFEST).open("a", encoding="utf-8") as manifest:
        for i, line in enumerate(batch["record"]):
            record = json.loads(line)
            key, index = record["normal"], int(record["index"])
            if index in output.done.get(key, ()):
                continue
            image_path, mask_path = output.root / record["image"], output.root / record["mask"]
            if has_pixels:
                write_image(image_path, np.asarray(batch["image"][i]))
                write_mask(mask_path, np.asarray(batch["mask"][i]))
            if not (image_path.exists() and mask_path.exists()):
                raise FileNotFoundError(
                    f"{image_path} or {mask_path} is missing: the output folder must be reachable by "
                    "every Ray worker and by the driver (a shared file system on a multi-node cluster)"
                )
            manifest.write(line + "\n")
            manifest.flush()
            output.done.setdefault(key, set()).add(index)
            written += 1
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


def run_ray(args: Any, *, mapper: type[CAIMapper] = CAIMapper) -> OutputFolder:
    """``cai-aug synth --engine ray``: the local engine's output, made by a pool of Ray actors.

    Uses ``args.normal``, ``args.bank``, ``args.out``, ``args.per_image``, ``args.seed``, ``args.mode``,
    ``args.quotas``, ``args.foreground``, ``args.classes``, ``args.exclude``, ``args.device`` (``cuda`` =
    one GPU per actor), ``args.resume``, ``args.address`` (None: a local instance sized to the machine, or
    the one this process already runs), ``args.workers`` and ``args.batch_size``. ``mapper`` is the actor
    class (a subclass of :class:`CAIMapper`).
    """
    import ray

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
            items = [{"key": key, "skip": json.dumps(sorted(output.done.get(key, ())))} for key in todo]
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
                    "mode": args.mode,
                    "quotas": parse_quotas(args.quotas),
                    "foreground": args.foreground,
                },
            )
            # Batches are recorded as they finish (in any order), so a stopped run keeps all finished work.
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                write_batch(output, batch)
        finally:
            if started:
                ray.shutdown()
    sort_manifest(output, keys)
    output.write_preview()
    return output


def sort_manifest(output: OutputFolder, keys: Sequence[str]) -> None:
    """Put the manifest in the local engine's order (input order of the images, then anomaly index).

    Rewritten under a temporary name and renamed, so a kill never leaves a half manifest.
    """
    path = output.root / MANIFEST
    if not path.exists():
        return
    position = {key: i for i, key in enumerate(keys)}
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def order(line: str) -> tuple[int, int]:
        record = json.loads(line)
        return position.get(record["normal"], len(position)), int(record["index"])

    ordered = sorted(lines, key=order)
    if ordered != lines:
        tmp = path.with_name(f".{MANIFEST}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in ordered), encoding="utf-8")
        os.replace(tmp, path)
