"""task=quality with ``quality=iso``: the ISO/IEC 29794-5 component measures (:mod:`fiqa.quality.iso`),
no model and no checkpoint.

* aligned crops (``score.input=<dir|.rec|.bin|list>``): the appearance components of each crop;
* photos (``score.detect=true``, through :mod:`fiqa.tasks.quality_photos`): every component, from the
  photo, the kept face's 5 landmarks and every detected box.

``qualities.csv`` has ``quality`` (the combined 0-100 value, :func:`fiqa.quality.iso.combine`), then for
each measure its raw value ``<Name>`` and its 0-100 value ``<Name>.scalar`` (-1: not assessed), and with
``score.format=ofiq`` ``ofiq.csv`` in OFIQ's layout (every raw value, then every scalar, in QAA order). The
report adds ``components.png`` (the worst faces x their components) and says which component limited how
many faces."""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fiqa.quality import iso
from fiqa.utils.logging import get_logger

log = get_logger(__name__)
TARGET = "fiqa.methods.iso.IsoQuality"
#: ofiq.csv's column order: OFIQ writes its measures ordered by QAA id; the stand-ins (no id) follow
OFIQ_ORDER = sorted(range(len(iso.NAMES)), key=lambda j: (iso.MEASURES[j].qaa is None, iso.MEASURES[j].qaa or 0, j))


def is_iso(cfg: DictConfig) -> bool:
    q = cfg.get("quality")
    return q is not None and q.get("_target_") == TARGET


def settings(cfg: DictConfig) -> tuple[str, object]:
    """``(combine, components)`` of ``quality.*``, checked."""
    how = str(cfg.quality.get("combine", "min"))
    comps = cfg.quality.get("components", "recognition")
    comps = comps if isinstance(comps, str) else [str(c) for c in OmegaConf.to_container(comps)]
    iso.combine(np.zeros((1, len(iso.NAMES))), how, comps)  # a clear error before any work
    return how, comps


def check(cfg: DictConfig) -> None:
    s = cfg.score
    if s.scale == "ofiq":
        raise ValueError(
            "quality=iso with score.scale=ofiq: OFIQ's unified score is a MagFace model's, not a component; "
            "use score.scale=raw (quality=iso is already on the 0-100 scale) and score.format=ofiq for OFIQ's layout"
        )
    if s.save_embeddings:
        raise ValueError("quality=iso computes no embeddings (no model runs); drop score.save_embeddings=true")
    settings(cfg)


def columns() -> list[str]:
    return [c for n in iso.NAMES for c in (n, f"{n}.scalar")]


def _fmt(v: float) -> str:
    return f"{v:.6g}" if np.isfinite(v) else "nan"


def row_values(raw: np.ndarray, scalar: np.ndarray) -> list[str]:
    return [c for r, q in zip(raw, scalar) for c in (_fmt(float(r)), str(int(q)))]


def weakest(scalar: np.ndarray, components, k: int = 3) -> list[tuple[str, int]]:
    """The ``k`` lowest assessed components among ``components`` of one face: ``[(name, value), ...]``."""
    names = iso.COMPONENT_SETS[components] if isinstance(components, str) else components
    pairs = [(n, int(scalar[iso.NAMES.index(n)])) for n in names if scalar[iso.NAMES.index(n)] >= 0]
    return sorted(pairs, key=lambda p: (p[1], p[0]))[:k]


def limiting_counts(scalar: np.ndarray, components) -> Counter:
    """How many faces each component limited (was the minimum of; ties count for each)."""
    c = Counter()
    for row in np.atleast_2d(scalar):
        w = weakest(row, components, k=len(iso.NAMES))
        if w:
            low = w[0][1]
            c.update(n for n, v in w if v == low)
    return c


def write_ofiq_csv(path: Path, keys, raw: np.ndarray, scalar: np.ndarray, times_ms, failed=()) -> Path:
    """OFIQ's layout (``OFIQSampleApp``): ``Filename;<M1>;...;<Mn>;<M1>.scalar;...;<Mn>.scalar;assessment_time_in_ms;``,
    one row per image (a kept face); an image without a usable face: raw 0 and scalar -1 for every measure
    (as :func:`fiqa.tasks.quality_photos.write_ofiq_csv`); an unreadable one: empty fields."""
    from fiqa.tasks.quality_photos import _fmt_ofiq

    names = [iso.NAMES[j] for j in OFIQ_ORDER]
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("Filename;" + "".join(f"{n};" for n in names) + "".join(f"{n}.scalar;" for n in names))
        f.write("assessment_time_in_ms;\n")
        for k, r, s, t in zip(keys, raw, scalar, times_ms):
            vals = [_fmt_ofiq(r[j]) for j in OFIQ_ORDER] + [_fmt_ofiq(s[j]) for j in OFIQ_ORDER]
            f.write(f"{k};" + ";".join(vals) + f";{round(t)}\n")
        n = len(names)
        for key, reason in failed:
            if reason in ("unreadable", "not_an_image"):
                f.write(f"{key};" + ";" * (2 * n) + "0\n")
            else:
                f.write(f"{key};" + ";".join(["0"] * n + ["-1"] * n) + ";0\n")
    return path


