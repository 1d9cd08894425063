"""What task=align and task=quality score.detect=true share: the detector from ``cfg.detect``, the
``faces.csv`` / ``failed.csv`` writers (appending, so a rerun continues), the progress bar and the
report (alignment drawn on the first photos, contact sheet of the extreme faces, HTML page)."""

from __future__ import annotations

import csv
import heapq
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fiqa.detect import FaceDetector
from fiqa.detect.align import Aligned, Failed, align_photos, face_row, failed_others
from fiqa.utils.logging import get_logger

log = get_logger(__name__)

FAILED_COLUMNS = ["source", "reason", "detail"]


def build_detector(cfg: DictConfig) -> FaceDetector:
    d = cfg.detect
    return FaceDetector(
        min_size=float(d.min_size),
        thresholds=tuple(d.thresholds),
        factor=float(d.factor),
        max_side=None if d.max_side is None else int(d.max_side),
        device=d.get("device"),
        batch_size=int(d.batch_size),
    )


def done_sources(path: Path) -> set[str]:
    """The ``source`` column of an existing CSV (empty when there is none)."""
    if not path.is_file():
        return set()
    with path.open(newline="", encoding="utf-8") as f:
        return {row["source"] for row in csv.DictReader(f) if row.get("source") is not None}


class CsvAppender:
    """A CSV opened for appending (header written once), flushed after every row so a crash loses
    at most the image in flight."""

    def __init__(self, path: Path, columns: Sequence[str], overwrite: bool):
        fresh = overwrite or not path.is_file() or path.stat().st_size == 0
        if not fresh:
            with path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if header != list(columns):
                raise ValueError(
                    f"{path} has columns {header}, not {list(columns)}: it was written by another command; "
                    f"use another output folder or overwrite=true"
                )
        self.path = path
        self._f = path.open("w" if fresh else "a", newline="", encoding="utf-8")
        self._w = csv.writer(self._f)
        if fresh:
            self._w.writerow(columns)
            self._f.flush()

    def write(self, row: Iterable) -> None:
        self.write_rows([row])

    def write_rows(self, rows: Iterable[Iterable]) -> None:
        """Rows written and flushed together (the faces of one photo: all or none after a crash)."""
        self._w.writerows(rows)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def write_failure(w: CsvAppender, f: Failed) -> None:
    w.write([f.key, f.reason, f.detail])


def aligned_photos(cfg: DictConfig, photos, others, detector, failed: CsvAppender, counts, shown: list, report: bool,
                   on_image=None, crop_fn=None, failures: list | None = None):  # fmt: skip
    """The :class:`Aligned` photos of ``photos`` (``align.*`` settings); every failure (and every listed
    non-image of ``others``) goes to ``failed`` and ``counts`` (and ``failures``: ``(key, reason)``); the
    first ``align.report_images`` decoded photos are kept in ``shown`` for the report."""
    a = cfg.align

    def fail(f: Failed) -> None:
        write_failure(failed, f)
        counts[f.reason] += 1
        if failures is not None:
            failures.append((f.key, f.reason))

    for f in failed_others(others):
        fail(f)
    results = align_photos(photos, detector, a.faces, float(a.min_face_size), int(a.image_size),
                           int(a.batch_images), keep_images=report, on_image=on_image, crop_fn=crop_fn)  # fmt: skip
    for r in results:
        if report and r.image is not None and len(shown) < int(a.report_images):
            shown.append(r)
        else:
            r.image = None
        if isinstance(r, Aligned):
            yield r
        else:
            fail(r)


def face_rows(a: Aligned) -> list[list[str]]:
    return [face_row(a.faces, k) for k in range(len(a.faces))]


