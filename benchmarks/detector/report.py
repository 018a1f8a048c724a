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

from .validation import KINDS

METRIC_COLS = ("pixel_auroc", "pixel_ap", "pro", "image_auroc")
EXTRA_COLS = ("detectability", "seam_ratio", "fid", "kid", "synth_s_per_image", "train_s", "wall_s", "cpu_s")
# on the rows of a validation-selected epoch: pseudo-validation AP and its F1-best threshold, pixel F1 on the
# test set at that threshold, Spearman correlation of validation and test AP over the evaluated epochs, and
# the test AP lost against the oracle epoch (both at the working resolution)
SEL_COLS = ("val_ap", "val_threshold", "val_f1", "test_f1", "sel_spearman", "ap_lost")
# row kinds in report order: selected on the CAI-made / the Perlin-made pseudo split, last epoch, oracle
KIND_ORDER = ("val", "val-perlin", "last", "best")
KIND_LABEL = {
    "val": "selected on the pseudo-anomaly validation split (CAI-made)",
    "val-perlin": "selected on the Perlin-made validation split",
    "last": "last epoch",
    "best": "best epoch on the test set by --best-by (oracle, the paper's protocol)",
}
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
    "wall_s": "wall s",
    "cpu_s": "CPU s",
}
UPPER_BOUND = ("real-kfold",)
COLUMNS = (
    "domain",
    "synth",
    "seed",
    "kind",
    "epoch",
    *METRIC_COLS,
    "n_normal",
    "n_pseudo",
    "n_anomalous",
    *EXTRA_COLS,
    *SEL_COLS,
    "n_evaluated",
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
            if k in METRIC_COLS or k in EXTRA_COLS or k in SEL_COLS:
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


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the two-sided Student-t confidence interval of the mean of ``values``
    (finite ones), ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)`` with ``s`` the sample std; for paired
    differences over seeds this is the paired t interval. ``low``/``high`` are NaN when n < 2."""
    from scipy import stats

    vals = np.array([_num(v) for v in values], dtype=float)
    vals = vals[np.isfinite(vals)]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(vals.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(vals.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def _ci_cell(values: Sequence[float], digits: int = 1) -> str:
    m, lo, hi, n = t_interval(values)
    if n == 0:
        return "–"
    if n < 2:
        return f"{m:+.{digits}f}"
    star = "*" if lo > 0 or hi < 0 else ""
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{star}"


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


def _kinds(rows: Sequence[dict]) -> list[str]:
    present = {r["kind"] for r in rows}
    return [k for k in KIND_ORDER if k in present]


def headline(rows: Sequence[dict]) -> str:
    """One domain: pixel AP, PRO and image AUROC at the epoch selected on the CAI-made validation split
    first, then pixel AP at the Perlin-selected, the last and the oracle epoch, and the selection quality
    (mean ± std over seeds)."""
    if not any(r["kind"] == "val" for r in rows):
        return ""
    groups = [("val", c) for c in ("pixel_ap", "pro", "image_auroc", "test_f1")]
    groups += [("val-perlin", "pixel_ap"), ("last", "pixel_ap"), ("best", "pixel_ap")]
    groups += [("val", "sel_spearman"), ("val", "ap_lost"), ("val-perlin", "sel_spearman"), ("val-perlin", "ap_lost")]
    name = {
        ("val", "pixel_ap"): "**pixel AP, val-selected**",
        ("val", "pro"): "PRO, val",
        ("val", "image_auroc"): "image AUROC, val",
        ("val", "test_f1"): "pixel F1 at val threshold",
        ("val-perlin", "pixel_ap"): "pixel AP, Perlin-val-selected",
        ("last", "pixel_ap"): "pixel AP, last epoch",
        ("best", "pixel_ap"): "pixel AP, oracle",
        ("val", "sel_spearman"): "ρ(val AP, test AP)",
        ("val", "ap_lost"): "AP lost vs oracle",
        ("val-perlin", "sel_spearman"): "ρ, Perlin val",
        ("val-perlin", "ap_lost"): "AP lost, Perlin val",
    }
    out = [
        "**Headline: chosen without the test set** (metrics in %, mean ± std over seeds; ρ: Spearman rank "
        "correlation of pseudo-validation and test pixel AP over the evaluated epochs; AP lost: the best test AP "
        "of any epoch − the selected epoch's, at the working resolution; oracle: the best epoch on the test set "
        "by --best-by, by default the mean of pixel AUROC, AP and PRO, so its AP can be below the selected one's)\n",
        "| synthesiser | " + " | ".join(name[g] for g in groups) + " |",
        "|---" * (len(groups) + 1) + "|",
    ]
    for s in _order(rows):
        if s in UPPER_BOUND:
            continue
        cells = []
        for kind, col in groups:
            vals = [r.get(col) for r in rows if r["synth"] == s and r["kind"] == kind]
            cells.append(_cell(vals, 2 if col == "sel_spearman" else 1))
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def markdown(rows: Sequence[dict], reference: str = "cai-n") -> str:
    """The headline (validation-selected) table, then a table per epoch kind (validation-selected, last,
    oracle; mean ± sample std over seeds), the real-defect upper bound apart, and each synthesiser's
    paired difference to ``reference`` over seeds."""
    out = [headline(rows)]
    synths = _order(rows)
    seeds = sorted({str(r["seed"]) for r in rows})
    present_extra = [c for c in EXTRA_COLS if any(np.isfinite(_num(r.get(c))) for r in rows)]
    for kind in _kinds(rows):
        sub = [r for r in rows if r["kind"] == kind]
        out.append(f"**{KIND_LABEL[kind]}** (seeds {', '.join(seeds)}; metrics in %, mean ± std over seeds)\n")
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
                f"Paired difference to {reference} ({KIND_LABEL[kind]}; baseline − {reference}, per seed, then "
                "mean [95% t interval over seeds: mean ± t(0.975, n−1)·s/√n]; negative = worse than "
                + reference
                + "; * = interval excludes 0):\n"
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
                    out.append(f"| {s} | " + " | ".join(_ci_cell(diffs[c]) for c in METRIC_COLS) + " |")
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
    ax.set_title(f"UNet benchmark ({KIND_LABEL[kind]})", fontsize=9)
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
        tw = max(1, int(round(tile * a.shape[1] / a.shape[0])))  # the aspect is kept
        a = cv2.resize(a, (tw, tile), interpolation=cv2.INTER_NEAREST if a.shape[0] < tile else cv2.INTER_AREA)
        m = cv2.resize(
            (mask[0].detach().cpu().numpy() > 0).astype(np.uint8),
            (tw, tile),
            interpolation=cv2.INTER_NEAREST,
        )
        b = a.copy()
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(b, contours, -1, (255, 0, 0), 1)
        tiles.append(np.concatenate([a, np.full((tile, 2, 3), 255, np.uint8), b], axis=1))
    _save_sheet(tiles, path, title, cols // 2)


def _save_sheet(tiles: list[np.ndarray], path: str | Path, title: str, per_row: int) -> None:
    if not tiles:
        return
    cols = 2 * per_row
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


def map_sheet(
    images: torch.Tensor,
    masks: Sequence[np.ndarray | None],
    maps: np.ndarray,
    path: str | Path,
    title: str = "",
    tile: int = 160,
) -> None:
    """What the detector sees on real defects: each test image, with its ground truth outlined in red,
    and its anomaly map (0 black ... 1 white, ground truth outlined in red), side by side, two per row."""
    tiles = []
    for img, mask, amap in zip(images, masks, maps):
        a = (img.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        tw = max(1, int(round(tile * a.shape[1] / a.shape[0])))
        interp = cv2.INTER_NEAREST if a.shape[0] < tile else cv2.INTER_AREA
        a = cv2.resize(a, (tw, tile), interpolation=interp)
        heat = cv2.resize((np.clip(np.asarray(amap, np.float32), 0, 1) * 255).astype(np.uint8), (tw, tile))
        heat = cv2.applyColorMap(heat, cv2.COLORMAP_INFERNO)[..., ::-1].copy()
        b = a.copy()
        if mask is not None:
            m = cv2.resize(np.asarray(mask, np.uint8), (tw, tile), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(b, contours, -1, (255, 0, 0), 1)
            cv2.drawContours(heat, contours, -1, (0, 255, 255), 1)
        gap = np.full((tile, 2, 3), 255, np.uint8)
        tiles.append(np.concatenate([a, gap, b, gap, heat], axis=1))
    _save_sheet(tiles, path, title, 2)


# ------------------------------------------------------------------------------------ across domains


def _domain_order(rows: Sequence[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["domain"] not in seen:
            seen.append(r["domain"])
    return seen


def _seed_mean(rows: Sequence[dict], domain: str, synth: str, col: str) -> float:
    return mean_std([r[col] for r in rows if r["domain"] == domain and r["synth"] == synth])[0]


def mean_ranks(rows: Sequence[dict], col: str = "pixel_ap") -> dict[str, float]:
    """Per domain, rank the synthesisers by their seed-mean ``col`` (1 = best, ties share the mean rank;
    upper bounds not ranked), then average each synthesiser's rank over the domains. Only synthesisers
    that ran on every domain are ranked (a partial one would shift the others' ranks on some domains)."""
    from scipy.stats import rankdata

    domains = _domain_order(rows)
    complete = [
        s
        for s in _order(rows)
        if s not in UPPER_BOUND and all(any(r["synth"] == s and r["domain"] == d for r in rows) for d in domains)
    ]
    ranks: dict[str, list[float]] = defaultdict(list)
    for d in domains:
        synths = complete
        vals = [_seed_mean(rows, d, s, col) for s in synths]
        keep = [(s, v) for s, v in zip(synths, vals) if np.isfinite(v)]
        if not keep:
            continue
        rk = rankdata([-v for _, v in keep], method="average")
        for (s, _), r in zip(keep, rk):
            ranks[s].append(float(r))
    return {s: float(np.mean(v)) for s, v in ranks.items()}


def domain_mean_diffs(rows: Sequence[dict], synth: str, reference: str, col: str) -> list[float]:
    """Per seed that both ran on every domain: the mean over domains of ``synth − reference``."""
    domains = _domain_order(rows)
    out = []
    seeds = sorted({str(r["seed"]) for r in rows})
    for seed in seeds:
        diffs = []
        for d in domains:
            a = [r for r in rows if r["domain"] == d and r["synth"] == synth and str(r["seed"]) == seed]
            b = [r for r in rows if r["domain"] == d and r["synth"] == reference and str(r["seed"]) == seed]
            if not a or not b:
                break
            diffs.append(_num(a[0][col]) - _num(b[0][col]))
        else:
            out.append(float(np.mean(diffs)))
    return out


def _domain_mean(rows: Sequence[dict], domains: list[str], synth: str, kind: str, col: str) -> float:
    """Mean over domains of the seed means (nan unless every domain has a finite one)."""
    vals = [_seed_mean([r for r in rows if r["kind"] == kind], d, synth, col) for d in domains]
    return float(np.mean(vals)) if all(np.isfinite(v) for v in vals) else float("nan")


def summary_headline(rows: Sequence[dict]) -> str:
    """Across domains: pixel AP at the epoch selected on the CAI-made validation split (mean over domains
    and per domain) first, then at the Perlin-selected, last and oracle epochs, and the selection
    quality (Spearman ρ of validation and test AP, AP lost against the oracle) per domain."""
    if not any(r["kind"] == "val" for r in rows):
        return ""
    domains = _domain_order(rows)
    synths = [s for s in _order(rows) if s not in UPPER_BOUND]

    def fmt(v: float, digits: int = 1) -> str:
        return f"{v:.{digits}f}" if np.isfinite(v) else "–"

    head = ["**mean pixel AP, val-selected**", *(f"{d} AP, val" for d in domains)]
    head += ["mean AP, Perlin-val-selected", "mean AP, last epoch", "mean AP, oracle", "mean PRO, val"]
    head += ["mean image AUROC, val"]
    out = [
        "**Headline: chosen without the test set** (pixel AP in %; each domain's cell the mean ± std over "
        "seeds at the epoch with the best pixel AP on the CAI-made pseudo-anomaly validation split; means over "
        "domains of the seed means; oracle: the best epoch on the test set by --best-by, by default the mean of "
        "pixel AUROC, AP and PRO)\n",
        "| synthesiser | " + " | ".join(head) + " |",
        "|---" * (len(head) + 1) + "|",
    ]
    for s in synths:
        cells = [fmt(_domain_mean(rows, domains, s, "val", "pixel_ap"))]
        cells += [
            _cell([r["pixel_ap"] for r in rows if r["kind"] == "val" and r["domain"] == d and r["synth"] == s])
            for d in domains
        ]
        cells += [fmt(_domain_mean(rows, domains, s, k, "pixel_ap")) for k in ("val-perlin", "last", "best")]
        cells += [fmt(_domain_mean(rows, domains, s, "val", c)) for c in ("pro", "image_auroc")]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "Selection quality: Spearman ρ of pseudo-validation and test pixel AP across the evaluated epochs, and "
        "test AP lost against the epoch with the best test AP (working resolution), mean over seeds; CAI-made "
        "split / Perlin-made split\n"
    )
    head = [f"{d} ρ" for d in domains] + [f"{d} AP lost" for d in domains] + ["mean ρ", "mean AP lost"]
    out.append("| synthesiser | " + " | ".join(head) + " |")
    out.append("|---" * (len(head) + 1) + "|")
    for s in synths:
        cells = []
        for col, digits in (("sel_spearman", 2), ("ap_lost", 1)):
            for d in domains:
                cells.append(
                    " / ".join(fmt(_seed_mean([r for r in rows if r["kind"] == k], d, s, col), digits) for k in KINDS)
                )
        for col, digits in (("sel_spearman", 2), ("ap_lost", 1)):
            cells.append(" / ".join(fmt(_domain_mean(rows, domains, s, k, col), digits) for k in KINDS))
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def leave_one_domain_out(
    rows: Sequence[dict], reference: str = "draem", kind: str = "val", col: str = "pixel_ap"
) -> list[dict]:
    """For each domain left out: the CAI candidate (a ``cai-*`` synthesiser run on every domain) with the
    best mean ``col`` over the *other* domains (seed means, epoch ``kind``), its ``col`` on the left-out
    domain, the reference's, and their paired per-seed differences there."""
    domains = _domain_order(rows)
    sub = [r for r in rows if r["kind"] == kind]
    candidates = [
        s
        for s in _order(sub)
        if s.startswith("cai-") and all(any(r["synth"] == s and r["domain"] == d for r in sub) for d in domains)
    ]
    out = []
    if len(domains) < 2 or not candidates:
        return out
    for held in domains:
        others = [d for d in domains if d != held]
        scores = {c: float(np.mean([_seed_mean(sub, d, c, col) for d in others])) for c in candidates}
        picked = max(candidates, key=lambda c: (np.nan_to_num(scores[c], nan=-np.inf), -candidates.index(c)))
        ref = {str(r["seed"]): _num(r[col]) for r in sub if r["domain"] == held and r["synth"] == reference}
        diffs = [
            _num(r[col]) - ref[str(r["seed"])]
            for r in sub
            if r["domain"] == held and r["synth"] == picked and str(r["seed"]) in ref
        ]
        out.append(
            {
                "held_out": held,
                "picked": picked,
                "score_others": scores[picked],
                "picked_value": _seed_mean(sub, held, picked, col),
                "reference_value": _seed_mean(sub, held, reference, col),
                "diffs": diffs,
            }
        )
    return out


