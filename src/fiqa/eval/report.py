"""Metric dicts -> JSON/CSV/console tables, and matplotlib figures (Agg backend, no torch).

Curves a protocol returns with ``return_curves=True`` (``fiqa.eval.sets.evaluate_set`` collects
them) are ``{kind: {label: (x, y)}}`` with kind ``roc`` (FPR, TPR), ``cmc`` (rank, identification
rate) or ``erc`` (fraction rejected, FNMR); :data:`PLOTTERS` maps each kind to its plot, written by the
validation callback as ``<kind>_<set>.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: FARs marked on a ROC plot (those inside the curve's FPR range): the IJB reporting grid.
ROC_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_metrics(metrics: Mapping[str, float], out_dir: Path, stem: str = "metrics") -> tuple:
    """``<stem>.json`` (flat dict of floats) and ``<stem>.csv`` (metric,value rows)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = {k: float(v) for k, v in sorted(metrics.items())}
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(flat, indent=2, allow_nan=True) + "\n")
    cs = out_dir / f"{stem}.csv"
    with cs.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        w.writerows(flat.items())
    return js, cs


def metrics_table(metrics: Mapping[str, float], title: str = "metrics"):
    """A rich Table: one row per metric, one column per val set (sets are few, metrics many);
    run-level metrics (``val/acc_mean``) go in the column ``all``."""
    from rich.table import Table

    sets: dict = {}
    for key, v in metrics.items():
        parts = key.split("/")
        name, metric = (parts[1], "/".join(parts[2:])) if len(parts) >= 3 else ("all", "/".join(parts[1:]) or key)
        sets.setdefault(name, {})[metric] = v
    names = [n for n in sets if n != "all"] + (["all"] if "all" in sets else [])
    rows = sorted({m for r in sets.values() for m in r})
    table = Table(title=title)
    table.add_column("metric")
    for n in names:
        table.add_column(n, justify="right")
    for m in rows:
        table.add_row(m, *[_fmt(sets[n].get(m)) for n in names])
    return table


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"


