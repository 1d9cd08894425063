"""InsightFace RecordIO training set (``train.rec`` + ``train.idx``): ``data=mxrec data.root=DIR``.

Record selection is arcface_torch's ``MXFaceDataset`` (reference §1.5):

* record 0 with ``flag > 0`` is the face2rec2 header: images are keys ``1 .. label[0] - 1`` and the
  identity records ``label[0] .. label[1] - 1``, so ``num_classes = label[1] - label[0]``;
* otherwise (im2rec / ``shuffle_rec.py`` output, no header) every key is an image, in ``.idx`` order,
  and ``num_classes`` is the largest label + 1 (read from every record's header in one vectorised pass);
* a label is the scalar ``header.label`` (flag 0) or the first element of the label vector (flag > 0);
* images are decoded to RGB (``mx.image.imdecode``'s order); ``data.color`` decides what the network sees.

Unlike ``MXIndexedRecordIO`` (a Python dict, ~100 bytes per key, copied into every DataLoader worker by
reference counting), the index is held in two int64 numpy arrays: MS1MV2's 5.8M-line ``.idx`` opens in
about half a second and costs 93 MB, shared copy-on-write by forked workers. Each process memory-maps the
``.rec`` on first use (fork-safe).
"""

from __future__ import annotations

import mmap
import os
import warnings
from pathlib import Path

import numpy as np

from fiqa.data.images import decode_rgb
from fiqa.data.recordio import (
    IndexOffsetError,
    MXIndexedRecordIO,
    RecordIOError,
    _decode_record,
    unpack,
)

__all__ = ["MXRecDataset", "RecordIndex", "read_index"]

_FLOAT32_EXACT = 1 << 24  # float32 labels are exact integers only below 2**24


