"""The FIQA papers' main table (``task=benchmark``): every FR model x quality source x set, under the four
conventions in use in the literature, next to the published numbers. Pure numpy + matplotlib (Agg).

Every cell comes from one FR model's comparison scores of a set (cosines of the flip-fused embeddings;
IJB: template-pair cosines) and one quality source's per-image (IJB: per-template, the minimum image
quality) qualities; a pair's quality is the minimum of its two (``reduce``). Columns, by convention
(:data:`CONVENTIONS`; lower is better in every one):

- ``crfiqa`` -- CR-FIQA's ERC (``erc_auc_fmr*``, ``erc_pauc0.2_fmr*``, ``erc_pauc0.3_fmr*``): the
  threshold is re-estimated on the kept pairs at every reject rate 0, 0.05, ..., 0.95, the FNMR is read at
  the FMR, and the area is a trapezoid over the whole range (``auc``) or up to 0.2 / 0.3 (``pauc``)
  (``fiqa.eval.erc.erc``, ``mode="recompute_nearest"``; the metric names of ``val.<set>.protocols.erc``);
- ``iso`` -- ISO/IEC 29794-1 EDC (``edc_pauc0.2_fmr*``, ``edc_pauc0.3_fmr*``): the threshold is fixed at the
  FMR on all non-mated pairs before anything is discarded, the FNM-EDC of the mated pairs is discarded
  only where the quality changes, and the stepwise pAUC up to the limit has the ideal area
  ``max(e0 - x, 0)`` subtracted (``mode="fixed"``);
- ``babnik`` -- the pAUC of the DifFIQA / eDifFIQA / FROQ papers (``babnik_pauc0.2_fmr*``,
  ``babnik_pauc0.3_fmr*``; they report FMR 1e-3): the same non-interpolated EDC as ``iso``, its stepwise
  area up to 20 % / 30 % discarded, **without** the ideal area subtracted. Their evaluation code is not
  public and the DifFIQA README says only "(non-interpolated) EDC curves" and "pAUC score at the FMR of
  1e-3" at drop rates 0.2 / 0.3; whether the ideal area is subtracted is not stated, so both forms are
  given (this one raw, ``edc_pauc*`` with the subtraction);
- ``fate`` -- NIST FATE Quality's ranking figure (``fate_fnmr_discard0``, ``..._discard0.01``, ``0.05``,
  ``0.2``): the threshold is fixed so that the FNMR of all mated pairs is 1 % (``fate_fnmr``), then the FNMR
  of the mated pairs left after discarding the lowest-quality 1 %, 5 % and 20 %.

The FR metrics of each model (accuracy, TAR@FAR, rank-k) are those of the set's own protocols, exactly as
``task=eval`` reports them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fiqa.eval import quality_metrics as qm
from fiqa.eval.edc import edc
from fiqa.eval.erc import ERCResult, erc, to_distance
from fiqa.eval.report import _plt, _save

__all__ = [
    "CONVENTIONS",
    "convention_of",
    "load_published",
    "plot_grid",
    "quality_cells",
    "table_metrics",
    "write_outputs",
]

CONVENTIONS = {
    "crfiqa": "CR-FIQA ERC: threshold re-estimated per reject rate (0-0.95), trapezoid AUC / pAUC",
    "iso": "ISO/IEC 29794-1 EDC: threshold fixed before discarding, stepwise pAUC minus the ideal area",
    "babnik": "DifFIQA/eDifFIQA/FROQ: fixed-threshold EDC, stepwise pAUC up to 20/30 % discard, raw",
    "fate": "NIST FATE Quality: threshold for FNMR 1 % on all mated pairs, FNMR after discarding",
    "fr": "the FR model's own metric (task=eval)",
}
_PREFIX = {"erc_": "crfiqa", "edc_": "iso", "babnik_": "babnik", "fate_": "fate"}


def table_metrics(fmrs: Sequence[float]) -> list[str]:
    """The quality tables of benchmark.md by default: the CR-FIQA AUC and the ISO pAUC at 0.2 at every FMR,
    the Babnik pAUC at 0.3 at the first FMR (theirs is 1e-3) and the FATE FNMR after discarding 20 %."""
    keys = [qm.fmr_key(float(f)) for f in fmrs]
    return [*(f"erc_auc_{k}" for k in keys), *(f"edc_pauc0.2_{k}" for k in keys), f"babnik_pauc0.3_{keys[0]}",
            "fate_fnmr_discard0.2"]  # fmt: skip


def convention_of(metric: str) -> str:
    """The convention of a column name (``crfiqa``, ``iso``, ``babnik``, ``fate``; ``fr`` otherwise)."""
    return next((c for p, c in _PREFIX.items() if metric.startswith(p)), "fr")


def quality_cells(
    scores,
    issame,
    pair_q,
    fmrs: Sequence[float] = (1e-3, 1e-4),
    score_kind: str = "cosine",
    pauc_limits: Sequence[float] = (0.2, 0.3),
    fate_fnmr: float = 0.01,
    fate_discards: Sequence[float] = (0.01, 0.05, 0.2),
) -> tuple[dict[str, float], ERCResult]:
    """The quality columns of one (FR model, source, set) cell (module docstring) and the CR-FIQA ERC
    (for the plots). ``scores`` (P,) of kind ``score_kind`` (``fiqa.eval.erc.to_distance``), ``issame``
    (P,), ``pair_q`` (P,) (higher = better). NaN where the pairs cannot resolve an FMR."""
    same = np.asarray(issame, bool)
    q = np.asarray(pair_q, np.float64)
    fmrs, limits = tuple(float(f) for f in fmrs), tuple(float(v) for v in pauc_limits)
    cr = erc(scores, same, q, "recompute_nearest", fmrs, score_kind=score_kind, pauc_limits=limits)
    out = {k: v for k, v in cr.metrics().items() if "_reject" not in k}
    iso = erc(scores, same, q, "fixed", fmrs, score_kind=score_kind, pauc_limits=limits)
    out.update({k: v for k, v in iso.metrics().items() if k.startswith("edc_pauc")})
    for f, fmr in enumerate(fmrs):
        e = iso.edc[f]
        for limit in limits:
            out[f"babnik_pauc{limit:g}_{qm.fmr_key(fmr)}"] = float("nan") if e is None else e.pauc(limit, False)
    if same.any():  # FATE: mated similarities only, threshold at the FNMR
        sim = -to_distance(scores, score_kind) if score_kind == "distance" else np.asarray(scores, np.float64)
        e = edc(sim[same], q[same], error="fnmr", starting_error=fate_fnmr)
        at = e.at(np.asarray([0.0, *fate_discards]))
        out.update({f"fate_fnmr_discard{r:g}": float(v) for r, v in zip([0.0, *fate_discards], at, strict=True)})
    return out, cr


# ---- published numbers -----------------------------------------------------------------------------
def load_published(paths: Iterable[Path]) -> dict[tuple, dict]:
    """``{(model, quality, set, metric): {"value", "source", "file"}}`` from ``experiments/*/published.yaml``
    files (lists of ``{model, quality, set, metric, value, source}``). A cell published twice keeps the first
    file's value (files in sorted order)."""
    import yaml

    out: dict[tuple, dict] = {}
    for path in sorted(Path(p) for p in paths):
        rows = yaml.safe_load(path.read_text()) or []
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a list of {{model, quality, set, metric, value, source}}")
        for i, r in enumerate(rows):
            missing = [k for k in ("model", "quality", "set", "metric", "value") if k not in r]
            if missing:
                raise ValueError(f"{path}: entry {i} lacks {missing}: {r}")
            key = (str(r["model"]), str(r["quality"]), str(r["set"]), str(r["metric"]))
            out.setdefault(key, {"value": float(r["value"]), "source": str(r.get("source", "")), "file": str(path)})
    return out


def with_published(rows: list[dict], published: Mapping[tuple, dict]) -> list[dict]:
    """Each row + ``published``, ``delta`` (ours - published) and ``published_source`` where the same
    (model, source, set, metric) cell is published (``source`` "-" = the FR model's own metric: quality
    ``none`` there)."""
    out = []
    for r in rows:
        key = (r["model"], "none" if r["source"] == "-" else r["source"], r["set"], r["metric"])
        p = published.get(key)
        v = r["value"]
        out.append({**r, "published": p["value"] if p else None,
                    "delta": (v - p["value"]) if p and math.isfinite(v) else None,
                    "published_source": p["source"] if p else ""})  # fmt: skip
    return out


# ---- outputs -------------------------------------------------------------------------------------
def _fmt(v) -> str:
    return "" if v is None else ("nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}")


def _table(title: str, row_names: list[str], cols: list[tuple], cell: Mapping, best: str | None) -> list[str]:
    """A markdown table: ``cell[(row, col)] = row dict``; the best value of each column in bold."""
    head = "| " + title + " | " + " | ".join(f"{m} / {s}" for m, s in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    best_of = {}
    for c in cols:
        vals = [cell[(r, c)]["value"] for r in row_names if (r, c) in cell and math.isfinite(cell[(r, c)]["value"])]
        if vals and best:
            best_of[c] = min(vals) if best == "min" else max(vals)
    for r in row_names:
        cells = []
        for c in cols:
            row = cell.get((r, c))
            if row is None:
                cells.append("")
                continue
            txt = _fmt(row["value"])
            if c in best_of and row["value"] == best_of[c]:
                txt = f"**{txt}**"
            if row.get("published") is not None:
                d = row.get("delta")
                txt += f" (pub. {_fmt(row['published'])}" + (f", Δ {d:+.4f})" if d is not None else ")")
            cells.append(txt)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def write_outputs(rows: list[dict], out_dir: Path, tables: Sequence[str],
                  fr_metrics: Sequence[str] = ("acc", "tar@far1e-4")) -> tuple[Path, Path]:  # fmt: skip
    """``benchmark.csv`` (long form: model, source, set, metric, convention, value, published, delta,
    published_source) and ``benchmark.md`` (the papers' layout: one table per quality metric, rows =
    quality sources, columns = (FR model, set), best per column in bold, the published value and Δ beside
    ours; then the FR models' own metrics)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["model", "source", "set", "metric", "convention", "value", "published", "delta", "published_source"]
    csv_path, md_path = out_dir / "benchmark.csv", out_dir / "benchmark.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    sets = list(dict.fromkeys(r["set"] for r in rows))
    sources = list(dict.fromkeys(r["source"] for r in rows if r["source"] != "-"))
    lines = ["# Benchmark", "", "Lower is better in every quality table (best per column in **bold**); "
             "`pub.` = the published value of the same cell (`experiments/*/published.yaml`), Δ = ours - published.",
             "", "Conventions: " + "; ".join(f"`{k}`: {v}" for k, v in CONVENTIONS.items()), ""]  # fmt: skip
    for metric in tables:
        cell = {(r["source"], (r["model"], r["set"])): r for r in rows if r["metric"] == metric}
        cs = [(m, s) for m in models for s in sets if any(k[1] == (m, s) for k in cell)]
        if not cs:
            continue
        lines += [f"## `{metric}` ({convention_of(metric)}: {CONVENTIONS[convention_of(metric)]})", ""]
        lines += _table("quality", sources, cs, cell, "min") + [""]
    fr = [r for r in rows if r["source"] == "-"]
    present = [m for m in fr_metrics if any(r["metric"] == m for r in fr)]
    if present:
        cell = {(r["model"], (r["set"], r["metric"])): r for r in fr if r["metric"] in present}
        cs = [(s, m) for s in sets for m in present if any(k[1] == (s, m) for k in cell)]
        lines += ["## The FR models (their own metrics, as task=eval; higher is better)", ""]
        lines += _table("FR model", models, cs, cell, "max") + [""]
    md_path.write_text("\n".join(lines))
    return csv_path, md_path


def plot_grid(ercs: Mapping[tuple, Mapping[str, ERCResult]], models: list[str], sets: list[str], fmr_index: int,
              path: Path) -> Path:  # fmt: skip
    """ERC plot grid: rows = FR models, columns = sets, one line per quality source (CR-FIQA's ERC at the
    ``fmr_index``-th FMR); ``ercs[(model, set)] = {source: ERCResult}``."""
    plt = _plt()
    fig, axes = plt.subplots(len(models), len(sets), figsize=(3.6 * len(sets), 2.9 * len(models)), dpi=100,
                             squeeze=False)  # fmt: skip
    fmr = float("nan")
    names = list(dict.fromkeys(n for v in ercs.values() for n in v))
    color = {n: f"C{k % 10}" for k, n in enumerate(names)}  # one colour per source in every panel
    for i, m in enumerate(models):
        for j, s in enumerate(sets):
            ax = axes[i][j]
            for name, r in sorted((ercs.get((m, s)) or {}).items(), key=lambda kv: np.nan_to_num(kv[1].auc[fmr_index],
                                                                                              nan=np.inf)):  # fmt: skip
                fmr = float(r.fmrs[fmr_index])
                ax.plot(
                    r.reject,
                    r.fnmr[:, fmr_index],
                    marker=".",
                    ms=3,
                    color=color[name],
                    label=f"{name} ({r.auc[fmr_index]:.4f})",
                )
            ax.set_title(f"{m} / {s}", fontsize=8)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6)
            if i == len(models) - 1:
                ax.set_xlabel("fraction rejected", fontsize=7)
            if j == 0:
                ax.set_ylabel("FNMR", fontsize=7)
    fig.suptitle(f"ERC (CR-FIQA convention) at FMR {fmr:g}: FR model (rows) x set (columns), AUC in brackets",
                 fontsize=9)  # fmt: skip
    return _save(fig, path)
