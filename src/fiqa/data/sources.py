"""Image sources for scoring (``task=quality``): whatever holds aligned faces, read as
``(uint8 HxWx3 RGB, 0, {"index": i})`` with a printable key per image.

* a directory: every image file below it (recursively, sorted), key = the path relative to it;
* ``.rec`` (with its ``.idx`` beside it): every image record (header/identity records skipped),
  key = the record key;
* ``.bin`` (insightface verification file): every image, key = ``pair<p>_<0|1>``;
* a list file (``.txt``/``.lst``/``.csv``): one path per line, optionally followed by a label
  (``path;label``, ``path<TAB>label``, ``path label``), key = the path as written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fiqa.data.binpairs import decode_bin_image, read_bin
from fiqa.data.folders import parse_list_line
from fiqa.data.images import IMAGE_EXTENSIONS, decode_rgb, read_rgb
from fiqa.data.mxrec import RecordIndex
from fiqa.data.recordio import unpack

__all__ = ["open_source", "FileSource", "RecSource", "BinSource", "LIST_SUFFIXES"]

LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


class FileSource:
    """Image files by path; keys as given."""

    def __init__(self, paths: list[str], keys: list[str], origin: str):
        if not paths:
            raise ValueError(f"{origin}: no images found (extensions {list(IMAGE_EXTENSIONS)})")
        self.paths, self.keys, self.origin = paths, keys, origin

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return read_rgb(self.paths[i]), 0, {"index": i}

    def __repr__(self) -> str:
        return f"FileSource({self.origin!r}, {len(self)} images)"


class RecSource:
    """Every image record of a ``.rec`` (face2rec2 header range, or every key without a header)."""

    def __init__(self, rec: Path):
        idx = rec.with_suffix(".idx")
        if not idx.is_file():
            raise FileNotFoundError(f"{rec}: its index {idx} is missing (a .rec is read through its .idx)")
        self.index = RecordIndex(rec, idx)
        header = None
        if 0 in self.index:
            h, _ = unpack(self.index.read(0))
            header = h if h.flag > 0 else None
        if header is not None:
            self.image_keys = np.arange(1, int(np.ravel(header.label)[0]), dtype=np.int64)
        else:
            self.image_keys = self.index.keys.copy()
        self.keys = [str(int(k)) for k in self.image_keys]
        self.origin = str(rec)

    def __len__(self) -> int:
        return int(self.image_keys.size)

    def __getitem__(self, i: int):
        key = int(self.image_keys[i])
        _, img = unpack(self.index.read(key))
        return decode_rgb(img, f"{self.origin!r} key {key}"), 0, {"index": i}

    def __repr__(self) -> str:
        return f"RecSource({self.origin!r}, {len(self)} images)"


class BinSource:
    """The images of a verification ``.bin``."""

    def __init__(self, path: Path, image_size: int = 112):
        self.bins, _ = read_bin(path)
        self.image_size, self.origin = int(image_size), str(path)
        self.keys = [f"pair{i // 2}_{i % 2}" for i in range(len(self.bins))]

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int):
        return decode_bin_image(self.bins[i], self.image_size, f"{self.origin}: image {i}"), 0, {"index": i}

    def __repr__(self) -> str:
        return f"BinSource({self.origin!r}, {len(self)} images)"


def _list_source(path: Path, root: str | None) -> FileSource:
    base = Path(root) if root else path.parent
    paths, keys = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.rsplit(None, 1)
            labelled = ";" in s or "\t" in s or (len(parts) == 2 and parts[1].lstrip("-").isdigit())
            try:
                p = parse_list_line(s)[0] if labelled else s
            except ValueError as err:
                raise ValueError(f"{path}: line {lineno}: {err}: {s!r}") from None
            keys.append(p)
            paths.append(p if os.path.isabs(p) else str(base / p))
    return FileSource(paths, keys, str(path))


def open_source(path: str | os.PathLike, list_root: str | None = None, image_size: int = 112):
    """The reader for ``path`` (a directory, ``.rec``, ``.bin`` or list file); it has ``keys``."""
    p = Path(path)
    if p.is_dir():
        exts = tuple(IMAGE_EXTENSIONS)
        files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        return FileSource(files, [os.path.relpath(f, p) for f in files], str(p))
    if not p.is_file():
        raise FileNotFoundError(f"score.input={str(p)!r}: no such file or directory")
    suffix = p.suffix.lower()
    if suffix == ".rec":
        return RecSource(p)
    if suffix == ".bin":
        return BinSource(p, image_size)
    if suffix in LIST_SUFFIXES:
        return _list_source(p, list_root)
    if suffix in IMAGE_EXTENSIONS:
        return FileSource([str(p)], [p.name], str(p))
    raise ValueError(
        f"score.input={str(p)!r}: unknown kind; give a directory of images, a .rec (+ .idx), a .bin, "
        f"a list file ({', '.join(LIST_SUFFIXES)}) or one image"
    )