def lodo_markdown(rows: Sequence[dict], reference: str = "draem", kind: str = "val") -> str:
    """The leave-one-domain-out table of :func:`leave_one_domain_out` (empty without candidates)."""
    table = leave_one_domain_out(rows, reference, kind)
    if not table or not any(r["synth"] == reference for r in rows):
        return ""
    out = [
        f"Leave one domain out ({KIND_LABEL[kind]}; pixel AP in %): the CAI candidate with the best mean AP on the "
        f"other domains, judged on the one left out against {reference} (paired over seeds, 95% t interval); a "
        "candidate default is kept only if it wins on every left-out domain\n",
        f"| left out | picked on the others | its mean AP there | its AP on the left-out | {reference} AP | "
        f"difference [95% CI] | beats {reference} |",
        "|---|---|---|---|---|---|---|",
    ]
    judged = [t for t in table if np.isfinite(t["reference_value"]) and np.isfinite(t["picked_value"])]
    for t in table:
        if t not in judged:
            out.append(f"| {t['held_out']} | {t['picked']} | {t['score_others']:.1f} | – | – | – | not run |")
            continue
        m = t["picked_value"] - t["reference_value"]
        out.append(
            f"| {t['held_out']} | {t['picked']} | {t['score_others']:.1f} | {t['picked_value']:.1f} | "
            f"{t['reference_value']:.1f} | {_ci_cell(t['diffs'])} | {'yes' if m > 0 else 'no'} |"
        )
    won = sum(t["picked_value"] > t["reference_value"] for t in judged)
    out.append(f"\nLeft-out domains won: {won} of {len(judged)} judged ({len(table) - len(judged)} not run)\n")
    return "\n".join(out)


