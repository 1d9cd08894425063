"""The detections drawn on the originals, for the report of raw photos (numpy, OpenCV, matplotlib).

:func:`alignment_overview`: the originals (downscaled to a long side of at most 640 px) with each
detection's box, score and 5 landmarks; the kept faces in green, the others in thin dashed orange, and the
reason in red for an image without a usable face.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from fiqa.eval.face_report import _DPI, _as_rgb, _ellipsize, empty_figure
from fiqa.eval.report import _plt, _save

LANDMARK_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")
LANDMARK_COLOURS = ((230, 25, 75), (0, 130, 200), (255, 225, 25), (240, 50, 230), (70, 240, 240))
KEPT_COLOUR = (0, 200, 0)  # box of a face that was kept / aligned
OTHER_COLOUR = (255, 140, 0)  # box of a face that was not (thin, dashed)
FAILED_COLOUR = (220, 0, 0)  # frame of an image without a usable face


def _downscale(image, max_side: int = 640) -> tuple[np.ndarray, float]:
    """``(copy, scale)``: an RGB copy of ``image`` whose long side is at most ``max_side`` px, and the factor
    its coordinates were multiplied by (1.0 when it was small enough)."""
    a = _as_rgb(image)
    h, w = a.shape[:2]
    s = min(1.0, max_side / max(h, w, 1))
    if s >= 1.0:
        return a.copy(), 1.0
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    return cv2.resize(a, (nw, nh), interpolation=cv2.INTER_AREA), s


def _dashed_rect(img: np.ndarray, p1, p2, colour, thickness: int = 1, dash: int = 6, gap: int = 4) -> None:
    (x1, y1), (x2, y2) = p1, p2
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
        if length == 0:
            continue
        for t0 in np.arange(0.0, length, dash + gap):
            t1 = min(t0 + dash, length)
            s = (round(a[0] + (b[0] - a[0]) * t0 / length), round(a[1] + (b[1] - a[1]) * t0 / length))
            e = (round(a[0] + (b[0] - a[0]) * t1 / length), round(a[1] + (b[1] - a[1]) * t1 / length))
            cv2.line(img, s, e, colour, thickness, cv2.LINE_AA)


def _draw_detections(image, det: Mapping, max_side: int = 640) -> np.ndarray:
    """The detections ``det`` drawn (with OpenCV) on a copy of ``image`` downscaled to a long side of at
    most ``max_side`` px, coordinates scaled to match: each box (kept faces, ``det["selected"]`` true or
    absent, in thick green; the others thin dashed orange) with its score, then the 5 landmarks as dots
    of :data:`LANDMARK_COLOURS`. With ``det["failed"]`` (a reason) only a red frame is drawn."""
    out, s = _downscale(image, max_side)
    h, w = out.shape[:2]
    if det.get("failed"):
        cv2.rectangle(out, (0, 0), (w - 1, h - 1), FAILED_COLOUR, max(3, round(max(h, w) / 100)))
        return out
    boxes = np.asarray(det.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4) * s
    k = boxes.shape[0]
    scores = np.asarray(det.get("scores", np.full(k, np.nan)), dtype=np.float64).reshape(-1)
    marks = det.get("landmarks")
    marks = np.zeros((0, 5, 2)) if marks is None else np.asarray(marks, dtype=np.float64).reshape(-1, 5, 2) * s
    sel = det.get("selected")
    sel = np.ones(k, bool) if sel is None else np.asarray(sel, dtype=bool).reshape(-1)
    if scores.size != k or sel.size != k or marks.shape[0] not in (0, k):
        raise ValueError(
            f"detection arrays disagree: {k} boxes, {scores.size} scores, {sel.size} selected, "
            f"{marks.shape[0]} landmark sets"
        )
    thick = max(2, round(max(h, w) / 320))
    font = 0.4 + 0.1 * (max(h, w) >= 480)
    # not-kept faces first, so a kept box drawn over one stays visible
    for b in sorted(range(k), key=lambda j: bool(sel[j])):
        if not np.isfinite(boxes[b]).all():
            continue
        x1, y1, x2, y2 = (round(v) for v in boxes[b])
        colour = KEPT_COLOUR if sel[b] else OTHER_COLOUR
        if sel[b]:
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        else:
            _dashed_rect(out, (x1, y1), (x2, y2), colour, 1)
        if np.isfinite(scores[b]):
            text = f"{scores[b]:.2f}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            ty = y1 - 3 if y1 - th - base - 3 >= 0 else y1 + th + 3  # above the box, or inside at the top
            cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base - 1), (0, 0, 0), -1)
            cv2.putText(out, text, (x1 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font, colour, 1, cv2.LINE_AA)
    radius = max(2, round(min(h, w) / 170))
    for b in range(marks.shape[0]):
        for p, colour in zip(marks[b], LANDMARK_COLOURS):
            if np.isfinite(p).all():
                c = (round(p[0]), round(p[1]))
                cv2.circle(out, c, radius + 1, (0, 0, 0), -1)
                cv2.circle(out, c, radius, colour, -1)
    return out


def alignment_overview(
    images: Sequence,
    detections: Sequence[Mapping],
    path: Path,
    captions: Sequence[str] | None = None,
    max_images: int = 6,
    columns: int = 3,
) -> Path:
    """A PNG grid of the first ``max_images`` originals (uint8 ``HxWx3`` RGB, any size; drawn downscaled to a
    long side of at most 640 px) with their detections: per image a dict of ``boxes`` (K, 4) x1, y1, x2, y2,
    ``scores`` (K,), ``landmarks`` (K, 5, 2) x, y in :data:`LANDMARK_NAMES` order, optional ``selected``
    (K,) bool (the kept / aligned faces: green; the others thin dashed orange; absent = all kept) and
    optional ``failed`` (a reason, shown in red instead of the boxes). One legend for the landmark
    colours and box styles. Returns ``path`` (its folder is created)."""
    if len(images) != len(detections):
        raise ValueError(f"{len(images)} images but {len(detections)} detections")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions but {len(images)} images")
    if max_images < 1 or columns < 1:
        raise ValueError(f"max_images and columns must be >= 1, got {max_images}, {columns}")
    plt = _plt()
    shown = min(len(images), max_images)
    head_line = f"{len(images)} image{'s' * (len(images) != 1)}" + (
        f" (first {shown} shown)" if shown < len(images) else ""
    )
    if shown == 0:
        return empty_figure(path, "no images", head_line)

    from matplotlib.lines import Line2D

    cols = min(columns, shown)
    rows = -(-shown // cols)
    fig = plt.figure(figsize=(4.6 * cols, 4.4 * rows + 0.8), dpi=_DPI)
    gs = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [0.1])
    for i in range(shown):
        det = detections[i]
        ax = fig.add_subplot(gs[i // cols, i % cols])
        ax.imshow(_draw_detections(images[i], det))
        ax.set_xticks([])
        ax.set_yticks([])
        k = len(np.asarray(det.get("boxes", np.zeros((0, 4)))).reshape(-1, 4))
        sel = det.get("selected")
        kept = k if sel is None else int(np.count_nonzero(np.asarray(sel, dtype=bool)))
        cap = _ellipsize(captions[i], 40) if captions is not None else f"image {i}"
        ax.set_title(f"{cap}\n{k} face{'s' * (k != 1)} · {kept} kept", fontsize=8)
        if det.get("failed"):
            ax.text(
                0.5,
                0.5,
                "failed: " + _ellipsize(det["failed"], 60),
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="red",
                fontsize=8,
                wrap=True,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "red"},
            )
    handles = [
        Line2D([], [], marker="o", ls="", color=np.asarray(c) / 255, markeredgecolor="k", label=name)
        for name, c in zip(LANDMARK_NAMES, LANDMARK_COLOURS)
    ]
    handles += [
        Line2D([], [], color=np.asarray(KEPT_COLOUR) / 255, lw=2, label="kept face"),
        Line2D([], [], color=np.asarray(OTHER_COLOUR) / 255, lw=1, ls="--", label="not kept"),
    ]
    lax = fig.add_subplot(gs[rows, :])
    lax.axis("off")
    lax.legend(handles=handles, loc="center", ncol=len(handles) if cols >= 3 else 4, fontsize=7, frameon=False)
    fig.suptitle(head_line, fontsize=9)
    return _save(fig, path)


# ---- html ----------------------------------------------------------------------------------------
