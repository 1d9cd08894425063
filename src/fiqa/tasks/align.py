"""task=align align.input=<folder | list | image> [align.output=DIR]: raw photos -> aligned crops.

Writes into ``align.output`` (default ``<run dir>/aligned``): ``crops/<source path>_<face>.png`` (the
ArcFace 5-point alignment, ``align.image_size``), ``faces.csv`` (source, face, crop, box, detection
score, the 10 landmark coordinates in the original photo), ``failed.csv`` (source, reason, detail),
``report/`` and, with ``align.rec=true``, ``train.rec`` + ``train.idx``. One bad image never stops the
run; a rerun into the same folder skips every source already in ``faces.csv`` or ``failed.csv``."""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path, PurePath

import cv2
from omegaconf import DictConfig

from fiqa.detect.align import FACE_COLUMNS, list_photos
from fiqa.eval.report import write_metrics
from fiqa.tasks import photos as P
from fiqa.utils.logging import get_logger

log = get_logger(__name__)
FORMATS = ("png", "jpg")


def crop_name(key: str, face: int, fmt: str) -> str:
    """``crops/`` relative name of face ``face`` of source ``key`` (no absolute or parent parts)."""
    parts = [p for p in PurePath(key).parts if p not in ("/", "\\", "..", ".") and not p.endswith(":\\")]
    stem = PurePath(*parts).with_suffix("") if parts else PurePath("image")
    return f"{stem.as_posix()}_{face}.{fmt}"


def align(cfg: DictConfig) -> dict:
    a = cfg.align
    if a.format not in FORMATS:
        raise ValueError(f"align.format={a.format!r} is not a format; valid choices: {list(FORMATS)}")
    out = Path(a.output) if a.get("output") else Path(cfg.paths.output_dir) / "aligned"
    out.mkdir(parents=True, exist_ok=True)
    photos, others = list_photos(a.input, a.get("list_root"))
    faces_csv, failed_csv = out / "faces.csv", out / "failed.csv"
    skip = (
        set() if a.overwrite else P.done_sources(faces_csv) | (set() if a.retry_failed else P.done_sources(failed_csv))
    )
    todo = [p for p in photos if p[1] not in skip]
    columns = ["source", "face", "crop", *FACE_COLUMNS]
    fw, xw = P.CsvAppender(faces_csv, columns, a.overwrite), P.CsvAppender(failed_csv, P.FAILED_COLUMNS, a.overwrite)
    detector = P.build_detector(cfg)
    log.info(f"aligning {len(todo)} photos of {a.input} ({len(photos) - len(todo)} already done) on {detector.device}")
    counts, n_faces, shown, extremes = Counter(), 0, [], P.Extremes()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(a.jpeg_quality)] if a.format == "jpg" else []
    advance, stop = P.progress(bool(a.progress), len(todo), "aligning")
    t0 = time.perf_counter()
    try:
        new_others = [o for o in others if o[1] not in skip]
        for r in P.aligned_photos(cfg, todo, new_others, detector, xw, counts, shown, bool(a.report), advance):
            rows = []
            for k, (crop, row) in enumerate(zip(r.crops, P.face_rows(r))):
                name = crop_name(r.key, k, a.format)
                (out / "crops" / name).parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(out / "crops" / name), crop[:, :, ::-1], params):
                    raise OSError(f"cannot write {out / 'crops' / name}")
                rows.append([r.key, k, f"crops/{name}", *row])
                extremes.add(float(r.faces.scores[k]), crop, f"{r.key}#{k}")
            fw.write_rows(rows)  # after its crops: a source listed in faces.csv is complete
            n_faces += len(rows)
    finally:
        stop()
        fw.close()
        xw.close()
    seconds = time.perf_counter() - t0
    summary = {
        "images": len(todo),
        "faces": n_faces,
        "failed": sum(counts.values()),
        "skipped": len(photos) - len(todo),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(todo) / seconds, 2) if seconds > 0 else 0.0,
    }
    summary.update({f"failed_{k}": v for k, v in counts.items()})
    log.info(P.summary_line(len(todo), n_faces, dict(counts), len(photos) - len(todo)) + f" -> {out}")
    paths = {"faces_csv": str(faces_csv), "failed_csv": str(failed_csv)}
    if a.report:
        paths.update(P.write_report(out / "report", shown, extremes, "detection score"))
    if a.rec:
        paths["rec"] = _pack(out, bool(a.progress))
    write_metrics({k: float(v) for k, v in summary.items()}, Path(cfg.paths.output_dir))
    return {**summary, **paths, "output": str(out)}


def _pack(out: Path, progress: bool) -> str:
    """Every crop of faces.csv into out/train.rec (face2rec2; label = the first folder of the source)."""
    from fiqa.data.pack import pack_dataset

    with (out / "faces.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"align.rec=true: {out / 'faces.csv'} lists no face, nothing to pack")
    ident = [PurePath(r["source"]).parts[0] if len(PurePath(r["source"]).parts) > 1 else "" for r in rows]
    names = sorted(set(ident))
    label = {n: i for i, n in enumerate(names)}
    lst = out / "crops.lst"
    lst.write_text("".join(f"{r['crop']}\t{label[i]}\n" for r, i in zip(rows, ident)), encoding="utf-8")
    s = pack_dataset(lst, out, layout="face2rec2", list_root=out, overwrite=True, progress=progress)
    log.info(f"packed {s['num_images']} crops of {s['num_classes']} identities into {s['rec']}")
    return s["rec"]