def summary_markdown(rows: Sequence[dict], reference: str = "cai-n") -> str:
    """The headline (validation-selected) tables, then one table across domains per epoch kind: mean over
    domains and per-domain pixel AP (each a mean over seeds), mean PRO, pixel AUROC, image AUROC, the mean
    rank by pixel AP; then each synthesiser's paired difference to ``reference`` with 95 % t intervals
    over seeds."""
    out = [summary_headline(rows)]
    if reference in _order(rows) and not reference.startswith("cai-"):
        out.append(lodo_markdown(rows, reference, "val" if any(r["kind"] == "val" for r in rows) else "best"))
    domains = _domain_order(rows)
    synths = _order(rows)
    for kind in _kinds(rows):
        sub = [r for r in rows if r["kind"] == kind]
        seeds = sorted({str(r["seed"]) for r in sub})
        ranks = mean_ranks(sub)
        out.append(
            f"**{KIND_LABEL[kind]}** across {len(domains)} domains (seeds {', '.join(seeds)}; metrics in %; each cell "
            "the mean over seeds, ± std over seeds for a single domain; means over domains of those means; mean rank: "
            "by pixel AP on each domain, among the synthesisers run on every domain)\n"
        )
        head = ["mean pixel AP", *(f"{d} AP" for d in domains), "mean PRO", "mean pixel AUROC"]
        head += ["mean image AUROC", "mean rank (AP)", "seeds"]
        out.append("| synthesiser | " + " | ".join(head) + " |")
        out.append("|---" * (len(head) + 1) + "|")
        for s in synths:
            rs = [r for r in sub if r["synth"] == s]
            if not rs:
                continue
            per = {c: [_seed_mean(sub, d, s, c) for d in domains] for c in METRIC_COLS}

            def mean_of(c, per=per):
                v = [x for x in per[c] if np.isfinite(x)]
                return f"{np.mean(v):.1f}" if len(v) == len(domains) else "–"

            cells = [mean_of("pixel_ap")]
            cells += [_cell([r["pixel_ap"] for r in rs if r["domain"] == d]) for d in domains]
            cells += [mean_of("pro"), mean_of("pixel_auroc"), mean_of("image_auroc")]
            cells += [f"{ranks[s]:.2f}" if s in ranks else "–"]
            cells += [",".join(sorted({str(r["seed"]) for r in rs}))]
            name = f"{s} (upper bound, not ranked)" if s in UPPER_BOUND else s
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
        if any(r["synth"] == reference for r in sub):
            out.append(
                f"Paired difference to {reference} ({KIND_LABEL[kind]}): synthesiser − {reference} per seed, mean "
                "[95% t interval over seeds, mean ± t(0.975, n−1)·s/√n]; the mean over domains is taken per seed "
                "first (seeds run on every domain); * = interval excludes 0\n"
            )
            head = ["pixel AP, mean of domains", *(f"{d} AP" for d in domains), "PRO, mean of domains"]
            head += ["pixel AUROC, mean of domains"]
            out.append("| synthesiser | " + " | ".join(head) + " |")
            out.append("|---" * (len(head) + 1) + "|")
            for s in synths:
                if s == reference or s in UPPER_BOUND:
                    continue
                cells = [_ci_cell(domain_mean_diffs(sub, s, reference, "pixel_ap"))]
                for d in domains:
                    ref = {str(r["seed"]): r for r in sub if r["domain"] == d and r["synth"] == reference}
                    diffs = [
                        _num(r["pixel_ap"]) - _num(ref[str(r["seed"])]["pixel_ap"])
                        for r in sub
                        if r["domain"] == d and r["synth"] == s and str(r["seed"]) in ref
                    ]
                    cells.append(_ci_cell(diffs))
                cells += [_ci_cell(domain_mean_diffs(sub, s, reference, c)) for c in ("pro", "pixel_auroc")]
                out.append(f"| {s} | " + " | ".join(cells) + " |")
            out.append("")
    cpus = [_num(r.get("cpu_s")) for r in rows if r["kind"] == "best"]
    cpus = [c for c in cpus if np.isfinite(c)]
    walls = [_num(r.get("wall_s")) for r in rows if r["kind"] == "best"]
    walls = [w for w in walls if np.isfinite(w)]
    if walls:
        out.append(
            "Wall time per synthesiser × seed × domain (synthesis + training + evaluation): "
            f"mean {np.mean(walls):.0f} s, max {np.max(walls):.0f} s over {len(walls)} jobs"
            + (f"; process CPU time mean {np.mean(cpus):.0f} s, max {np.max(cpus):.0f} s" if cpus else "")
            + "\n"
        )
    return "\n".join(out)


