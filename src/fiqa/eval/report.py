"""Metric dicts -> JSON/CSV/console tables, and matplotlib figures (Agg backend, no torch)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np


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
