"""task=quality on raw photos (``score.detect=true``), the 0-100 scale and OFIQ's CSV layout.

Photos are aligned in chunks (``fiqa.detect.align``) and each chunk of crops is scored at once, so
memory stays bounded; only the CSV columns (and a few extreme crops for the contact sheet) are
kept. ``quality_iso`` (``score.scale=iso``) is ``Q = round(100 / (1 + exp((x0 - q) / w)))``, x0 and w
chosen by :func:`resolve_iso` (explicit keys, OFIQ's published mapping for MagFace norms, the
mapping a fiqa checkpoint fitted on its validation images, or a fit on this input)."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fiqa.detect.align import FACE_COLUMNS, face_row, list_photos
from fiqa.eval.report import plot_quality_histogram, write_metrics
from fiqa.quality import iso as iso_m
from fiqa.quality.scoring import ArrayImages, score_reader
from fiqa.tasks import photos as P
from fiqa.tasks import quality_iso
from fiqa.utils.logging import get_logger

log = get_logger(__name__)
SINGLE_FACE = iso_m.NAMES.index("SingleFacePresent")
MAGFACE_KINDS = ("MagFace", "QMagFace")


def stats(q: np.ndarray, csv_path: Path) -> dict:
    """Count, mean, std, min, max of the finite qualities (NaN when there are none) and the CSV path."""
    f = q[np.isfinite(q)]
    nan = float("nan")
    return {
        "images": int(q.size),
        "mean": float(f.mean()) if f.size else nan,
        "std": float(f.std()) if f.size else nan,
        "min": float(f.min()) if f.size else nan,
        "max": float(f.max()) if f.size else nan,
        "csv": str(csv_path),
    }


def warn_if_unaligned(source, name: str, probe: int = 16) -> None:
    """A warning when images of an input scored as aligned crops are not 112x112."""
    odd = []
    for i in range(min(probe, len(source))):
        try:
            img = source[i][0]
        except (ValueError, OSError):
            continue
        if img.shape[:2] != (112, 112):
            odd.append(f"{source.keys[i]} ({img.shape[1]}x{img.shape[0]})")
    if odd:
        log.warning(
            f"score.input={name}: {len(odd)} of the first {min(probe, len(source))} images are not 112x112 "
            f"(e.g. {', '.join(odd[:3])}): they look unaligned, and every method here expects ArcFace-aligned "
            f"112x112 crops. For photos, add score.detect=true (detect + align first), or run task=align."
        )


def is_magface_norm(model) -> bool:
    """Whether the model's quality is a MagFace feature magnitude (OFIQ's published mapping applies)."""
    if model is None:
        return True
    if type(model).__name__ in MAGFACE_KINDS:
        return True
    return getattr(model, "released_format", None) == "magface" and getattr(model, "quality_kind", "") == "norm"


def resolve_iso(cfg: DictConfig, model, q: np.ndarray, out: Path):
    """The :class:`~fiqa.quality.iso_scale.IsoScale` of ``score.scale=iso`` (see the module docstring)."""
    from fiqa.quality.iso_scale import OFIQ_UNIFIED, IsoScale, fit_sigmoid

    iso = cfg.score.iso
    if (iso.x0 is None) != (iso.w is None):
        raise ValueError("score.iso.x0 and score.iso.w go together: give both, or neither")
    if iso.x0 is not None:
        return IsoScale(float(iso.x0), float(iso.w), source="score.iso.x0/w")
    if iso.fit:
        fitted = fit_sigmoid(q)
        scale = IsoScale(fitted["x0"], fitted["w"], source=f"fitted on {cfg.score.input} ({fitted['n']} faces)")
        (out / "iso_scale.json").write_text(json.dumps({**fitted, "reference": str(cfg.score.input)}, indent=1))
        log.info(f"fitted score.iso.x0={scale.x0:.6g} score.iso.w={scale.w:.6g} on this input (-> iso_scale.json)")
        return scale
    if is_magface_norm(model):
        return IsoScale(OFIQ_UNIFIED["x0"], OFIQ_UNIFIED["w"], source="OFIQ's unified-score mapping (MagFace norm)")
    stored = getattr(model, "iso_scale", None)
    if stored and cfg.get("quality") is not None and "_target_" not in cfg.quality:
        return IsoScale.from_dict(stored)
    raise ValueError(
        f"score.scale=iso: {type(model).__name__} has no 0-100 mapping: only MagFace norms have a published one "
        f"(OFIQ's), and this checkpoint stores none (fiqa checkpoints store one fitted on their validation images). "
        f"Give score.iso.x0=<median quality> score.iso.w=<spread>, or score.iso.fit=true to fit them on this input "
        f"(median -> 50, 10th/90th percentiles -> 10/90)"
    )


def iso_values(cfg: DictConfig, model, q: np.ndarray, out: Path) -> np.ndarray | None:
    if cfg.score.scale == "raw":
        return None
    from fiqa.quality.iso_scale import OFIQ_UNIFIED, IsoScale

    if cfg.score.scale == "ofiq":
        scale = IsoScale(OFIQ_UNIFIED["x0"], OFIQ_UNIFIED["w"], source="OFIQ UnifiedQualityScore")
    else:
        scale = resolve_iso(cfg, model, q, out)
    log.info(f"quality_iso: x0={scale.x0:.6g}, w={scale.w:.6g} ({scale.source})")
    return scale.map(q).astype(np.int64)


def _fmt_ofiq(v) -> str:
    """OFIQ's number format: integral values as integers, others with 6 decimals."""
    v = float(v)
    if np.isfinite(v) and round(v) == v:
        return str(int(v))
    return f"{v:.6f}" if np.isfinite(v) else "nan"


