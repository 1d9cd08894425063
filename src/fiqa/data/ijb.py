"""IJB-B / IJB-C in insightface's release layout (``val=[ijbb]``, ``val=[ijbc]``).

Layout (``shared/reference/data_and_eval.md`` §3.1), under ``<paths.data_dir>/IJB_release/IJBC`` (``IJBB``)::

    loose_crop/<img>.jpg                      # loose face crops
    meta/ijbc_name_5pts_score.txt             # "<img> x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 <faceness>"
    meta/ijbc_face_tid_mid.txt                # "<img> <template_id> <media_id>", same images, same order
    meta/ijbc_template_pair_label.txt         # "<tid1> <tid2> <label>" (1 = genuine)
    meta/ijbc_1N_gallery_G1.csv, ijbc_1N_gallery_G2.csv, ijbc_1N_probe_mixed.csv   # optional (1:N)
    (IJB-B: ijbb_*; its galleries are ijbb_1N_gallery_S1.csv and _S2.csv)

Image ``i`` is line ``i`` of the meta files: its loose crop aligned with the 5 points onto the ArcFace
112x112 template (:func:`fiqa.data.align.norm_crop`), in **RGB** (insightface reads BGR with cv2, aligns,
then converts; alignment does not depend on the channel order). Landmarks are ``(x, y)`` rows in the order
left eye, right eye, nose, left and right mouth corner. Samples are ``(uint8 RGB, template id, {"index": i})``.

The 1:N csv files have one header row and comma-separated rows ``TEMPLATE_ID,SUBJECT_ID[,...]``; a template
may repeat (one row per image): its first subject is kept (insightface's ``np.unique(return_index=True)``).

``targets()`` (read once, on first use; the pair list of IJB-C is 15.7M lines, ~5 s) gives the protocol
(``fiqa.eval.protocols.ijb``): ``n_images``, ``template_ids``, ``media_ids``, ``faceness`` (N,), ``pairs``
(P, 2) template ids, ``pair_labels`` (P,) and, when all three 1:N files exist, ``gallery_templates``,
``gallery_subjects``, ``gallery_split`` (0 = G1/S1, 1 = G2/S2), ``probe_templates``, ``probe_subjects``.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from fiqa.data.align import norm_crop
from fiqa.data.images import read_rgb

__all__ = ["IJB", "SETS", "read_meta", "read_pairs", "read_1n_csv"]

#: name -> (release folder, meta prefix, gallery csv suffixes)
SETS = {"ijbb": ("IJBB", "ijbb", ("S1", "S2")), "ijbc": ("IJBC", "ijbc", ("G1", "G2"))}


def _hint(name: str, root: Path) -> str:
    return (
        f"val={name} expects insightface's IJB release under {root} (loose_crop/ and meta/). Set "
        f"paths.data_dir=DIR on the command line or FIQA_DATA=DIR, with the set in DIR/IJB_release/{root.name}"
    )


def _bad_line(path: Path, expected: str, check) -> ValueError:
    """The first line of ``path`` that ``check(fields)`` rejects, as a ValueError naming file and line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            problem = check(line.split())
            if problem:
                return ValueError(f"{path}: line {lineno}: {problem}; expected {expected}: {line.rstrip()!r}")
    return ValueError(f"{path}: cannot be read as {expected}")


def _fields(n: int, numeric: slice, kind=float):
    def check(parts):
        if len(parts) != n:
            return f"{len(parts)} fields instead of {n}"
        for p in parts[numeric]:
            try:
                kind(p)
            except ValueError:
                return f"{p!r} is not a{'n integer' if kind is int else ' number'}"
        return None

    return check


def _table(path: Path, n_fields: int, dtype, expected: str, kind, named: bool):
    """The numeric columns of a whitespace-separated table (one C parse), and the names in column 0 when
    ``named``. Every line must have ``n_fields`` fields; the first bad line is named in the error."""
    check = _fields(n_fields, slice(1 if named else 0, n_fields), kind)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is reported below
            cols = range(1, n_fields) if named else None  # without usecols, loadtxt checks the field count
            arr = np.loadtxt(path, dtype=dtype, usecols=cols, ndmin=2, comments=None)
    except ValueError:
        raise _bad_line(path, expected, check) from None
    if arr.shape[0] and not named and arr.shape[1] != n_fields:
        raise _bad_line(path, expected, check)
    if arr.shape[0] == 0:
        raise ValueError(f"{path}: empty; expected lines {expected}")
    names = None
    if named:  # loadtxt ignores fields past usecols: the token count catches them
        tokens = path.read_bytes().split()
        if len(tokens) != arr.shape[0] * n_fields:
            raise _bad_line(path, expected, check)
        names = [t.decode("utf-8") for t in tokens[::n_fields]]
    return arr, names


