"""The report a person looks at after scoring raw photos: face crops sorted by quality, the detections
drawn on the originals, and a small HTML page that shows both (numpy, OpenCV and matplotlib; no torch).

- :func:`contact_sheet`: a grid of face crops sorted by quality (worst first by default), each tile
  with its quality (4 significant digits), the optional ISO 0-100 value and a caption, its border
  coloured by quality rank (red for the worst, green for the best). Past ``max_faces`` the worst and
  the best halves are shown, with a "... K faces not shown ..." band between them.
- :func:`fiqa.eval.face_overview.alignment_overview`: the detections drawn on the originals.
- :func:`write_html`: a self-contained page embedding PNGs by paths relative to the page's folder.

Qualities are "higher = better"; NaN qualities are shown as ``n/a`` and sorted last.
"""

from __future__ import annotations

import html
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fiqa.eval.report import _plt, _save

#: The 5 landmarks in the order of a detection's ``landmarks`` (as seen in the image).
#: Their dot colours (RGB): red, blue, yellow, magenta, cyan.
NAN_COLOUR = (150, 150, 150)  # tile border of a face without a quality

TILE = 112  # crop side on the contact sheet (crops of another size are fitted into it)
_BORDER = 4  # tile border, px
_GAP = 6  # space between cells, px
_BAND = 30  # text band under a tile (two lines), px
_SEP = 28  # height of the "... faces not shown ..." band, px
_DPI = 100
_CHAR_PX = 5.6  # rough width of one caption character at the caption font size, px


# ---- helpers (exposed for the tests) -------------------------------------------------------------
def _order(qualities, worst_first: bool = True) -> np.ndarray:
    """Display order (indices): finite qualities ascending (``worst_first``) or descending, ties in input
    order, then the NaN qualities in input order."""
    q = np.asarray(qualities, dtype=np.float64).reshape(-1)
    finite = np.flatnonzero(np.isfinite(q))
    key = q[finite] if worst_first else -q[finite]
    return np.concatenate([finite[np.argsort(key, kind="stable")], np.flatnonzero(~np.isfinite(q))]).astype(np.int64)


def _select(qualities, worst_first: bool = True, max_faces: int = 64) -> tuple[np.ndarray, np.ndarray, int]:
    """``(head, tail, hidden)``: the indices shown before and after the "not shown" band, and how many faces
    are left out. Up to ``max_faces`` faces: all of them in :func:`_order`, ``tail`` empty, ``hidden`` 0.
    More: the ``max_faces // 2`` worst and ``max_faces // 2`` best faces with a quality (head/tail in
    display order; faces without a quality are then left out), or, when fewer than ``max_faces`` have a
    quality, all of those followed by as many without one as fit (the band comes last)."""
    if max_faces < 2:
        raise ValueError(f"max_faces must be >= 2 (the worst and the best faces are shown), got {max_faces}")
    q = np.asarray(qualities, dtype=np.float64).reshape(-1)
    order = _order(q, worst_first)
    empty = np.zeros(0, dtype=np.int64)
    if order.size <= max_faces:
        return order, empty, 0
    ok = np.isfinite(q[order])
    finite, nan = order[ok], order[~ok]
    k = max_faces // 2
    if finite.size > 2 * k:
        head, tail = finite[:k], finite[-k:]
    else:
        head, tail = np.concatenate([finite, nan[: max_faces - finite.size]]), empty
    return head, tail, int(order.size - head.size - tail.size)