def scores(raw: np.ndarray, cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(scalar components (N, M), combined quality (N,))`` of raw values (N, M)."""
    how, comps = settings(cfg)
    scalar = iso.component_scores(raw) if len(raw) else np.empty((0, len(iso.NAMES)))
    return scalar, iso.combine(scalar, how, comps) if len(raw) else np.empty(0)


def report_extras(out: Path, keys, scalar: np.ndarray, quality: np.ndarray, cfg: DictConfig, max_faces: int = 24):
    """``components.png`` (the ``max_faces`` lowest-quality faces x their components, the 0-100 value in
    each cell) and the text of the limiting components; ``(png path, text)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, comps = settings(cfg)
    names = list(iso.COMPONENT_SETS[comps] if isinstance(comps, str) else comps)
    cols = [iso.NAMES.index(n) for n in names]
    order = np.argsort(np.where(np.isfinite(quality), quality, -np.inf), kind="stable")[:max_faces]
    grid = scalar[order][:, cols] if len(order) else np.zeros((0, len(cols)))
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(cols), 1.2 + 0.32 * max(len(order), 1)))
    shown = np.where(grid >= 0, grid, np.nan)
    ax.imshow(shown if len(order) else np.full((1, len(cols)), np.nan), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(order)):
        for j in range(len(cols)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if v < 0 else f"{int(v)}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(order)), [f"{keys[i]} ({quality[i]:.0f})" for i in order], fontsize=7)
    ax.set_title(f"the {len(order)} lowest-quality faces: ISO/IEC 29794-5 components (0-100)", fontsize=9)
    fig.tight_layout()
    png = out / "components.png"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    counts = limiting_counts(scalar, comps)
    n = max(len(scalar), 1)
    text = "limiting component (the minimum) of the faces: " + (
        ", ".join(f"{k} {100 * v / n:.0f} %" for k, v in counts.most_common()) or "none assessed"
    )
    return png, text


def run_aligned(cfg: DictConfig, out: Path) -> dict:
    """``quality=iso`` on aligned crops: the appearance components of every image of ``score.input``."""
    from fiqa.data.sources import open_source
    from fiqa.eval.report import plot_quality_histogram
    from fiqa.tasks import photos as P
    from fiqa.tasks.quality_photos import stats, warn_if_unaligned

    s = cfg.score
    source = open_source(s.input, s.get("list_root"))
    warn_if_unaligned(source, str(s.input))
    log.info(f"ISO/IEC 29794-5 components of {len(source)} aligned crops of {source!r} (appearance measures)")
    raw = np.full((len(source), len(iso.NAMES)), np.nan)
    times = np.zeros(len(source))
    advance, stop = P.progress(bool(s.progress), len(source), "measuring")
    try:
        for i in range(len(source)):
            t0 = time.perf_counter()
            raw[i] = iso.measure_aligned(source[i][0])
            times[i] = (time.perf_counter() - t0) * 1000
            advance()
    finally:
        stop()
    scalar, q = scores(raw, cfg)
    csv_path = out / s.csv
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_or_key", "quality", *columns()])
        for i, k in enumerate(source.keys):
            w.writerow([k, _fmt(float(q[i])), *row_values(raw[i], scalar[i])])
    if s.format == "ofiq":
        write_ofiq_csv(out / "ofiq.csv", list(source.keys), raw, scalar, times)
    summary = {**stats(q, csv_path), "ms_per_image": float(times.mean()) if len(times) else float("nan")}
    if s.histogram and q.size:
        summary["histogram"] = str(plot_quality_histogram(q, out / "quality_hist.png", title=Path(str(s.input)).name))
    log.info(f"{q.size} ISO qualities -> {csv_path} ({summary['ms_per_image']:.1f} ms per image)")
    return summary