def write_ofiq_csv(path: Path, keys, raw, scalar, times_ms, name: str = "UnifiedQualityScore", failed=()) -> Path:
    """OFIQ's result layout: ``Filename;<name>;<name>.scalar;assessment_time_in_ms;`` then one row per
    image (no trailing ``;``); an image without a face: raw 0, scalar -1; an unreadable one: ``path;;;0``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(f"Filename;{name};{name}.scalar;assessment_time_in_ms;\n")
        for k, r, s, t in zip(keys, raw, scalar if scalar is not None else [None] * len(raw), times_ms):
            sc = "-1" if s is None or s < 0 else _fmt_ofiq(s)
            f.write(f"{k};{_fmt_ofiq(r)};{sc};{_fmt_ofiq(round(t) if t is not None else 0)}\n")
        for key, reason in failed:
            f.write(f"{key};;;0\n" if reason in ("unreadable", "not_an_image") else f"{key};0;-1;0\n")
    return path


def _scorer(cfg: DictConfig, model):
    """``(crops (N, 112, 112, 3) uint8 RGB, extras) -> (qualities (N,), embeddings or None)`` and the crop
    function (None: ArcFace's). ``quality=iso``: the crop function also measures the face on the photo
    (its ``extras`` are the raw values, :mod:`fiqa.tasks.quality_iso`)."""
    s = cfg.score
    if model is None and quality_iso.is_iso(cfg):
        from fiqa.data.align import norm_crop
        from fiqa.quality import iso

        def crop_and_measure(img, landmarks):
            t0 = time.perf_counter()
            raw = iso.measure_face(img, landmarks, None)
            return norm_crop(img, landmarks, 112), raw, (time.perf_counter() - t0) * 1000

        def combined(crops, extras):
            return quality_iso.scores(np.stack(extras), cfg)[1], None

        return combined, crop_and_measure
    if s.scale == "ofiq":
        from fiqa.quality import ofiq

        crop_fn = ofiq.ofiq_align
        if s.get("ofiq_model"):
            net = ofiq.OnnxNorm(s.ofiq_model)
            return (lambda crops, extras: (net(ofiq.ofiq_input(crops)), None)), crop_fn
    else:
        crop_fn = None

    def run(crops, extras):
        return score_reader(model, ArrayImages(crops), int(s.batch_size), s.get("device"), 0, bool(s.save_embeddings))

    return run, crop_fn


def _components(cfg: DictConfig):
    return quality_iso.settings(cfg)[1]


def run(cfg: DictConfig, model, out: Path) -> dict:
    s, a = cfg.score, cfg.align
    if s.format == "ofiq" and a.faces == "all":
        raise ValueError("score.format=ofiq writes one row per image (as OFIQ): use align.faces=largest or center")
    photos, others = list_photos(s.input, s.get("list_root"), key="score.input")
    detector = P.build_detector(cfg)
    score_fn, crop_fn = _scorer(cfg, model)
    log.info(f"detecting, aligning and scoring {len(photos)} photos of {s.input} (detector on {detector.device})")
    xw = P.CsvAppender(out / "failed.csv", P.FAILED_COLUMNS, overwrite=True)
    counts, shown, pending, pending_extra, extras, measure_ms = Counter(), [], [], [], [], []
    keys, faces_idx, rows, q_parts, e_parts, times = [], [], [], [], [], []
    extremes = P.Extremes()
    failed_list = []
    advance, stop = P.progress(bool(s.progress), len(photos), "scoring photos")

    def flush():
        if not pending:
            return
        t0 = time.perf_counter()
        crops = np.stack([c for _, _, c in pending])
        q, e = score_fn(crops, [x for x in pending_extra])
        per_ms = (time.perf_counter() - t0) * 1000 / len(pending)
        scalar = quality_iso.scores(np.stack(pending_extra), cfg)[0] if pending_extra else None
        for j, ((key, k, crop), v) in enumerate(zip(pending, q)):
            caption = f"{key}#{k}"
            if scalar is not None:  # quality=iso: the component that set the quality first
                low = quality_iso.weakest(scalar[j], _components(cfg), 1)
                caption = f"{iso_m.SHORT[low[0][0]]} · {caption}" if low else caption
            extremes.add(float(v), crop, caption)
        q_parts.append(np.asarray(q, np.float64))
        times.extend([per_ms] * len(pending))
        if e is not None:
            e_parts.append(e)
        pending.clear()
        pending_extra.clear()

    try:
        results = P.aligned_photos(cfg, photos, others, detector, xw, counts, shown, bool(s.report), advance,
                                   crop_fn, failed_list)  # fmt: skip
        for r in results:
            for k, crop in enumerate(r.crops):
                if isinstance(crop, tuple):  # quality=iso: (crop, raw measures, ms)
                    crop, extra, ms = crop
                    measure_ms.append(ms)
                    extra[SINGLE_FACE] = iso_m.single_face(r.detections.boxes if r.detections is not None else None)
                    pending_extra.append(extra)
                    extras.append(extra)
                keys.append(r.key)
                faces_idx.append(k)
                rows.append(face_row(r.faces, k))
                pending.append((r.key, k, crop))
            if len(pending) >= int(s.batch_size):
                flush()
        flush()
    finally:
        stop()
        xw.close()
    q = np.concatenate(q_parts) if q_parts else np.empty(0)
    by_iso = model is None and quality_iso.is_iso(cfg)
    if by_iso:  # the combined ISO quality is on the 0-100 scale already; the time is the measuring's
        times = list(np.asarray(times) + np.asarray(measure_ms)) if measure_ms else times
        raw = np.stack(extras) if extras else np.empty((0, len(iso_m.NAMES)))
        scalar = quality_iso.scores(raw, cfg)[0]
        iso = np.where(np.isfinite(q), q, -1.0) if s.scale == "iso" and q.size else None
    else:
        iso = iso_values(cfg, model, q, out) if q.size else None
    csv_path = out / s.csv
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        iso_cols = quality_iso.columns() if by_iso else []
        w.writerow(["path_or_key", "face", "quality"] + (["quality_iso"] if iso is not None else []) + iso_cols
                   + FACE_COLUMNS)  # fmt: skip
        for i in range(q.size):
            more = quality_iso.row_values(raw[i], scalar[i]) if by_iso else []
            w.writerow([keys[i], faces_idx[i], f"{q[i]:.8g}"] + ([int(iso[i])] if iso is not None else []) + more
                       + rows[i])  # fmt: skip
    if s.format == "ofiq" and by_iso:
        quality_iso.write_ofiq_csv(out / "ofiq.csv", keys, raw, scalar, times, failed_list)
    elif s.format == "ofiq":
        name = "UnifiedQualityScore" if s.scale == "ofiq" else "Quality"
        write_ofiq_csv(out / "ofiq.csv", keys, q, iso, times, name, failed_list)
    n_images = len(photos) + len(others)
    summary = {
        **stats(q, csv_path),
        "faces": int(q.size),
        "photos": n_images,
        "failed": sum(counts.values()),
        **{f"failed_{k}": v for k, v in counts.items()},
        "failed_csv": str(out / "failed.csv"),
    }
    summary["images"] = n_images
    if by_iso and times:
        summary["ms_per_face"] = float(np.mean(times))
    no_face = counts.get("no_face", 0)
    log.info(P.summary_line(n_images, int(q.size), dict(counts), 0) + f"; {no_face} images had no face")
    if s.save_embeddings and e_parts:
        np.save(out / "embeddings.npy", np.concatenate(e_parts))
        summary["embeddings"] = str(out / "embeddings.npy")
    if s.histogram and q.size:
        summary["histogram"] = str(plot_quality_histogram(q, out / "quality_hist.png", title=Path(str(s.input)).name))
    if s.report:
        sections = []
        if by_iso and q.size:
            labels = [f"{keys[i]}#{faces_idx[i]}" for i in range(q.size)]
            png, text = quality_iso.report_extras(out / "report", labels, scalar, q, cfg)
            sections.append(("ISO/IEC 29794-5 components of the lowest-quality faces", png, text))
            summary["components"] = str(png)
        summary.update(P.write_report(out / "report", shown, extremes, "quality", iso=iso, sections=sections))
    write_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}, out)
    log.info(f"{q.size} qualities -> {csv_path}")
    return summary