class Extremes:
    """The ``k`` lowest and ``k`` highest scored faces seen (for a contact sheet of a large run), with
    small copies of their crops, without keeping every crop in memory."""

    def __init__(self, k: int = 32):
        self.k, self._low, self._high, self._n = k, [], [], itertools.count()
        self.values: list[float] = []

    def add(self, value: float, crop: np.ndarray, caption: str) -> None:
        """Add the next face (the ``n``-th added is face ``n`` of the run: ``items()`` returns ``n``)."""
        self.values.append(float(value))
        n = next(self._n)
        small = crop if crop.shape[0] <= 112 else crop[:: crop.shape[0] // 112, :: crop.shape[1] // 112]
        item = (float(value), n, small, caption)
        if not np.isfinite(value):
            item = (float("-inf"), n, small, caption)
        heapq.heappush(self._low, (-item[0], n, item))
        if len(self._low) > self.k:
            heapq.heappop(self._low)
        heapq.heappush(self._high, (item[0], n, item))
        if len(self._high) > self.k:
            heapq.heappop(self._high)

    def items(self) -> list[tuple]:
        """``(value, n, crop, caption)`` of the kept faces, lowest value first."""
        seen, out = set(), []
        for _, n, item in sorted(self._low + self._high, key=lambda t: (t[2][0], t[1])):
            if n not in seen:
                seen.add(n)
                out.append(item)
        return out


def progress(enabled: bool, total: int, description: str):
    """``(advance, stop)`` of a rich progress bar (no-ops when disabled)."""
    if not enabled or total == 0:
        return (lambda: None), (lambda: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar.start()
    task = bar.add_task(description, total=total)
    return (lambda: bar.advance(task)), bar.stop


def detection_dict(r: Aligned | Failed) -> dict:
    det = r.detections
    d = {"boxes": np.empty((0, 4)), "scores": np.empty(0), "landmarks": np.empty((0, 5, 2))}
    if det is not None and len(det):
        d = {"boxes": det.boxes, "scores": det.scores, "landmarks": det.landmarks}
        if isinstance(r, Aligned):
            kept = {tuple(np.round(b, 3)) for b in r.faces.boxes}
            d["selected"] = np.array([tuple(np.round(b, 3)) in kept for b in det.boxes])
    if isinstance(r, Failed):
        d["failed"] = f"{r.reason}: {r.detail}"
    return d


def write_report(out: Path, shown: list, extremes: Extremes, what: str, iso: np.ndarray | None = None,
                 sections: list | None = None) -> dict:  # fmt: skip
    """``alignment.png`` (boxes + landmarks on the first photos), ``contact_sheet.png`` (faces by
    ``what``, worst first), ``<what>_hist.png`` and ``index.html`` in ``out`` (with the extra
    ``sections``: ``(heading, png, text)``); their paths."""
    from fiqa.eval import face_overview, face_report
    from fiqa.eval.report import plot_quality_histogram

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    if shown:
        paths["alignment"] = face_overview.alignment_overview(
            [r.image for r in shown],
            [detection_dict(r) for r in shown],
            out / "alignment.png",
            captions=[r.key for r in shown],
            max_images=len(shown),
        )
    items = extremes.items()
    paths["contact_sheet"] = face_report.contact_sheet(
        [it[2] for it in items],
        np.array([extremes.values[it[1]] for it in items], dtype=np.float64),
        out / "contact_sheet.png",
        captions=[it[3] for it in items],
        title=f"{len(extremes.values)} faces by {what} (worst first)",
        iso=np.array([int(iso[it[1]]) for it in items]) if iso is not None and items else None,
        max_faces=2 * extremes.k,
    )
    values = np.array(extremes.values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size:
        paths["histogram"] = plot_quality_histogram(values, out / f"{what.replace(' ', '_')}_hist.png", title=what)
    sections = [(name.replace("_", " "), p, None) for name, p in paths.items()] + list(sections or [])
    paths["html"] = face_report.write_html(out / "index.html", f"fiqa: {what}", sections)
    return {k: str(v) for k, v in paths.items()}


def summary_line(n_images: int, n_faces: int, failed: dict[str, int], skipped: int) -> str:
    why = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(failed.items(), key=lambda kv: -kv[1]))
    s = f"{n_images} images -> {n_faces} faces; {sum(failed.values())} images without a crop"
    s += f" ({why})" if why else ""
    return s + (f"; {skipped} already done (skipped)" if skipped else "")
