"""SCface surveillance-camera identification set (Grgic et al. 2011), the QGFace protocol.

Layout (``val=[scface]``, under ``<paths.data_dir>/scface``)::

    all.txt              # tab-separated; column 0 is the image stem, e.g. 001_cam1_1, 001_frontal
    aligned/<stem>.jpg   # the aligned 112x112 images (``aligned=`` another folder name)

Rows of ``all.txt``, in file order (blank lines skipped, other columns ignored):

- a stem containing ``cam6``, ``cam7`` or ``cam8`` (the infrared cameras) is dropped;
- a stem containing ``cam`` is a **probe**; its distance ``d`` is the last ``_``-field (``001_cam1_1`` ->
  d1), which must be 1 (4.20 m, the farthest), 2 (2.60 m) or 3 (1.00 m);
- else a stem containing ``frontal`` is a **gallery** mugshot;
- any other stem (e.g. the rotated mugshots ``001_L1``) is not part of the protocol and is skipped;
- label ``int(stem.split('_')[0])``.

A malformed row (an empty stem, a label or distance that is not a valid integer, a repeated stem)
is an error naming the file and the line; a missing image names the image and its line.

``targets()`` -> ``{"labels": (N,) int64, "is_probe": (N,) bool, "distance": (N,) int64}`` (distance 0
for gallery images), as ``fiqa.eval.protocols_lq.scface`` expects. No fine-tuning split: every subject
is tested (130 subjects: 650 probes per distance against 130 mugshots (lit.)).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fiqa.data.images import read_rgb, to_square

__all__ = ["IR_CAMERAS", "SCface", "parse_scface_list"]

IR_CAMERAS = ("cam6", "cam7", "cam8")
DISTANCES = (1, 2, 3)


def parse_scface_list(path: str | os.PathLike) -> list[tuple[str, int, int, int]]:
    """``[(stem, label, distance (0 = gallery), line number)]`` of the protocol's rows of ``all.txt``."""
    path = Path(path)
    rows: list[tuple[str, int, int, int]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            stem = line.rstrip("\r\n").split("\t")[0].strip()
            where = f"{path}: line {lineno}"
            if not stem:
                raise ValueError(f"{where}: column 0 (the image stem) is empty: {line.rstrip()!r}")
            if any(c in stem for c in IR_CAMERAS):
                continue
            if "cam" in stem:
                d = stem.rsplit("_", 1)[-1]
                if d not in {str(x) for x in DISTANCES}:
                    raise ValueError(
                        f"{where}: probe {stem!r} does not end in _1, _2 or _3 (its distance; e.g. 001_cam1_1)"
                    )
                distance = int(d)
            elif "frontal" in stem:
                distance = 0
            else:
                continue
            try:
                label = int(stem.split("_")[0])
            except ValueError:
                label = -1
            if label < 0:
                raise ValueError(f"{where}: {stem!r} does not start with a subject number (e.g. 001_cam1_1)")
            if stem in seen:
                raise ValueError(f"{where}: stem {stem!r} repeats line {seen[stem]}")
            seen[stem] = lineno
            rows.append((stem, label, distance, lineno))
    return rows


class SCface:
    """SCface probes (visible cameras cam1-cam5 at three distances) and frontal mugshots.

    Yields ``(uint8 RGB, label, {"index": i})`` in ``all.txt`` order; images that are not
    ``image_size`` square are resized (bilinear)."""

    def __init__(
        self,
        root: str | os.PathLike,
        aligned: str = "aligned",
        list_file: str = "all.txt",
        ext: str = "jpg",
        image_size: int = 112,
        name: str = "scface",
    ):
        self.root, self.name, self.image_size = Path(root), name, int(image_size)
        list_path = self.root / list_file
        if not list_path.is_file():
            raise FileNotFoundError(
                f"val={name}: list file {list_path} not found. Expected {list_file} and {aligned}/ under {self.root} "
                f"(set paths.data_dir=DIR or FIQA_DATA=DIR; the set lives in <data_dir>/{self.root.name})"
            )
        rows = parse_scface_list(list_path)
        if not any(d > 0 for _, _, d, _ in rows) or not any(d == 0 for _, _, d, _ in rows):
            raise ValueError(f"val={name}: {list_path} lists no probe ('cam') or no gallery ('frontal') images")
        image_dir = self.root / aligned
        if not image_dir.is_dir():
            raise FileNotFoundError(
                f"val={name}: image folder {image_dir} not found (val.{name}.dataset.aligned names it; "
                f"set paths.data_dir=DIR or FIQA_DATA=DIR)"
            )
        self.paths = []
        for stem, _, _, lineno in rows:
            path = image_dir / f"{stem}.{ext}"
            if not path.is_file():
                raise FileNotFoundError(f"val={name}: image {path} (line {lineno} of {list_path}) not found")
            self.paths.append(str(path))
        self.stems = [r[0] for r in rows]
        self.labels = np.asarray([r[1] for r in rows], dtype=np.int64)
        self.distance = np.asarray([r[2] for r in rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = to_square(read_rgb(self.paths[i]), self.image_size)
        return img, int(self.labels[i]), {"index": i}

    def targets(self) -> dict:
        return {"labels": self.labels, "is_probe": self.distance > 0, "distance": self.distance}

    def __repr__(self) -> str:
        d = getattr(self, "distance", np.zeros(0))  # also when __init__ failed (a traceback's repr)
        n_probe = int(np.count_nonzero(d > 0))
        return f"SCface({str(self.root)!r}, {n_probe} probes, {len(d) - n_probe} gallery)"