def plot_quality_vs_degradation(
    quality: np.ndarray, degradation: np.ndarray, path: Path, title: str = "", bins: int = 10
) -> Path:
    """Scatter of per-image quality against the ground-truth degradation level, with the
    median and inter-quartile range per level bin."""
    from scipy.stats import spearmanr

    plt = _plt()
    q, d = np.asarray(quality, float), np.asarray(degradation, float)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.scatter(d, q, s=4, alpha=0.25, color="tab:blue", label="images")
    edges = np.linspace(0, max(d.max(), 1e-6), bins + 1)
    which = np.clip(np.digitize(d, edges) - 1, 0, bins - 1)
    centres, med, lo, hi = [], [], [], []
    for b in range(bins):
        sel = q[which == b]
        if len(sel):
            centres.append(0.5 * (edges[b] + edges[b + 1]))
            med.append(np.median(sel))
            lo.append(np.percentile(sel, 25))
            hi.append(np.percentile(sel, 75))
    ax.plot(centres, med, "o-", color="tab:red", label="median per bin")
    ax.fill_between(centres, lo, hi, color="tab:red", alpha=0.2, label="IQR")
    rho = spearmanr(q, d).statistic if len(q) > 1 else float("nan")
    ax.set_xlabel("ground-truth degradation level")
    ax.set_ylabel("predicted quality (higher = better)")
    ax.set_title(f"{title}  Spearman = {rho:.3f}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_quality_histogram(quality: np.ndarray, path: Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    ax.hist(np.asarray(quality, float), bins=50, color="tab:green", alpha=0.8)
    ax.set_xlabel("quality")
    ax.set_ylabel("images")
    ax.set_title(f"{title} quality histogram")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ---- curves -------------------------------------------------------------------------------------
def _as_curves(curves) -> dict:
    """``{label: (x, y)}`` from a mapping or from one ``(x, y)`` pair (label ``""``)."""
    if isinstance(curves, Mapping):
        return {str(k): (np.asarray(v[0], float), np.asarray(v[1], float)) for k, v in curves.items()}
    x, y = curves
    return {"": (np.asarray(x, float), np.asarray(y, float))}


def _save(fig, path: Path, footnote: str = "") -> Path:
    plt = _plt()
    if footnote:  # a small line under the axes (e.g. how an ERC's threshold was set)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.text(0.01, 0.008, footnote, fontsize=5.5, alpha=0.8, va="bottom")
    else:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def roc_tar(fpr, tpr, fars=ROC_FARS) -> np.ndarray:
    """TAR at each FAR of a ROC given as points ``(fpr, tpr)`` (ascending FPR): the largest TPR of the
    points with ``FPR <= far`` (NaN when no point has, i.e. below the curve's first FPR)."""
    f, t = np.asarray(fpr, float), np.asarray(tpr, float)
    out = []
    for x in fars:
        ok = f <= x
        out.append(float(t[ok].max()) if ok.any() else float("nan"))
    return np.asarray(out)


def thin_roc(fpr, tpr, fars=ROC_FARS, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A subset of the ROC points (ascending FPR) small enough to keep and plot: at each of ``points``
    log-spaced FPRs, the last point at or below it and the first above it, the point that gives the
    TAR at each of ``fars`` (so :func:`roc_tar` of the subset equals that of the whole curve), and
    both ends. Every point kept is a point of the curve."""
    f, t = np.asarray(fpr, float), np.asarray(tpr, float)
    if f.size <= 2 * points + len(fars) + 2:
        return f, t
    pos = f[f > 0]
    lo = pos.min() if pos.size else 1.0
    grid = np.geomspace(lo, max(f[-1], lo), points)
    last = np.searchsorted(f, grid, side="right") - 1
    keep = [last, last + 1, [0, f.size - 1]]
    for x in fars:
        ok = np.flatnonzero(f <= x)
        if ok.size:
            keep.append([ok[np.argmax(t[ok])]])
    idx = np.unique(np.clip(np.concatenate([np.asarray(k, np.int64) for k in keep]), 0, f.size - 1))
    return f[idx], t[idx]


def plot_roc(curves, path: Path, title: str = "", fars=ROC_FARS) -> Path:
    """TAR against FAR on a log x axis, one line per curve (``{label: (fpr, tpr)}`` or one ``(fpr, tpr)``),
    with the TAR at each of ``fars`` inside the curve's FPR range marked (:func:`roc_tar`: FPR <= far)
    and the TAR at 1e-4 (when marked) in the legend. FPR 0 is not drawn (log axis)."""
    plt = _plt()
    curves = _as_curves(curves)
    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=110)
    lows = []
    for label, (f, t) in curves.items():
        pos = f > 0
        if not pos.any():
            continue
        lows.append(f[pos].min())
        marks = [(x, v) for x, v in zip(fars, roc_tar(f, t, fars)) if x >= f[pos].min() and np.isfinite(v)]
        at = dict(marks).get(1e-4)
        name = label + (f" (TAR@FAR1e-4 {at:.4f})" if at is not None else "")
        (line,) = ax.plot(f[pos], t[pos], label=name.strip() or None, lw=1.4)
        if marks:
            xs, ys = zip(*marks)
            ax.plot(xs, ys, "o", color=line.get_color(), ms=4)
            for x, v in marks:
                ax.annotate(f"{v:.3f}", (x, v), textcoords="offset points", xytext=(3, -10), fontsize=6)
    ax.set_xscale("log")
    if lows:
        ax.set_xlim(min(lows) * 0.8, 1.05)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("FAR (false accept rate)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_title(f"{title} ROC".strip(), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if any(curves):
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def cmc_points(rank, max_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks 1..max_rank, identification rate)`` of the 1-based ranks of the mated searches
    (non-finite ranks, i.e. probes without a mate, are left out)."""
    r = np.asarray(rank, float).reshape(-1)
    r = np.sort(r[np.isfinite(r)])
    if r.size == 0:
        raise ValueError("no probe has a mate in the gallery: the CMC is undefined")
    ks = np.arange(1, int(max_rank) + 1)
    return ks, np.searchsorted(r, ks, side="right") / r.size


def plot_cmc(curves, path: Path, title: str = "") -> Path:
    """Identification rate against rank (CMC), one line per curve (``{label: (ranks, rates)}``, e.g.
    SCface's distances d1/d2/d3), with the rank-1 rate in the legend."""
    plt = _plt()
    curves = _as_curves(curves)
    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=110)
    for label, (k, rate) in curves.items():
        name = f"{label} (rank-1 {rate[0]:.4f})" if rate.size else label
        ax.plot(k, rate, marker="." if k.size <= 30 else None, label=name.strip())
    ks = np.concatenate([k for k, _ in curves.values()]) if curves else np.array([1.0])
    ax.set_xlim(0.5, max(float(ks.max()), 1.0) + 0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_title(f"{title} CMC".strip(), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_erc(curves, path: Path, title: str = "") -> Path:
    """FNMR against the fraction of pairs rejected (lowest quality first), one line per curve
    (``{label: (reject, fnmr)}``, e.g. one per FMR). ``fiqa.eval.compare.plot_erc`` compares sources."""
    plt = _plt()
    curves = _as_curves(curves)
    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=110)
    for label, (r, fnmr) in curves.items():
        ax.plot(r, fnmr, marker=".", label=label.strip() or None)
    ax.set_xlabel("fraction of pairs rejected (lowest quality first)")
    ax.set_ylabel("FNMR")
    ax.set_title(f"{title} ERC".strip(), fontsize=9)
    ax.grid(alpha=0.3)
    if any(curves):
        ax.legend(fontsize=7)
    return _save(fig, path, "; ".join(threshold_rules(curves)))


def threshold_rules(labels) -> list[str]:
    """How the FNMR threshold of each ERC curve was set, in words (``fiqa.eval.erc.THRESHOLD_RULES``), from
    the curve labels' prefixes (``"erc fmr1e-2"``, ``"edc fmr1e-3"``); distinct, in order."""
    from fiqa.eval.erc import PREFIX_MODES, THRESHOLD_RULES

    out = []
    for label in labels:
        mode = PREFIX_MODES.get(str(label).split(" ", 1)[0])
        if mode is not None and THRESHOLD_RULES[mode] not in out:
            out.append(THRESHOLD_RULES[mode])
    return out


#: The plot of each curve kind (``{kind: {label: (x, y)}}``, see the module docstring).
PLOTTERS = {"roc": plot_roc, "cmc": plot_cmc, "erc": plot_erc}


def plot_curves(curves: Mapping[str, Mapping], out_dir: Path, set_name: str) -> dict[str, Path]:
    """``{kind: <out_dir>/<kind>_<set_name>.png}`` for each kind of ``curves`` that has a curve; an
    unknown kind raises a ValueError naming the valid ones."""
    paths = {}
    for kind, c in curves.items():
        if kind not in PLOTTERS:
            raise ValueError(f"curve kind {kind!r} has no plot; valid kinds: {sorted(PLOTTERS)}")
        if c:
            paths[kind] = PLOTTERS[kind](c, Path(out_dir) / f"{kind}_{set_name}.png", title=set_name)
    return paths
