"""results.csv, the markdown table (mean ± std over seeds), a bar plot and contact sheets."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

METRIC_COLS = ("pixel_auroc", "pixel_ap", "pro", "image_auroc")
EXTRA_COLS = ("detectability", "seam_ratio", "fid", "kid", "synth_s_per_image", "train_s")
HEAD = {
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pro": "PRO",
    "image_auroc": "image AUROC",
    "detectability": "detectability",
    "seam_ratio": "seam ratio",
    "fid": "FID",
    "kid": "KID",
    "synth_s_per_image": "synth s/img",
    "train_s": "train s",
}
UPPER_BOUND = ("real-kfold",)
COLUMNS = (
    "synth",
    "seed",
    "kind",
    "epoch",
    *METRIC_COLS,
    "n_normal",
    "n_pseudo",
    "n_anomalous",
    *EXTRA_COLS,
    "preset",
    "size",
    "epochs",
    "width",
)


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] = COLUMNS) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_csv(r.get(k, "")) for k in columns})


def _fmt_csv(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def read_csv(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if k in METRIC_COLS or k in EXTRA_COLS:
                r[k] = float(v) if v not in ("", None) else float("nan")
    return rows


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = np.array([_num(v) for v in values], dtype=float)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan"), 0
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def _cell(values: Sequence[float], digits: int = 1) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "–"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def _order(rows: Sequence[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["synth"] not in seen:
            seen.append(r["synth"])
    return seen


def markdown(rows: Sequence[dict], reference: str = "cai-n") -> str:
    """Tables for the best and the last epoch (mean ± sample std over seeds), the real-defect upper
    bound apart, and each synthesiser's paired difference to ``reference`` over seeds."""
    out = []
    synths = _order(rows)
    seeds = sorted({str(r["seed"]) for r in rows})
    present_extra = [c for c in EXTRA_COLS if any(np.isfinite(_num(r.get(c))) for r in rows)]
    for kind in ("best", "last"):
        sub = [r for r in rows if r["kind"] == kind]
        if not sub:
            continue
        out.append(f"**{kind} epoch** (seeds {', '.join(seeds)}; metrics in %, mean ± std over seeds)\n")
        cols = [*METRIC_COLS, *present_extra]
        out.append("| synthesiser | epoch | " + " | ".join(HEAD[c] for c in cols) + " |")
        out.append("|---" * (len(cols) + 2) + "|")
        for group in (False, True):
            for s in synths:
                if (s in UPPER_BOUND) != group:
                    continue
                rs = [r for r in sub if r["synth"] == s]
                if not rs:
                    continue
                name = f"{s} (upper bound, not ranked)" if group else s
                epochs = ",".join(str(r.get("epoch", "")) for r in rs)
                cells = [
                    _cell(
                        [r.get(c) for r in rs],
                        3 if c in ("detectability", "seam_ratio", "kid", "synth_s_per_image") else 1,
                    )
                    for c in cols
                ]
                out.append(f"| {name} | {epochs} | " + " | ".join(cells) + " |")
        out.append("")
        ref = {str(r["seed"]): r for r in sub if r["synth"] == reference}
        if ref and len(synths) > 1:
            out.append(
                f"Paired difference to {reference} ({kind} epoch; baseline − {reference}, per seed, "
                "then mean ± std; negative = worse than " + reference + "):\n"
            )
            out.append("| synthesiser | " + " | ".join(HEAD[c] for c in METRIC_COLS) + " |")
            out.append("|---" * (len(METRIC_COLS) + 1) + "|")
            for s in synths:
                if s == reference or s in UPPER_BOUND:
                    continue
                diffs = defaultdict(list)
                for r in sub:
                    if r["synth"] == s and str(r["seed"]) in ref:
                        for c in METRIC_COLS:
                            diffs[c].append(_num(r[c]) - _num(ref[str(r["seed"])][c]))
                if diffs:
                    out.append(f"| {s} | " + " | ".join(_cell(diffs[c]) for c in METRIC_COLS) + " |")
            out.append("")
    return "\n".join(out)


def bar_plot(rows: Sequence[dict], path: str | Path, kind: str = "best") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = [r for r in rows if r["kind"] == kind]
    synths = _order(sub)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(synths) + 2), 4))
    width = 0.8 / len(METRIC_COLS)
    x = np.arange(len(synths))
    for i, c in enumerate(METRIC_COLS):
        stats = [mean_std([r[c] for r in sub if r["synth"] == s]) for s in synths]
        ax.bar(
            x + (i - 1.5) * width,
            [m for m, _, _ in stats],
            width,
            yerr=[sd for _, sd, _ in stats],
            label=HEAD[c],
            capsize=2,
        )
    ax.set_xticks(x, synths, rotation=20)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"UNet benchmark ({kind} epoch)")
    ax.legend(fontsize=8, ncol=4, loc="lower center")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(
    images: torch.Tensor,
    masks: torch.Tensor,
    path: str | Path,
    title: str = "",
    cols: int = 8,
    tile: int = 128,
) -> None:
    """Each pseudo anomaly twice: as made, and with its mask's outline in red."""
    tiles = []
    for img, mask in zip(images, masks):
        a = (img.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        a = cv2.resize(a, (tile, tile), interpolation=cv2.INTER_NEAREST if a.shape[0] < tile else cv2.INTER_AREA)
        m = cv2.resize(
            (mask[0].detach().cpu().numpy() > 0).astype(np.uint8),
            (tile, tile),
            interpolation=cv2.INTER_NEAREST,
        )
        b = a.copy()
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(b, contours, -1, (255, 0, 0), 1)
        tiles.append(np.concatenate([a, np.full((tile, 2, 3), 255, np.uint8), b], axis=1))
    if not tiles:
        return
    rows = []
    for i in range(0, len(tiles), cols // 2):
        row = tiles[i : i + cols // 2]
        row += [np.zeros_like(tiles[0])] * (cols // 2 - len(row))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (4, 4), (0, 0)), constant_values=255) for t in row], 1))
    sheet = np.concatenate(rows, axis=0)
    if title:
        bar = np.full((24, sheet.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, title, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        sheet = np.concatenate([bar, sheet], axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