def read_index(idx_path: str | os.PathLike, rec_size: int, rec_path: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(keys, offsets)`` int64 arrays of a ``.idx`` file, in file order; a duplicate key keeps its last
    offset (as ``MXIndexedRecordIO``). Malformed lines and offsets past the end of the ``.rec`` raise the
    same named errors as :class:`~fiqa.data.recordio.MXIndexedRecordIO` (line number, offset)."""
    idx_path = os.fspath(idx_path)
    if not os.path.isfile(idx_path):
        raise FileNotFoundError(f"RecordIO index file not found: {idx_path!r}")
    with open(idx_path, "rb") as f:
        data = f.read()
    values = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (instead of failing) when it stops early
            values = np.fromstring(data.decode("ascii"), dtype=np.int64, sep=" ")
    except (ValueError, UnicodeDecodeError, DeprecationWarning):
        values = None
    n_lines = len(data.split())  # tokens: must be 2 per line
    if values is None or values.size != n_lines or values.size % 2 or data.count(b"\n") < values.size // 2 - 1:
        # Slow path only to produce the named error (line number and text).
        MXIndexedRecordIO(idx_path, rec_path or idx_path, "r")
        raise RecordIOError(f"cannot parse the .idx file {idx_path!r} (expected 'key<TAB>offset' lines)")
    keys, offsets = values[0::2].copy(), values[1::2].copy()
    bad = np.flatnonzero((offsets < 0) | (offsets + 8 > rec_size))
    if bad.size:
        i = int(bad[0])
        raise IndexOffsetError(
            f".idx line {i + 1} gives offset {int(offsets[i])}, past the end of the .rec file {rec_path!r} "
            f"(size {rec_size} bytes)",
            idx_path,
            int(offsets[i]),
            int(keys[i]),
        )
    sorted_keys = np.sort(keys)
    if sorted_keys.size > 1 and bool(
        (sorted_keys[1:] == sorted_keys[:-1]).any()
    ):  # a repeated key: first position, last offset (dict semantics)
        last = dict(zip(keys.tolist(), offsets.tolist()))
        keys = np.fromiter(last.keys(), dtype=np.int64, count=len(last))
        offsets = np.fromiter(last.values(), dtype=np.int64, count=len(last))
    return keys, offsets


class RecordIndex:
    """Random access to the records of a ``.rec`` by key through per-process memory maps."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike):
        self.rec_path, self.idx_path = os.fspath(rec_path), os.fspath(idx_path)
        if not os.path.isfile(self.rec_path):
            raise FileNotFoundError(f"RecordIO file not found: {self.rec_path!r}")
        self.size = os.path.getsize(self.rec_path)
        self.keys, self.offsets = read_index(self.idx_path, self.size, self.rec_path)
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys, self._sorted_pos = self.keys[order], order
        self._mm, self._pid = None, None

    def _map(self):
        if self._mm is None or self._pid != os.getpid():
            with open(self.rec_path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
            self._pid = os.getpid()
        return self._mm

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mm": None, "_pid": None}

    def __contains__(self, key: int) -> bool:
        i = np.searchsorted(self._sorted_keys, key)
        return bool(i < self._sorted_keys.size and self._sorted_keys[i] == key)

    def offset(self, key: int) -> int:
        i = int(np.searchsorted(self._sorted_keys, key))
        if i >= self._sorted_keys.size or self._sorted_keys[i] != key:
            raise KeyError(f"key {key} not in index {self.idx_path!r}")
        return int(self.offsets[self._sorted_pos[i]])

    def missing(self, keys: np.ndarray) -> np.ndarray:
        """The entries of ``keys`` that the index does not hold."""
        i = np.minimum(np.searchsorted(self._sorted_keys, keys), max(self._sorted_keys.size - 1, 0))
        return keys[self._sorted_keys[i] != keys] if self._sorted_keys.size else keys

    def read(self, key: int) -> bytes:
        out, _ = _decode_record(self._map(), self.size, self.offset(key), self.rec_path, key)
        if out is None:
            raise RecordIOError("no record at this offset (end of file)", self.rec_path, self.offset(key), key)
        return out

    def scan_labels(self, keys: np.ndarray) -> np.ndarray:
        """The first label of every record in ``keys`` (float64), vectorised over the memory map.

        Reads the 24-byte IRHeader (and the first float of a label vector) in place; a record whose
        first chunk is too short for that (a magic inside its header bytes) is read in full."""
        buf = np.frombuffer(self._map(), dtype=np.uint8)
        if self.missing(keys).size:
            raise KeyError(f"key {int(self.missing(keys)[0])} not in index {self.idx_path!r}")
        offs = self.offsets[self._sorted_pos[np.searchsorted(self._sorted_keys, keys)]]

        def u32(at):
            at = np.minimum(at, buf.size - 4)
            return buf[at[:, None] + np.arange(4)].copy().view("<u4")[:, 0]

        def f32(at):
            at = np.minimum(at, buf.size - 4)
            return buf[at[:, None] + np.arange(4)].copy().view("<f4")[:, 0]

        lrec = u32(offs + 4)
        length, cflag = lrec & ((1 << 29) - 1), lrec >> 29
        flag = u32(offs + 8)
        label = np.where(flag > 0, f32(offs + 32), f32(offs + 12)).astype(np.float64)
        need = np.where(flag > 0, 28, 24)
        slow = np.flatnonzero((cflag > 1) | (length < need) | (offs + 8 + need > self.size))
        for i in slow:  # rare: read and unpack the whole record (named errors on real damage)
            header, _ = unpack(self.read(int(keys[i])))
            label[i] = float(np.ravel(header.label)[0]) if header.flag > 0 else float(header.label)
        return label


class MXRecDataset:
    """``<root>/train.rec`` + ``<root>/train.idx`` -> ``(uint8 HxWx3 RGB, label, {"index", "key"})``.

    ``num_classes`` / ``num_images``, when given (the presets give the published sizes), are checked
    against the file; a mismatch is an error naming both values."""

    def __init__(
        self,
        root: str | os.PathLike,
        rec: str = "train.rec",
        idx: str = "train.idx",
        num_classes: int | None = None,
        num_images: int | None = None,
    ):
        if root is None or str(root) in ("", "???"):
            raise ValueError("data.root is not set: give the directory holding train.rec and train.idx (data.root=DIR)")
        self.root = Path(root)
        rec_path, idx_path = self.root / rec, self.root / idx
        for p, what in ((rec_path, "data.rec"), (idx_path, "data.idx")):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} not found ({what}={p.name!r} under data.root={str(self.root)!r}); "
                    f"an InsightFace training set is a directory with train.rec and train.idx"
                )
        self.index = RecordIndex(rec_path, idx_path)
        self.header = None
        if 0 in self.index:
            h, _ = unpack(self.index.read(0))
            if h.flag > 0:
                self.header = h
        if self.header is not None:
            lab = np.asarray(self.header.label, dtype=np.float64)
            self.image_keys = np.arange(1, int(lab[0]), dtype=np.int64)
            missing = self.index.missing(self.image_keys)
            if missing.size:
                raise RecordIOError(
                    f"header record 0 says images are keys 1..{int(lab[0]) - 1}, but {missing.size} of them are "
                    f"not in the .idx (first: {int(missing[0])})",
                    str(idx_path),
                    key=int(missing[0]),
                )
            if lab.size >= 2:
                self.num_classes = int(lab[1]) - int(lab[0])
                self.labels = None  # read per sample
            else:
                self.labels = self.index.scan_labels(self.image_keys)
                self.num_classes = int(self.labels.max()) + 1
            self.layout = "face2rec2"
        else:
            self.image_keys = self.index.keys.copy()
            self.labels = self.index.scan_labels(self.image_keys)
            self.num_classes = int(self.labels.max()) + 1 if self.labels.size else 0
            self.layout = "im2rec"
        if self.image_keys.size == 0:
            raise ValueError(f"{rec_path}: no image records")
        if self.labels is not None and self.labels.size and (self.labels.min() < 0 or np.any(self.labels % 1)):
            bad = int(np.flatnonzero((self.labels < 0) | (self.labels % 1 != 0))[0])
            raise RecordIOError(
                f"label {self.labels[bad]} is not a class index", str(rec_path), key=int(self.image_keys[bad])
            )
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(
                f"data.num_classes={num_classes} but {rec_path} holds {self.num_classes} identities "
                f"({'header record 0' if self.header is not None and self.labels is None else 'max label + 1'}); "
                f"fix data.num_classes or set it to null"
            )
        if num_images is not None and int(num_images) != len(self):
            raise ValueError(
                f"data.num_images={num_images} but {rec_path} holds {len(self)} images; "
                f"fix data.num_images or set it to null"
            )
        if len(self) + self.num_classes + 1 >= _FLOAT32_EXACT and self.layout == "face2rec2":
            raise ValueError(
                f"{rec_path}: {len(self)} images + {self.num_classes} identities exceed float32's exact integers "
                f"(2**24), so header/identity ranges are unreliable; repack with the im2rec layout"
            )

    def __len__(self) -> int:
        return int(self.image_keys.size)

    def __getitem__(self, i: int):
        key = int(self.image_keys[i])
        header, img = unpack(self.index.read(key))
        label = float(np.ravel(header.label)[0]) if header.flag > 0 else float(header.label)
        if not (0 <= label < self.num_classes) or label % 1:
            raise RecordIOError(
                f"label {label:g} is not a class index in [0, {self.num_classes})",
                self.index.rec_path,
                self.index.offset(key),
                key,
            )
        image = decode_rgb(img, f"{self.index.rec_path!r} key {key} (byte offset {self.index.offset(key)})")
        return image, int(label), {"index": i, "key": key}

    def __repr__(self) -> str:
        return f"MXRecDataset({str(self.root)!r}, {len(self)} images, {self.num_classes} classes, {self.layout})"