def summary_bars(rows: Sequence[dict], path: str | Path, kind: str = "best", col: str = "pixel_ap") -> None:
    """Grouped bars: ``col`` per domain (and the mean over domains) for each synthesiser, std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = [r for r in rows if r["kind"] == kind]
    if not sub:
        return
    domains = _domain_order(sub)
    synths = [s for s in _order(sub)]
    groups = [*domains, "mean"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(synths))
    x = np.arange(len(groups))
    for i, s in enumerate(synths):
        ms, sds = [], []
        for d in domains:
            m, sd, _ = mean_std([r[col] for r in sub if r["synth"] == s and r["domain"] == d])
            ms.append(m)
            sds.append(sd)
        fin = [m for m in ms if np.isfinite(m)]
        ms.append(float(np.mean(fin)) if len(fin) == len(domains) else float("nan"))
        sds.append(0.0)
        ax.bar(x + (i - (len(synths) - 1) / 2) * width, ms, width, yerr=sds, label=s, capsize=2)
    ax.set_xticks(x, groups)
    ax.set_ylabel(f"{HEAD[col]} (%)")
    ax.set_title(
        f"UNet benchmark across domains: {KIND_LABEL[kind]}\n(bars: mean over seeds, whiskers: std)", fontsize=9
    )
    ax.legend(fontsize=8, ncol=min(4, len(synths)))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(rows: Sequence[dict], out: str | Path, reference: str = "cai-n", header: str = "") -> str:
    """Write ``summary.md``, ``summary.csv`` (per domain × synthesiser × kind: seed means) and
    ``summary_bars.png`` / ``summary_bars_last.png`` under ``out``; return the markdown."""
    out = Path(out)
    md = header + summary_markdown(rows, reference)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(md)
    table = []
    for kind in _kinds(rows):
        for d in _domain_order(rows):
            for s in _order(rows):
                rs = [r for r in rows if r["kind"] == kind and r["domain"] == d and r["synth"] == s]
                if rs:
                    row = {"kind": kind, "domain": d, "synth": s, "n_seeds": len(rs)}
                    for c in METRIC_COLS:
                        row[c], row[c + "_std"], _ = mean_std([r[c] for r in rs])
                    table.append(row)
    cols = ["kind", "domain", "synth", "n_seeds", *[x for c in METRIC_COLS for x in (c, c + "_std")]]
    write_csv(table, out / "summary.csv", cols)
    kinds = _kinds(rows)
    summary_bars(rows, out / "summary_bars.png", kinds[0] if kinds else "best")
    summary_bars(rows, out / "summary_bars_last.png", "last")
    if "best" in kinds and kinds[0] != "best":
        summary_bars(rows, out / "summary_bars_oracle.png", "best")
    return md
