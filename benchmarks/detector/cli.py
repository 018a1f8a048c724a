"""Command line of the UNet benchmark (``python -m benchmarks.detector --help``)."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cai_aug.engine import rng
from cai_aug.frontends.validation import SourceSplit, bank_source_counts, source_of, split_sources

from . import authenticity as auth
from .data import (
    LeakageError,
    check_leakage,
    image_size,
    list_images,
    load_image,
    load_mask,
    load_mvtec,
    resize_mask,
    working_shape,
)
from .metrics import compute_all
from .report import COLUMNS, bar_plot, contact_sheet, map_sheet, markdown, read_csv, summary, write_csv
from .synthesisers import DRAEM, NSA, CAISynth, CDMSynth, CutPaste, LibraryCAI, Synthesiser
from .train import DEFAULT_SEEDS, PRESETS, SELECTION, EvalSet, to_native, train_detector
from .validation import KINDS, VAL_OPTIONS, VAL_SEED, f1_threshold, holdout, pixel_f1, selection_quality

BASELINES = ("cutpaste", "nsa-n", "nsa-m", "draem", "draem-anomalib")
_CAI_RE = re.compile(
    r"^cai-(?P<mode>[nmb])(?P<paper>-paper)?(?P<abl>(?:-no-(?:pe|stm|ils))*)(?:-x(?P<k>[1-9]))?"
    r"(?:-p(?P<p>\d{1,3}))?(?:-mask-(?P<mask>maj|hys))?(?:@(?P<q>\d+:\d+:\d+))?$"
)
_MODE_LETTERS = {"n": "normal", "m": "mixed", "b": "both"}


def parse_cai_name(name: str) -> dict | None:
    """``cai-n``, ``cai-m``, ``cai-b`` (normal or mixed guidance per sample), ``-paper`` (the engine's paper
    preset: the source's colour on grey targets, exact Poisson solve), ablations ``-no-pe``/``-no-stm``/
    ``-no-ils`` (combinable), ``-x3`` (three anomalies per image, the engine's ``anomalies``),
    ``-p50`` (``paste_weight=0.5``), ``-mask-maj`` / ``-mask-hys`` (``mask_rule`` majority, the paper's, or
    hysteresis; the engine's default otherwise), quotas ``@6:2:2``."""
    m = _CAI_RE.match(name)
    if not m:
        return None
    abl = set(re.findall(r"-no-(pe|stm|ils)", m["abl"] or ""))
    quotas = tuple(int(x) for x in m["q"].split(":")) if m["q"] else (4, 3, 3)
    if sum(quotas) == 0:
        raise ValueError(f"{name}: quotas must not all be zero")
    return {
        "mode": _MODE_LETTERS[m["mode"]],
        "preset": "paper" if m["paper"] else "default",
        "quotas": quotas,
        "use_poisson": "pe" not in abl,
        "use_stm": "stm" not in abl,
        "use_ils": "ils" not in abl,
        "anomalies": int(m["k"] or 1),
        "paste_weight": int(m["p"] or 0) / 100,
        "mask_rule": {"maj": "majority", "hys": "hysteresis"}.get(m["mask"] or ""),
    }


def valid_synth(name: str) -> bool:
    return name in BASELINES or name in ("cdm", "real-kfold") or parse_cai_name(name) is not None


def needs_bank(args: argparse.Namespace) -> bool:
    cai = any(parse_cai_name(s) for s in args.synths)
    return cai or (any(s in ("draem", "draem-anomalib") for s in args.synths) and not args.draem_source)


def validation_split(args: argparse.Namespace) -> SourceSplit | None:
    """The bank's split by source dataset (``--val-sources`` or automatic; the ``--bank-exclude`` sources
    left out first), or None without a bank, without validation, or when the bank has one source only
    (then validation and training share it, as the outputs say)."""
    if not hasattr(args, "val_split"):
        args.val_split = None
        if args.bank and args.val_fraction > 0:
            excluded = set(args.bank_exclude or [])
            counts = {k: v for k, v in bank_source_counts(args.bank).items() if k not in excluded}
            if len(counts) >= 2:
                args.val_split = split_sources(counts, args.val_source_fraction, validation=args.val_sources)
    return args.val_split


def training_exclude(args: argparse.Namespace) -> list[str] | None:
    """Sources no training synthesiser sees: ``--bank-exclude`` and the validation sources."""
    split = validation_split(args)
    out = list(args.bank_exclude or []) + list(split.validation if split else [])
    return out or None


def bank_textures(args: argparse.Namespace, keep: set[str] | None = None) -> list[Path]:
    """The bank's images as a texture source: those of ``keep`` (source datasets), else all but
    ``training_exclude``."""
    images = list_images(Path(args.bank))
    if keep is not None:
        return [p for p in images if source_of(p.stem) in keep]
    drop = set(training_exclude(args) or [])
    return [p for p in images if source_of(p.stem) not in drop and p.stem not in drop]


def build_synthesiser(name: str, args: argparse.Namespace, seed: int) -> Synthesiser:
    if name == "cutpaste":
        return CutPaste()
    if name in ("nsa-n", "nsa-m"):
        return NSA(mixed=name == "nsa-m")
    if name == "draem":
        return DRAEM(list_images(Path(args.draem_source)) if args.draem_source else bank_textures(args))
    if name == "draem-anomalib":
        from .anomalib_baseline import AnomalibPerlin

        return AnomalibPerlin(args.draem_source or bank_textures(args))
    if name == "cdm":
        return build_cdm(args, seed)
    spec = parse_cai_name(name)
    if spec is None:
        raise ValueError(f"unknown synthesiser {name!r}")
    return CAISynth(
        name,
        args.bank,
        classes=args.classes,
        exclude=training_exclude(args),
        seed=seed,
        device=args.device,
        foreground=args.foreground,
        **spec,
    )


def check_cdm(args: argparse.Namespace) -> None:
    """Fail early, with the reason, when the ``cdm`` slot cannot be filled."""
    try:
        import cai_aug.cdm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means the slot is unavailable
        raise SystemExit(f"--synth cdm: cai_aug.cdm does not import ({exc}); install the cdm extra") from exc
    if not args.cdm_checkpoint:
        raise SystemExit(
            "--synth cdm needs --cdm-checkpoint DIR (a cdm-train folder); --cdm-pretrained DIR names the local "
            "diffusion weights when the checkpoint's own record of them is not usable"
        )


def build_cdm(args: argparse.Namespace, seed: int) -> Synthesiser:
    """CDM pseudo anomalies: ``CDMSampler.from_checkpoint``, masks from CAI on the same bank."""
    check_cdm(args)
    from cai_aug import AnomalyBank
    from cai_aug.cdm import CDMSampler

    bank = AnomalyBank.from_folder(args.bank, classes=args.classes, exclude=args.bank_exclude) if args.bank else None
    sampler = CDMSampler.from_checkpoint(
        args.cdm_checkpoint,
        pretrained=args.cdm_pretrained,
        bank=bank,
        seed=seed,
        device=args.device,
        steps=args.cdm_steps,
    )
    return CDMSynth(sampler)


# ------------------------------------------------------------------------------------------ arguments


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.detector",
        description="Train DRAEM's discriminative UNet on normal + pseudo-anomalous images from each "
        "synthesiser and evaluate it on the real test set (the CAI paper's benchmark).",
    )
    p.add_argument(
        "--data",
        nargs="+",
        help="MVTec-layout dataset(s) (train/good, test/<defect>, ground_truth/<defect>), or a folder of "
        "them: several domains run in one go, with one summary table across them",
    )
    p.add_argument("--bank", help="anomaly bank folder (<class>/<id>.png + <id>_mask.png, MANIFEST.csv)")
    p.add_argument(
        "--synth",
        default="cai-n,cai-m,nsa-n,nsa-m,draem,cutpaste",
        help="comma list: cai-n, cai-m, cai-b (normal or mixed per sample), cai-n-paper (the engine's paper "
        "preset), nsa-n, nsa-m, draem, draem-anomalib (anomalib's "
        "PerlinAnomalyGenerator), cutpaste, real-kfold, cdm, ablations cai-n-no-pe/-no-stm/-no-ils, quota "
        "variants like cai-n@6:2:2, cai-n-x3 (3 anomalies per image), cai-n-p50 (paste_weight 0.5), cai-b-x3-mask-maj "
        "(the paper's majority-filtered mask; -mask-hys: hysteresis)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="smoke",
        help="smoke: 64 px, 5 epochs (a pipeline check, cannot rank); crop: working resolution 256 px on the "
        "long side (native when smaller), 128-px training crops holding the pseudo anomaly, whole test "
        "images, cosine schedule, seeds 0,1,2 (about 3 min per synthesiser, seed and domain on 2 CPU "
        "cores); paper: 256x256, width 64, 200 epochs",
    )
    p.add_argument("--seed", type=int, help="one seed (default 0; the crop preset runs 0,1,2)")
    p.add_argument("--seeds", help="comma list of seeds (overrides --seed), e.g. 0,1,2")
    p.add_argument("--reference", default="cai-n", help="synthesiser the paired differences are taken to")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (auto: cuda when available)")
    p.add_argument("--out", default="runs/unet_benchmark")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--per-image", type=int, help="pseudo anomalies per normal image (preset default)")
    g.add_argument("--total", type=int, help="total pseudo anomalies, spread round-robin over the images")
    p.add_argument("--classes", help="comma list of bank classes for CAI (e.g. crack,scratch,stain)")
    p.add_argument("--bank-exclude", help="comma list of source datasets (id prefix / source_repo) or ids")
    p.add_argument(
        "--dataset-name",
        help="comma list of names of the dataset under test for the leakage "
        "guard (default: its folder names and the source_repo of its sources.csv)",
    )
    p.add_argument("--force", action="store_true", help="use a bank that holds the dataset under test")
    p.add_argument("--draem-source", help="anomaly-source image folder of DRAEM (default: the bank's images)")
    p.add_argument("--foreground", default="auto", help="CAI foreground mode")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the normal training images held out for the pseudo-anomaly validation splits "
        "(0: none; needs --bank)",
    )
    p.add_argument(
        "--val-sources",
        help="comma list of the bank's source datasets (id prefixes) that make the validation anomalies; "
        "training never sees them (default: chosen by a hash of their names, within --val-source-fraction)",
    )
    p.add_argument("--val-source-fraction", type=float, default=0.25, help="largest share of bank entries validating")
    p.add_argument("--val-per-image", type=int, default=1, help="pseudo anomalies per held-out normal image")
    p.add_argument(
        "--fid-weights",
        help="local feature-extractor file for FID/KID (TorchScript or pickled "
        "module, e.g. torch-fidelity's Inception-v3)",
    )
    p.add_argument("--no-authenticity", action="store_true", help="skip detectability and seam statistics")
    p.add_argument("--eval-only", metavar="DIR", help="recompute all metrics from saved maps of a run")
    p.add_argument("--cdm-checkpoint")
    p.add_argument("--cdm-pretrained")
    p.add_argument("--cdm-steps", type=int, default=50, help="DDIM steps of the CDM sampler")
    p.add_argument("--size", type=int, help="override the preset's image size")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--width", type=int, help="override the preset's UNet width")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--kfold", type=int, help="folds of real-kfold (preset default)")
    p.add_argument(
        "--best-by",
        choices=sorted(SELECTION),
        default="mean",
        help="epoch selection criterion (mean of pixel AUROC, AP and PRO by default)",
    )
    p.add_argument("--map-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--sheet", type=int, default=16, help="pseudo anomalies on each contact sheet")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --out (per domain) and skip the synthesiser x seed runs they hold",
    )
    args = p.parse_args(argv)
    args.synths = _csv_list(args.synth) or []
    args.classes = _csv_list(args.classes)
    args.bank_exclude = _csv_list(args.bank_exclude)
    args.dataset_names = _csv_list(args.dataset_name)
    args.val_sources = _csv_list(args.val_sources)
    if args.seeds:
        args.seed_list = [int(s) for s in _csv_list(args.seeds)]
    elif args.seed is not None:
        args.seed_list = [args.seed]
    else:
        args.seed_list = list(DEFAULT_SEEDS.get(args.preset, (0,)))
    if args.eval_only:
        return args
    if not args.data:
        p.error("--data is required (or --eval-only DIR)")
    bad = [s for s in args.synths if not valid_synth(s)]
    if bad:
        p.error(f"unknown synthesiser(s) {bad}")
    if needs_bank(args) and not args.bank:
        p.error("--bank is required for CAI (and for DRAEM without --draem-source)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def expand_data(paths: list[str]) -> list[Path]:
    """The MVTec-layout folders named by ``--data``: each path is one (it has ``train/good``) or a folder
    whose sub-folders with ``train/good`` are (sorted by name)."""
    out: list[Path] = []
    for text in paths:
        path = Path(text)
        if (path / "train" / "good").is_dir():
            out.append(path)
            continue
        subs = sorted(p for p in path.iterdir() if (p / "train" / "good").is_dir()) if path.is_dir() else []
        if not subs:
            raise FileNotFoundError(f"{path} is neither an MVTec-layout folder nor a folder of them")
        out.extend(subs)
    names = [domain_name(p) for p in out]
    if len(set(names)) != len(names):
        raise FileNotFoundError(f"two --data folders share a name: {names}")
    return out


def domain_name(path: Path) -> str:
    return Path(path).resolve().name


def resolve_preset(args: argparse.Namespace):
    preset = PRESETS[args.preset]
    over = {k: getattr(args, k) for k in ("size", "epochs", "width", "batch", "lr", "kfold")}
    over = {k: v for k, v in over.items() if v is not None}
    if args.per_image is not None:
        over["per_image"] = args.per_image
    preset = replace(preset, **over)
    if preset.size % 32:
        raise SystemExit(f"--size must be divisible by 32 (the UNet pools five times), got {preset.size}")
    return preset


def assignment(n_images: int, per_image: int, total: int | None) -> list[tuple[int, int]]:
    """``(image index, anomaly index)`` of every pseudo anomaly: ``per_image`` for each image, or
    ``total`` spread round-robin (image ``j % n``, anomaly index ``j // n``)."""
    if total is not None:
        return [(j % n_images, j // n_images) for j in range(total)]
    return [(i, k) for i in range(n_images) for k in range(per_image)]


def _map_name(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "__", rel.rsplit(".", 1)[0]) + ".npy"


# ------------------------------------------------------------------------------------------------ run


class Bench:
    """One domain: its images at the working resolution, and the runs of every synthesiser and seed."""

    def __init__(self, args: argparse.Namespace, data_root: str | Path | None = None, out: Path | None = None) -> None:
        self.args = args
        self.preset = resolve_preset(args)
        self.device = torch.device(args.device)
        self.out = Path(out or args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = not args.quiet
        self.data = load_mvtec(data_root or expand_data(args.data)[0])
        self.domain = domain_name(self.data.root)
        S = self.preset.size
        # the working resolution: S x S (paper, smoke), or S on the long side with the aspect kept and
        # never above native (crop); every image of the domain is brought to the first one's
        self.shape = working_shape(image_size(self.data.train[0]), S) if self.preset.keep_aspect else (S, S)
        shape = self.shape
        keys = [p.relative_to(self.data.root).as_posix() for p in self.data.train]
        normals = torch.stack(
            [load_image(p, shape) for p in tqdm(self.data.train, desc="load train", disable=not self.progress)]
        )
        # normals held out of training make the pseudo-anomaly validation splits (needs the bank)
        held = holdout(keys, args.val_fraction) if args.bank and not getattr(args, "eval_only", None) else []
        train = [i for i in range(len(keys)) if i not in set(held)]
        self.image_keys = [keys[i] for i in train]
        self.normals = normals[train]
        self.val_keys = [keys[i] for i in held]
        self.val_normals = normals[held]
        test = self.data.test
        images = torch.stack(
            [load_image(t.image, shape) for t in tqdm(test, desc="load test", disable=not self.progress)]
        )
        masks = [load_mask(t.mask) if t.mask is not None else None for t in test]
        shapes = [m.shape if m is not None else image_size(t.image) for m, t in zip(masks, test)]
        low = [resize_mask(m, shape)[0].numpy() > 0 if m is not None else None for m in masks]
        self.evalset = EvalSet(images, low, masks, [tuple(s) for s in shapes])
        self.anom_idx = [i for i, t in enumerate(test) if t.mask is not None]
        self.good_idx = [i for i, t in enumerate(test) if t.mask is None]
        self.real_crops = auth.crops([images[i] for i in self.anom_idx], [low[i] for i in self.anom_idx])
        self.rows: list[dict] = []
        self.fid_extractor = auth.load_feature_extractor(args.fid_weights) if args.fid_weights else None
        self.valsets = self.make_valsets() if held else {}

    # -- pseudo-anomaly validation splits ----------------------------------------------------------
    def validation_text(self) -> str:
        """Which validation split was used, in words (for the reports)."""
        if not self.valsets:
            return "no pseudo-anomaly validation (no --bank or --val-fraction 0): selection on the test set only"
        split = validation_split(self.args)
        how = (
            split.describe()
            if split
            else "the bank has one source dataset: validation and training share it (not a source split)"
        )
        n = {k: sum(m is not None for m in v.masks_low) for k, v in self.valsets.items()}
        return (
            f"pseudo-anomaly validation: {len(self.val_keys)} of {len(self.val_keys) + len(self.image_keys)} normal "
            f"training images held out (good) + {n.get('val', 0)} CAI (library defaults) and "
            f"{n.get('val-perlin', 0)} DRAEM-Perlin pseudo anomalies on them; {how}"
        )

    def make_valsets(self) -> dict[str, EvalSet]:
        """``val``: the library's CAI with the validation sources; ``val-perlin``: DRAEM's generator with
        their images as textures. Each split: the held-out normals as good images plus
        ``--val-per-image`` pseudo anomalies on each (a failed one counts as good)."""
        split = validation_split(self.args)
        if split:
            cai_exclude = list(self.args.bank_exclude or []) + list(split.training)
            textures = bank_textures(self.args, keep=set(split.validation))
        else:
            cai_exclude = self.args.bank_exclude
            textures = bank_textures(self.args)
        synths = {
            "val": LibraryCAI(
                self.args.bank,
                exclude=cai_exclude,
                seed=VAL_SEED,
                device=self.args.device,
                foreground=self.args.foreground,
                **VAL_OPTIONS,
            ),
            "val-perlin": DRAEM(textures),
        }
        out = {}
        pairs = assignment(len(self.val_normals), self.args.val_per_image, None)
        for name, synth in synths.items():
            synth.prepare(self.val_normals, self.val_keys)
            idx = [a for a, _ in pairs]
            keys = rng.sample_keys(VAL_SEED, [self.val_keys[a] for a in idx], anomaly_index=[k for _, k in pairs])
            imgs, msk = synth.generate(self.val_normals[idx].to(self.device), keys.to(self.device), ids=idx)
            imgs, msk = imgs.detach().cpu().clamp(0, 1), msk.detach().cpu() > 0
            images = torch.cat([self.val_normals, imgs])
            masks = [None] * len(self.val_normals) + [m[0].numpy() if m.any() else None for m in msk]
            self.out.joinpath("contact_sheets").mkdir(parents=True, exist_ok=True)
            n = min(self.args.sheet, len(imgs))
            contact_sheet(imgs[:n], msk[:n].float(), self.out / "contact_sheets" / f"validation_{name}.png", name)
            out[name] = EvalSet(images, masks, masks, [tuple(images.shape[-2:])] * len(images))
        (self.out / "validation.json").write_text(
            json.dumps(
                {
                    "held_out": self.val_keys,
                    "split": (
                        {"validation": split.validation, "training": split.training, "counts": split.counts}
                        if split
                        else "shared"
                    ),
                },
                indent=1,
            )
        )
        return out

    # -- pseudo anomalies --------------------------------------------------------------------------
    def synthesise(self, synth: Synthesiser, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        pairs = assignment(len(self.normals), self.preset.per_image, self.args.total)
        synth.prepare(self.normals, self.image_keys)
        xs, ys = [], []
        t0 = time.perf_counter()
        bs = 32
        for i in tqdm(range(0, len(pairs), bs), desc=f"synth {synth.name}", disable=not self.progress, leave=False):
            chunk = pairs[i : i + bs]
            idx = [a for a, _ in chunk]
            keys = rng.sample_keys(seed, [self.image_keys[a] for a in idx], anomaly_index=[k for _, k in chunk])
            imgs, msk = synth.generate(self.normals[idx].to(self.device), keys.to(self.device), ids=idx)
            xs.append((imgs.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8))
            ys.append((msk.detach().cpu() > 0).to(torch.uint8))
        dt = time.perf_counter() - t0
        return torch.cat(xs), torch.cat(ys), dt / max(len(pairs), 1)

    def authenticity(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
        if self.args.no_authenticity:
            return {}
        keep = [i for i in range(len(y)) if y[i].any()]
        imgs = [x[i].float() / 255 for i in keep]
        msks = [y[i, 0].numpy() for i in keep]
        pseudo = auth.crops(imgs, msks)
        res = {
            "seam_ratio": auth.seam_ratio(imgs, msks),
            "detectability": auth.detectability(self.real_crops, pseudo, seed=seed),
        }
        if self.fid_extractor is not None:
            res.update(auth.fid_kid(self.fid_extractor, self.real_crops, pseudo))
        return res

    # -- maps --------------------------------------------------------------------------------------
    def save_maps(
        self,
        folder: Path,
        maps: list[np.ndarray],
        items: list[int],
        meta: dict,
        folds: list[int] | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for j, (amap, ti) in enumerate(zip(maps, items)):
            t = self.data.test[ti]
            rel = t.image.relative_to(self.data.root).as_posix()
            name = _map_name(rel) if folds is None else f"fold{folds[j]}__{_map_name(rel)}"
            np.save(folder / name, amap)
            row = {
                "image": str(t.image.resolve()),
                "mask": str(t.mask.resolve()) if t.mask else "",
                "map": name,
            }
            if folds is not None:
                row["fold"] = folds[j]
            rows.append(row)
        with (folder / "index.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))

    def _row(self, name, seed, kind, epoch, metrics, extra) -> dict:
        p = self.preset
        row = {
            "domain": self.domain,
            "synth": name,
            "seed": seed,
            "kind": kind,
            "epoch": epoch,
            **metrics,
            **extra,
            "preset": self.args.preset,
            "size": "x".join(map(str, self.shape)),
            "epochs": p.epochs,
            "width": p.width,
        }
        self.rows.append(row)
        return row

    def run_synth(self, name: str, seed: int) -> None:
        c_job = time.process_time()
        synth = build_synthesiser(name, self.args, seed)
        x, y, s_per_img = self.synthesise(synth, seed)
        folder = self.out / name / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        n = min(self.args.sheet, len(x))
        title = f"{name} seed {seed}"
        contact_sheet(x[:n].float() / 255, y[:n], folder / "contact_sheet.png", title)
        if seed == self.args.seed_list[0]:
            contact_sheet(x[:n].float() / 255, y[:n], self.out / "contact_sheets" / f"{name}.png", title)
        extra = {
            "n_normal": len(self.normals),
            "n_pseudo": len(x),
            "n_anomalous": int(y.flatten(1).any(1).sum()),
            "synth_s_per_image": s_per_img,
        }
        extra.update(self.authenticity(x, y, seed))
        normals_u8 = (self.normals * 255).round().to(torch.uint8)
        train_x = torch.cat([normals_u8, x])
        train_y = torch.cat([torch.zeros(len(normals_u8), 1, *normals_u8.shape[-2:], dtype=torch.uint8), y])
        t_job = time.perf_counter()
        res = train_detector(
            train_x,
            train_y,
            self.evalset,
            self.preset,
            seed,
            self.device,
            self.args.best_by,
            desc=f"{name} s{seed}",
            progress=self.progress,
            valsets=self.valsets,
        )
        extra["train_s"] = res.train_s
        write_csv(res.history, folder / "history.csv", list(dict.fromkeys(k for r in res.history for k in r)))
        show = self.anom_idx[:: max(1, len(self.anom_idx) // 8)][:8]
        map_sheet(
            self.evalset.images[show],
            [self.evalset.masks_low[i] for i in show],
            res.best_maps[show],
            folder / "maps_sheet.png",
            f"{self.domain} {name} seed {seed}: test image | ground truth | map (best epoch {res.best_epoch})",
        )
        if seed == self.args.seed_list[0]:
            sheets = self.out / "contact_sheets"
            (sheets / f"{name}_maps.png").write_bytes((folder / "maps_sheet.png").read_bytes())
        dtype = np.dtype(self.args.map_dtype)
        items = list(range(len(self.data.test)))
        kinds = [(k, res.selected[k].maps, res.selected[k].epoch) for k in KINDS if k in res.selected]
        kinds += [("last", res.last_maps, res.last_epoch), ("best", res.best_maps, res.best_epoch)]
        for kind, maps, epoch in kinds:
            native = to_native(maps, self.evalset.shapes, dtype)
            metrics = compute_all(native, self.evalset.masks)
            self.save_maps(
                folder / {"best": "maps", "last": "maps_last"}.get(kind, f"maps_{kind}"),
                native,
                items,
                {"synth": name, "seed": seed, "kind": kind, "epoch": epoch},
            )
            sel = {}
            if kind in res.selected:
                s = res.selected[kind]
                vs = self.valsets[kind]
                thr, f1 = f1_threshold(list(s.val_maps), vs.masks_low)
                sel = {
                    "val_ap": s.score,
                    "val_threshold": thr,
                    "val_f1": 100 * f1,
                    "test_f1": 100 * pixel_f1(native, self.evalset.masks, thr),
                    **selection_quality(res.history, kind, epoch),
                }
            self._row(name, seed, kind, epoch, metrics, {**extra, **sel})
        wall = time.perf_counter() - t_job + s_per_img * len(x)
        for r in self.rows[-len(kinds) :]:
            r["wall_s"] = wall
            r["cpu_s"] = time.process_time() - c_job  # all threads of this process: the quiet-machine cost

    def run_real_kfold(self, seed: int) -> None:
        """Upper bound: normals + real test defects of k-1 folds; evaluate on the held-out fold + all
        good test images; metrics per fold, averaged. Real defects are repeated to the pseudo count so
        the training budget per epoch matches the synthesisers'."""
        from sklearn.model_selection import KFold, StratifiedKFold

        name, p = "real-kfold", self.preset
        defects = [self.data.test[i].defect for i in self.anom_idx]
        k = min(p.kfold, len(defects))
        if k < 2:
            print(f"real-kfold: skipped ({len(defects)} anomalous test images, need >= 2)", file=sys.stderr)
            return
        # stratified by defect type when every type has k images, else a plain shuffled k-fold
        stratified = min(np.unique(defects, return_counts=True)[1]) >= k
        splitter = (StratifiedKFold if stratified else KFold)(n_splits=k, shuffle=True, random_state=seed)
        n_target = len(assignment(len(self.normals), p.per_image, self.args.total))
        normals_u8 = (self.normals * 255).round().to(torch.uint8)
        per_kind = {"best": ([], [], [], []), "last": ([], [], [], [])}  # maps, items, folds, metrics
        folder = self.out / name / f"seed{seed}"
        train_s = 0.0
        for fold, (tr, te) in enumerate(splitter.split(np.zeros(len(defects)), defects)):
            tr_items = [self.anom_idx[i] for i in tr]
            te_items = [self.anom_idx[i] for i in te] + self.good_idx
            g = np.random.default_rng(seed * 100 + fold)
            reps = [tr_items[j % len(tr_items)] for j in range(n_target)]
            reps = [reps[j] for j in g.permutation(len(reps))]
            xr = (self.evalset.images[reps] * 255).round().to(torch.uint8)
            yr = torch.stack([torch.from_numpy(self.evalset.masks_low[i].astype(np.uint8))[None] for i in reps])
            sub = EvalSet(
                self.evalset.images[te_items],
                [self.evalset.masks_low[i] for i in te_items],
                [self.evalset.masks[i] for i in te_items],
                [self.evalset.shapes[i] for i in te_items],
            )
            res = train_detector(
                torch.cat([normals_u8, xr]),
                torch.cat([torch.zeros(len(normals_u8), 1, *self.shape, dtype=torch.uint8), yr]),
                sub,
                p,
                seed,
                self.device,
                self.args.best_by,
                desc=f"{name} s{seed} f{fold}",
                progress=self.progress,
            )
            train_s += res.train_s
            for kind, maps, epoch in (
                ("best", res.best_maps, res.best_epoch),
                ("last", res.last_maps, res.last_epoch),
            ):
                native = to_native(maps, sub.shapes, np.dtype(self.args.map_dtype))
                acc = per_kind[kind]
                acc[0].extend(native)
                acc[1].extend(te_items)
                acc[2].extend([fold] * len(te_items))
                acc[3].append((epoch, compute_all(native, sub.masks)))
        for kind, (maps, items, folds, metrics) in per_kind.items():
            mean = {m: float(np.nanmean([d[m] for _, d in metrics])) for m in metrics[0][1]}
            epochs = "/".join(str(e) for e, _ in metrics)
            self.save_maps(
                folder / ("maps" if kind == "best" else "maps_last"),
                maps,
                items,
                {"synth": name, "seed": seed, "kind": kind, "epoch": epochs, "folds": k},
                folds,
            )
            self._row(
                name,
                seed,
                kind,
                epochs,
                mean,
                {
                    "n_normal": len(self.normals),
                    "n_pseudo": n_target,
                    "n_anomalous": n_target,
                    "train_s": train_s,
                },
            )

    def resume(self) -> None:
        """Take the rows of an earlier run into this folder's ``results.csv`` (``--resume``)."""
        path = self.out / "results.csv"
        if path.exists():
            self.rows = [r for r in read_csv(path) if r.get("synth")]
            for r in self.rows:
                r.setdefault("domain", self.domain)
                r["domain"] = r["domain"] or self.domain

    def done(self, name: str, seed: int) -> bool:
        return any(r["synth"] == name and str(r["seed"]) == str(seed) for r in self.rows)

    def run_one(self, name: str, seed: int) -> None:
        if self.done(name, seed):
            print(f"[unet_benchmark] {self.domain}: {name} seed {seed} already done (--resume)", file=sys.stderr)
            return
        print(f"[unet_benchmark] {self.domain}: {name} seed {seed}", file=sys.stderr, flush=True)
        if name == "real-kfold":
            self.run_real_kfold(seed)
        else:
            self.run_synth(name, seed)
        self.write_reports()

    def run(self) -> list[dict]:
        for seed in self.args.seed_list:
            for name in self.args.synths:
                self.run_one(name, seed)
        return self.rows

    def write_reports(self) -> None:
        write_csv(self.rows, self.out / "results.csv")
        md = markdown(self.rows, self.args.reference)
        header = (
            f"# UNet benchmark\n\ndata: `{self.data.root}` (working resolution {self.shape[0]}x{self.shape[1]}), "
            f"preset `{self.args.preset}` ({self.preset}), device `{self.args.device}`\n\n"
            f"{self.validation_text()}\n\n"
        )
        (self.out / "results.md").write_text(header + md)
        if self.rows:
            bar_plot(self.rows, self.out / "bars.png", "val" if any(r["kind"] == "val" for r in self.rows) else "best")


# ------------------------------------------------------------------------------------------ eval-only


def eval_only(run_dir: str | Path) -> list[dict]:
    """Recompute every metric from ``<run>/<synth>/seed<k>/maps*/index.csv`` and the saved maps."""
    run_dir = Path(run_dir)
    rows = []
    for index in sorted(run_dir.glob("*/seed*/maps*/index.csv")):
        folder = index.parent
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
        with index.open(newline="") as fh:
            entries = list(csv.DictReader(fh))
        maps = [np.load(folder / e["map"]) for e in entries]
        masks = [load_mask(e["mask"]) if e["mask"] else None for e in entries]
        if entries and "fold" in entries[0]:
            per_fold = []
            for f in sorted({e["fold"] for e in entries}):
                sel = [i for i, e in enumerate(entries) if e["fold"] == f]
                per_fold.append(compute_all([maps[i] for i in sel], [masks[i] for i in sel]))
            metrics = {m: float(np.nanmean([d[m] for d in per_fold])) for m in per_fold[0]}
        else:
            metrics = compute_all(maps, masks)
        kind = meta.get("kind", "best" if folder.name == "maps" else "last")
        rows.append(
            {
                "synth": meta.get("synth", folder.parent.parent.name),
                "seed": meta.get("seed", folder.parent.name.removeprefix("seed")),
                "kind": kind,
                "epoch": meta.get("epoch", ""),
                **metrics,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with auth.torch_threads(args.threads):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    if "cdm" in (args.synths or []) and not args.eval_only:
        check_cdm(args)
    if args.eval_only:
        rows = eval_only(args.eval_only)
        if not rows:
            print(f"no saved maps (*/seed*/maps*/index.csv) under {args.eval_only}", file=sys.stderr)
            return 1
        out = Path(args.out if args.out != "runs/unet_benchmark" else args.eval_only)
        write_csv(rows, out / "results_eval_only.csv", [c for c in COLUMNS if c in rows[0]])
        print(markdown(rows))
        return 0
    try:
        args.domains = expand_data(args.data)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if needs_bank(args):
        for root in args.domains:
            try:
                names = check_leakage(args.bank, root, args.dataset_names, args.bank_exclude)
                print(f"[unet_benchmark] leakage guard: bank has no entries of {names}", file=sys.stderr)
            except LeakageError as exc:
                if not args.force:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                print(f"warning (--force): {exc}", file=sys.stderr)
    out = Path(args.out)
    if len(args.domains) == 1:
        bench = Bench(args)
        if args.resume:
            bench.resume()
        bench.run()
        print(markdown(bench.rows, args.reference))
        print(
            f"[unet_benchmark] wrote {bench.out}/results.csv, results.md, bars.png, contact_sheets/",
            file=sys.stderr,
        )
        return 0
    # several domains: seeds outermost, so an interrupted run still has every domain at the first seeds
    benches = [Bench(args, root, out / domain_name(root)) for root in args.domains]
    if args.resume:
        for bench in benches:
            bench.resume()
    t0 = time.perf_counter()
    for seed in args.seed_list:
        for bench in benches:
            for name in args.synths:
                bench.run_one(name, seed)
                rows = [r for b in benches for r in b.rows]
                write_csv(rows, out / "results.csv")
                summary(rows, out, args.reference, header=_summary_header(args, benches, time.perf_counter() - t0))
    print((out / "summary.md").read_text())
    print(f"[unet_benchmark] wrote {out}/summary.md, summary.csv, summary_bars.png, */", file=sys.stderr)
    return 0


def _summary_header(args: argparse.Namespace, benches: list[Bench], wall: float) -> str:
    p = benches[0].preset
    shapes = ", ".join(f"{b.domain} {b.shape[0]}x{b.shape[1]}" for b in benches)
    return (
        f"# UNet benchmark across {len(benches)} domains\n\npreset `{args.preset}` ({p}); working resolution: "
        f"{shapes}; device `{args.device}`, {args.threads} thread(s); wall time of this invocation so far "
        f"{wall / 60:.1f} min (runs taken over with --resume not counted)\n\n"
        + "".join(f"{b.domain}: {b.validation_text()}\n\n" for b in benches)
    )


__all__ = ["main", "parse_args", "eval_only", "read_csv"]