def read_meta(five_pts: Path, tid_mid: Path):
    """``(names, landmarks (N, 5, 2) float64, faceness (N,), template_ids (N,), media_ids (N,))`` from
    ``*_name_5pts_score.txt`` and ``*_face_tid_mid.txt``; the two must list the same images in order."""
    expected = "'<img> x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 <faceness>' (12 fields)"
    num, names = _table(five_pts, 12, np.float64, expected, float, named=True)
    ids, names_t = _table(tid_mid, 3, np.int64, "'<img> <template_id> <media_id>' (3 fields)", int, named=True)
    if names_t != names:
        k = next((i for i, (a, b) in enumerate(zip(names, names_t)) if a != b), min(len(names), len(names_t)))
        raise ValueError(
            f"{five_pts} ({len(names)} images) and {tid_mid} ({len(names_t)} images) must list the same images "
            f"in the same order; they differ at image {k} (line {k + 1}): "
            f"{names[k] if k < len(names) else '<end>'!r} vs {names_t[k] if k < len(names_t) else '<end>'!r}"
        )
    return names, num[:, :10].reshape(-1, 5, 2), num[:, 10].copy(), ids[:, 0].copy(), ids[:, 1].copy()


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs (P, 2) int64 template ids, labels (P,) int8)`` of ``*_template_pair_label.txt``."""
    expected = "'<tid1> <tid2> <label 0|1>' (3 integers)"
    arr, _ = _table(path, 3, np.int64, expected, int, named=False)
    labels = arr[:, 2]
    if np.any((labels != 0) & (labels != 1)):
        raise _bad_line(path, expected, lambda p: None if p[2] in ("0", "1") else f"label {p[2]!r} is not 0 or 1")
    return np.ascontiguousarray(arr[:, :2]), labels.astype(np.int8)


def read_1n_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids, subject ids)`` of a 1:N csv: header row skipped, columns 0 and 1, a repeated
    template keeps its first subject; templates come out sorted (``np.unique``)."""
    tids, subs = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if lineno == 1 or not row or not "".join(row).strip():
                continue
            try:
                tids.append(int(float(row[0])))
                subs.append(int(float(row[1])))
            except (ValueError, IndexError):
                raise ValueError(
                    f"{path}: line {lineno}: expected 'TEMPLATE_ID,SUBJECT_ID[,...]' (integers), got {row!r}"
                ) from None
    if not tids:
        raise ValueError(f"{path}: no rows after the header")
    tids, subs = np.asarray(tids, np.int64), np.asarray(subs, np.int64)
    uniq, first = np.unique(tids, return_index=True)
    return uniq, subs[first]


class IJB:
    """One IJB set (``name`` = ``ijbb`` or ``ijbc``) under ``root`` = ``<data_dir>/IJB_release/IJBB|IJBC``.

    The image meta is read at construction (errors name the file and line); the pair list and the 1:N
    files are checked to exist and read on the first :meth:`targets` call. ``one_to_n=False`` ignores
    the 1:N files; with ``one_to_n=True`` they are used when all three exist."""

    def __init__(
        self,
        root: str | os.PathLike,
        name: str = "ijbc",
        image_size: int = 112,
        one_to_n: bool = True,
    ):
        if name not in SETS:
            raise ValueError(f"IJB name must be one of {sorted(SETS)}, got {name!r}")
        self.root, self.name, self.image_size = Path(root), name, int(image_size)
        _, prefix, galleries = SETS[name]
        self.crops, meta = self.root / "loose_crop", self.root / "meta"
        for d in (self.root, self.crops, meta):
            if not d.is_dir():
                raise FileNotFoundError(f"val={name}: directory {d} not found. {_hint(name, self.root)}")
        files = {
            "five_pts": meta / f"{prefix}_name_5pts_score.txt",
            "tid_mid": meta / f"{prefix}_face_tid_mid.txt",
            "pairs": meta / f"{prefix}_template_pair_label.txt",
        }
        for path in files.values():
            if not path.is_file():
                raise FileNotFoundError(f"val={name}: meta file {path} not found. {_hint(name, self.root)}")
        self.pairs_path = files["pairs"]
        one_n = [meta / f"{prefix}_1N_gallery_{g}.csv" for g in galleries] + [meta / f"{prefix}_1N_probe_mixed.csv"]
        self.one_to_n_paths = one_n if one_to_n and all(p.is_file() for p in one_n) else None
        self.names, self.landmarks, self.faceness, self.template_ids, self.media_ids = read_meta(
            files["five_pts"], files["tid_mid"]
        )
        for i in (0, len(self.names) - 1):
            if not (self.crops / self.names[i]).is_file():
                raise FileNotFoundError(
                    f"val={name}: image {self.crops / self.names[i]} (line {i + 1} of {files['five_pts']}) "
                    f"not found. {_hint(name, self.root)}"
                )
        self._targets = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        path = self.crops / self.names[i]
        img = read_rgb(path)
        try:
            aligned = norm_crop(img, self.landmarks[i], self.image_size)
        except ValueError as err:
            raise ValueError(f"val={self.name}: image {i} ({path}): {err}") from None
        return aligned, int(self.template_ids[i]), {"index": i}

    def targets(self) -> dict:
        if self._targets is None:
            pairs, labels = read_pairs(self.pairs_path)
            t = {
                "n_images": len(self.names),
                "template_ids": self.template_ids,
                "media_ids": self.media_ids,
                "faceness": self.faceness,
                "pairs": pairs,
                "pair_labels": labels,
            }
            if self.one_to_n_paths is not None:
                *gallery_paths, probe_path = self.one_to_n_paths
                parts = [read_1n_csv(p) for p in gallery_paths]
                t["gallery_templates"] = np.concatenate([g for g, _ in parts])
                t["gallery_subjects"] = np.concatenate([s for _, s in parts])
                t["gallery_split"] = np.concatenate([np.full(g.size, k, np.int64) for k, (g, _) in enumerate(parts)])
                t["probe_templates"], t["probe_subjects"] = read_1n_csv(probe_path)
            self._targets = t
        return self._targets

    def __getstate__(self):  # DataLoader workers need the images, not the 15M pairs
        state = dict(self.__dict__)
        state["_targets"] = None
        return state

    def __repr__(self) -> str:
        return f"IJB({str(self.root)!r}, name={self.name!r}, {len(self)} images)"
