"""ERC comparison of several quality sources on one FR model's comparison scores (``task=compare``):
curves, one plot per (set, FMR), and a long table of AUC / pAUC. Pure numpy + matplotlib (Agg)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fiqa.eval import quality_metrics as qm
from fiqa.eval.erc import THRESHOLD_RULES, ERCResult, erc, pair_quality
from fiqa.eval.report import _plt, _save

__all__ = ["compare_sources", "plot_erc", "rows_of", "write_tables"]


def compare_sources(
    scores: np.ndarray,
    issame: np.ndarray,
    qualities: Mapping[str, np.ndarray],
    fmrs: Sequence[float] = (1e-2, 1e-3),
    mode: str = "recompute_nearest",
    reduce: str = "min",
    score_kind: str = "cosine",
) -> dict[str, ERCResult]:
    """One :func:`fiqa.eval.erc.erc` per quality source (image qualities, rows 2p and 2p+1 per pair)."""
    out = {}
    for name, q in qualities.items():
        q = np.asarray(q, np.float64)
        if q.shape[0] != 2 * len(issame):
            raise ValueError(f"quality source {name!r}: {q.shape[0]} qualities for {len(issame)} pairs")
        out[name] = erc(scores, issame, pair_quality(q, reduce=reduce), mode, fmrs, None, score_kind)
    return out


def rows_of(set_name: str, results: Mapping[str, ERCResult]) -> list[dict]:
    """Long-format rows: set, source, fmr, auc, pauc0.2, pauc0.3, fnmr at 0 and 20 % reject."""
    rows = []
    for source, r in results.items():
        for f, fmr in enumerate(r.fmrs):
            row = {"set": set_name, "source": source, "fmr": float(fmr), "auc": float(r.auc[f])}
            for limit, v in r.pauc.items():
                row[f"pauc{limit:g}"] = float(v[f])
            for rate in (0.0, 0.2):
                i = int(np.argmin(np.abs(r.reject - rate)))
                row[f"fnmr_reject{rate:g}"] = float(r.fnmr[i, f])
            rows.append(row)
    return rows


def write_tables(rows: list[dict], out_dir: Path, stem: str = "compare") -> tuple[Path, Path]:
    """``<stem>.csv`` and ``<stem>.md`` (sorted by set, FMR, AUC: the best source first)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["set"], r["fmr"], r["auc"]))
    cols = list(rows[0]) if rows else ["set", "source", "fmr", "auc"]
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [qm.fmr_key(r[c]) if c == "fmr" else (f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]))
                 for c in cols]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text(
        "ERC of each quality source (lower AUC / pAUC is better: rejecting by that quality removes errors faster)\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return csv_path, md_path


def plot_erc(results: Mapping[str, ERCResult], fmr_index: int, path: Path, title: str = "") -> Path:
    """FNMR vs the fraction of pairs rejected, one line per source, for one FMR."""
    many = len(results) > 6  # the legend goes beside the axes; past 10 lines the colours repeat with dashes
    fig, ax = _plt().subplots(figsize=(7.4 if many else 5.2, 3.8), dpi=110)
    for i, (name, r) in enumerate(sorted(results.items(), key=lambda kv: kv[1].auc[fmr_index])):
        ax.plot(r.reject, r.fnmr[:, fmr_index], marker=".", color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3],
                label=f"{name} (AUC {r.auc[fmr_index]:.4f})")  # fmt: skip
    fmr = next(iter(results.values())).fmrs[fmr_index] if results else float("nan")
    ax.set_xlabel("fraction of pairs rejected (lowest quality first)")
    ax.set_ylabel(f"FNMR at FMR {fmr:g}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if many else {}))
    modes = {r.mode for r in results.values()}
    return _save(fig, path, THRESHOLD_RULES[modes.pop()] if len(modes) == 1 else "")