def _ellipsize(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters with an ellipsis in the middle (the start and the end of a
    file name are the informative parts)."""
    text = str(text)
    if len(text) <= max_chars:
        return text
    if max_chars <= 1:
        return "…"[:max_chars]
    keep = max_chars - 1
    tail = keep // 2
    return text[: keep - tail] + "…" + (text[-tail:] if tail else "")


def _label(quality: float, iso: int | None = None) -> str:
    """A tile's quality line: ``"q 1.234"``, with the ISO value ``"q 1.234 · 63"`` (``n/a`` for NaN / -1)."""
    q = float(quality)
    s = "q n/a" if not np.isfinite(q) else f"q {q:.4g}"
    if iso is not None:
        s += " · " + ("n/a" if int(iso) < 0 else str(int(iso)))
    return s


def _summary(qualities) -> str:
    """The title line: the number of faces and the min / median / max of the finite qualities."""
    q = np.asarray(qualities, dtype=np.float64).reshape(-1)
    fin = q[np.isfinite(q)]
    s = f"N = {q.size}"
    if fin.size:
        s += f" · quality min {fin.min():.4g} / median {np.median(fin):.4g} / max {fin.max():.4g}"
    else:
        s += " · quality n/a"
    if fin.size < q.size:
        s += f" · {q.size - fin.size} without a quality"
    return s


def _rank_colours(qualities) -> np.ndarray:
    """``(N, 3)`` uint8 RGB border colour per face from its quality rank among the finite qualities (ties
    share their mean rank): red (worst) -> yellow -> green (best); grey for NaN."""
    import matplotlib

    q = np.asarray(qualities, dtype=np.float64).reshape(-1)
    out = np.tile(np.asarray(NAN_COLOUR, np.uint8), (q.size, 1))
    ok = np.isfinite(q)
    fin = np.sort(q[ok])
    if fin.size:
        rank = 0.5 * (np.searchsorted(fin, q[ok], "left") + np.searchsorted(fin, q[ok], "right") - 1)
        frac = rank / (fin.size - 1) if fin.size > 1 else np.full(rank.shape, 0.5)
        rgba = matplotlib.colormaps["RdYlGn"](0.05 + 0.9 * frac)
        out[ok] = np.round(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)
    return out


def _as_rgb(image) -> np.ndarray:
    """An ``HxWx3`` uint8 array from a uint8 RGB, RGBA or grayscale image."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64)), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def _fit(crop, size: int = TILE) -> np.ndarray:
    """``crop`` as a ``size`` x ``size`` RGB tile: unchanged at that size, else resized keeping its aspect and
    centred on grey."""
    a = _as_rgb(crop)
    h, w = a.shape[:2]
    if (h, w) == (size, size):
        return a
    s = size / max(h, w, 1)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    a = cv2.resize(a, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.full((size, size, 3), 128, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y : y + nh, x : x + nw] = a
    return out


def _sheet(crops, qualities, worst_first: bool = True, max_faces: int = 64, columns: int = 8):
    """The contact sheet's pixels: ``(canvas, placements, band)`` where ``canvas`` is the uint8 RGB grid of
    bordered tiles, ``placements`` a list of ``(index, x, y)`` (the face's index and the top-left pixel of
    its crop, in display order) and ``band`` ``(y, hidden)`` of the "not shown" band or ``None``."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    q = np.asarray(qualities, dtype=np.float64).reshape(-1)
    head, tail, hidden = _select(q, worst_first, max_faces)
    colours = _rank_colours(q)
    cell_w, cell_h = TILE + 2 * _BORDER + _GAP, TILE + 2 * _BORDER + _BAND + _GAP
    cols = max(1, min(columns, max(head.size, tail.size, 1)))
    rows_head, rows_tail = -(-head.size // cols), -(-tail.size // cols)
    height = _GAP + (rows_head + rows_tail) * cell_h + (_SEP + _GAP if hidden else 0)
    canvas = np.full((height, _GAP + cols * cell_w, 3), 255, np.uint8)
    placements, band = [], None
    y0 = _GAP
    for part in (head, tail):
        for j, i in enumerate(part):
            x = _GAP + (j % cols) * cell_w
            y = y0 + (j // cols) * cell_h
            canvas[y : y + TILE + 2 * _BORDER, x : x + TILE + 2 * _BORDER] = colours[i]
            canvas[y + _BORDER : y + _BORDER + TILE, x + _BORDER : x + _BORDER + TILE] = _fit(crops[int(i)])
            placements.append((int(i), x + _BORDER, y + _BORDER))
        y0 += -(-part.size // cols) * cell_h
        if part is head and hidden:
            band = (y0, hidden)
            canvas[y0 : y0 + _SEP, _GAP : canvas.shape[1] - _GAP] = 235
            y0 += _SEP + _GAP
    return canvas, placements, band


# ---- contact sheet -------------------------------------------------------------------------------
def empty_figure(path: Path, text: str, title: str) -> Path:
    """A small PNG saying ``text`` (e.g. "no faces") under ``title``: what a figure of nothing shows."""
    fig, ax = _plt().subplots(figsize=(4.0, 2.0), dpi=_DPI)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def contact_sheet(
    crops,
    qualities,
    path: Path,
    captions: Sequence[str] | None = None,
    title: str | None = None,
    worst_first: bool = True,
    max_faces: int = 64,
    columns: int = 8,
    iso=None,
) -> Path:
    """A PNG grid of the face ``crops`` (uint8 ``HxWx3`` RGB, typically 112x112) sorted by ``qualities``
    ((N,), higher = better, NaN shown as ``n/a`` and last), worst first unless ``worst_first=False``.

    Each tile shows the crop in a border coloured by quality rank (red = worst, green = best), its
    quality (4 significant digits) and ISO 0-100 value when ``iso`` ((N,) ints, -1 = n/a) is given
    (``"q 1.234 · 63"``), and its caption (e.g. the file name; middle-ellipsized to fit). Past
    ``max_faces`` faces, the ``max_faces // 2`` worst and best ones are shown with a
    "... K faces not shown ..." band between them. The title line gives N and the min / median / max
    quality; N = 0 gives an image saying "no faces". Returns ``path`` (its folder is created)."""
    q = np.asarray(qualities, dtype=np.float64).reshape(-1)
    n = q.size
    if len(crops) != n:
        raise ValueError(f"{len(crops)} crops but {n} qualities")
    if captions is not None and len(captions) != n:
        raise ValueError(f"{len(captions)} captions but {n} qualities")
    iso_a = None if iso is None else np.asarray(iso).reshape(-1)
    if iso_a is not None and iso_a.size != n:
        raise ValueError(f"{iso_a.size} iso values but {n} qualities")
    head_line = (f"{title} — " if title else "") + _summary(q)
    plt = _plt()
    if n == 0:
        return empty_figure(path, "no faces", head_line)

    canvas, placements, band = _sheet(crops, q, worst_first, max_faces, columns)
    h, w = canvas.shape[:2]
    fig, ax = plt.subplots(figsize=(max(w / _DPI, 4.0) + 0.2, h / _DPI + 0.5), dpi=_DPI)
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    ax.set_title(head_line + (f" · showing {len(placements)}" if band else ""), fontsize=9)
    max_chars = max(4, int((TILE + 2 * _BORDER) / _CHAR_PX))
    for i, x, y in placements:
        cx, ty = x + TILE / 2, y + TILE + _BORDER + 2
        label = _label(q[i], None if iso_a is None else iso_a[i])
        ax.text(cx, ty, label, ha="center", va="top", fontsize=7, fontweight="bold", color="black")
        if captions is not None:
            cap = _ellipsize(captions[i], max_chars)
            ax.text(cx, ty + 13, cap, ha="center", va="top", fontsize=6.5, color="dimgray")
    if band is not None:
        y, hidden = band
        nan_hidden = int(np.count_nonzero(~np.isfinite(q))) - sum(not np.isfinite(q[i]) for i, _, _ in placements)
        extra = f" ({nan_hidden} without a quality)" if nan_hidden else ""
        ax.text(w / 2, y + _SEP / 2, f"... {hidden} faces not shown{extra} ...", ha="center", va="center", fontsize=8)
    return _save(fig, path)


# ---- detections on the originals -----------------------------------------------------------------
_CSS = (
    "body{font-family:sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}"
    "img{max-width:100%;height:auto;border:1px solid #eee}p{white-space:pre-wrap}"
)


def write_html(path: Path, title: str, sections: Sequence) -> Path:
    """A self-contained HTML page (inline CSS, no external assets) at ``path`` with a heading per section of
    ``sections``: ``(heading, png_path)`` or ``(heading, png_path, text)`` (``png_path`` may be ``None``).
    Each PNG is referenced by its path relative to the page's folder (not embedded), so the page is kept
    beside its figures; all text is HTML-escaped. Returns ``path`` (its folder is created)."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    t = html.escape(str(title))
    body = [f"<h1>{t}</h1>"]
    for sec in sections:
        if not 2 <= len(sec) <= 3:
            raise ValueError(f"a section is (heading, png_path[, text]), got {len(sec)} items")
        heading, png = sec[0], sec[1]
        text = sec[2] if len(sec) == 3 else None
        body.append(f"<h2>{html.escape(str(heading))}</h2>")
        if text:
            body.append(f"<p>{html.escape(str(text))}</p>")
        if png is not None:
            rel = Path(os.path.relpath(Path(png).resolve(), folder.resolve())).as_posix()
            src = html.escape(urllib.parse.quote(rel), quote=True)
            alt = html.escape(str(heading), quote=True)
            body.append(f'<a href="{src}"><img src="{src}" alt="{alt}"></a>')
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{t}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path
