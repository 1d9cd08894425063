"""InsightFace verification ``.bin`` files (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW ...) without mxnet.

Format (insightface ``lfw2pack.py`` / arcface_torch ``eval/verification.py load_bin``):

* The file is one pickle of the 2-tuple ``(bins, issame_list)``.
* ``bins`` is a list of ``2 * P`` encoded image files (JPEG or PNG, normally 112x112 aligned faces).
  Pair ``p`` is ``(bins[2p], bins[2p + 1])``.
* ``issame_list`` is a list of ``P`` bools (``True`` means both images show the same identity).
* Written by Python 2 with protocol 2, where py2 ``str`` (``BINSTRING`` / ``SHORT_BINSTRING`` opcodes) becomes
  py3 ``bytes`` under ``encoding="bytes"``. Written by Python 3 with protocol 2, ``bytes`` is stored as
  ``_codecs.encode(<str>, "latin1")``, i.e. a ``GLOBAL`` + ``REDUCE``.
  A Python-3 reader first tries a plain load and retries with ``encoding="bytes"`` on ``UnicodeDecodeError``.
* insightface decodes with ``mx.image.imdecode`` (RGB) and applies ``resize_short(img, 112)`` if the width is not 112.

Safety: :func:`load_bin` never runs a stock unpickler. Its ``find_class`` refuses every global except the two
that a Python-3 protocol-2 pickle of ``bytes`` needs (``_codecs.encode`` and ``builtins.bytes``). Those two are
replaced by strict stand-ins: ``encode`` accepts only ``(str, "latin1")`` and ``bytes`` accepts no arguments.
Nothing else can be imported or called, so a crafted file cannot execute code. It is rejected with a ``ValueError``.

Resizing: an image whose shape is not ``image_size x image_size`` is resized to exactly that size with
``cv2.INTER_LINEAR``. For square inputs this is mxnet's ``resize_short`` (bilinear). Non-square inputs are
squashed, not aspect-preserved: insightface could not stack those either.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fiqa.data.images import decode_rgb, to_square

__all__ = ["BinPairs", "load_bin", "read_bin", "save_bin"]


def _safe_codecs_encode(obj=None, encoding="utf-8", errors="strict"):
    """Stand-in for ``_codecs.encode`` as emitted by py3 protocol-2 pickles of ``bytes``: latin-1 str -> bytes only."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(
            f"_codecs.encode only allowed as encode(str, 'latin1'), got ({type(obj).__name__}, {encoding!r})"
        )
    return obj.encode("latin-1")


def _safe_bytes(*args):
    """Stand-in for ``bytes`` as emitted by py3 protocol-2 pickles of ``b''``: no arguments only."""
    if args:
        raise pickle.UnpicklingError("bytes() only allowed without arguments")
    return b""


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _safe_codecs_encode,
    ("builtins", "bytes"): _safe_bytes,
    ("__builtin__", "bytes"): _safe_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module, name):
        safe = _ALLOWED_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        raise ValueError(f"{self._source}: refusing to unpickle global {module}.{name} (not a plain .bin pair file)")


def _restricted_loads(data: bytes, source: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnicodeDecodeError:
        return _RestrictedUnpickler(io.BytesIO(data), source=source, encoding="bytes").load()


def _describe(obj) -> str:
    if isinstance(obj, (list, tuple)):
        inner = ", ".join(type(x).__name__ for x in obj[:3])
        more = ", ..." if len(obj) > 3 else ""
        return f"{type(obj).__name__} of length {len(obj)} [{inner}{more}]"
    return type(obj).__name__


def _validate(obj, source: str) -> tuple[list[bytes], list[bool]]:
    expected = "expected (list of 2P encoded images, list of P bools)"
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{source}: {expected}, got {_describe(obj)}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise ValueError(f"{source}: {expected}, got ({_describe(bins)}, {_describe(issame)})")
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray)):
            raise ValueError(f"{source}: {expected}, image {i} is {type(b).__name__}, not bytes")
    for p, s in enumerate(issame):
        if not isinstance(s, (bool, int)) or s not in (0, 1):
            raise ValueError(f"{source}: {expected}, issame[{p}] is {s!r} ({type(s).__name__}), not a bool")
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{source}: {expected}, got {len(bins)} images for {len(issame)} pairs")
    return [bytes(b) for b in bins], [bool(s) for s in issame]


def read_bin(path) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and the pair labels of a ``.bin``, safely unpickled and validated, not decoded:
    ``(bins: list of 2P bytes, issame: bool [P])``. Errors as :func:`load_bin`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification .bin file not found: {path}")
    source = str(path)
    try:
        obj = _restricted_loads(path.read_bytes(), source)
    except ValueError as exc:
        if str(exc).startswith(source):  # our own refusal, already names the file
            raise
        raise ValueError(f"{source}: not a readable .bin pickle: {exc}") from exc
    except Exception as exc:  # truncated / corrupt pickle, refused stand-in call, ...
        raise ValueError(f"{source}: not a readable .bin pickle: {type(exc).__name__}: {exc}") from exc
    bins, issame = _validate(obj, source)
    return bins, np.asarray(issame, dtype=bool)


def decode_bin_image(buf: bytes, image_size: int, source: str) -> np.ndarray:
    """One image of a ``.bin``: RGB uint8, resized to ``image_size`` squared if it is not."""
    return to_square(decode_rgb(buf, source), image_size)


def load_bin(path, image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Load an insightface verification ``.bin`` file safely.

    Returns ``(images, issame)``: ``images`` is uint8 ``[2P, image_size, image_size, 3]`` in RGB order (like
    ``mx.image.imdecode``) and ``issame`` is a bool ``[P]``. Pair ``p`` is ``(images[2p], images[2p + 1])``.

    Raises ``FileNotFoundError`` for a missing file. Raises ``ValueError`` for a refused pickle global, a wrong
    structure or an undecodable image. The message names the file.
    """
    bins, issame = read_bin(path)
    images = np.empty((len(bins), image_size, image_size, 3), dtype=np.uint8)
    for i, b in enumerate(bins):
        images[i] = decode_bin_image(b, image_size, f"{path}: image {i} (pair {i // 2})")
    return images, issame


class BinPairs:
    """A verification set from ``<data_dir>/<name>.bin`` (``val=[lfw,agedb_30,...]``).

    Keeps the encoded images (a few tens of MB) and decodes in the DataLoader workers. Yields
    ``(uint8 RGB, issame of its pair, {"index": i})``; ``targets()`` gives the protocols ``issame``."""

    def __init__(self, name: str, data_dir: str, file: str | None = None, image_size: int = 112):
        self.name, self.image_size = name, int(image_size)
        self.path = Path(data_dir) / (file or f"{name}.bin")
        if not self.path.is_file():
            raise FileNotFoundError(
                f"val={name}: {self.path} not found. Put {self.path.name} in the data directory "
                f"(now paths.data_dir={data_dir!r}), or point there with paths.data_dir=DIR on the command "
                f"line or the FIQA_DATA=DIR environment variable"
            )
        self.bins, self.issame = read_bin(self.path)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int):
        img = decode_bin_image(self.bins[i], self.image_size, f"{self.path}: image {i} (pair {i // 2})")
        return img, int(self.issame[i // 2]), {"index": i}

    def targets(self) -> dict:
        return {"issame": self.issame}

    def __repr__(self) -> str:
        return f"BinPairs({str(self.path)!r}, {len(self.issame)} pairs)"


def save_bin(path, images, issame, quality: int = 95, img_fmt: str = ".jpg") -> None:
    """Write an insightface-compatible ``.bin``: ``pickle.dump((list_of_bytes, list_of_bool), f, protocol=2)``.

    ``images`` is a uint8 ``[2P, H, W, 3]`` RGB array (or a sequence of such images), encoded with ``img_fmt``
    (``.jpg`` uses ``quality``, ``.png`` is lossless). It may instead be a sequence of already-encoded bytes.
    """
    issame_list = [bool(s) for s in np.asarray(issame).reshape(-1)]
    if isinstance(images, Sequence) and len(images) > 0 and isinstance(images[0], (bytes, bytearray)):
        bins = [bytes(b) for b in images]
    else:
        bins = []
        fmt = img_fmt.lower()
        params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)] if fmt in (".jpg", ".jpeg") else []
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"image {i}: expected uint8 HxWx3 RGB, got {img.dtype} {img.shape}")
            ok, buf = cv2.imencode(fmt, np.ascontiguousarray(img[..., ::-1]), params)
            if not ok:
                raise ValueError(f"image {i}: cv2.imencode({fmt!r}) failed")
            bins.append(buf.tobytes())
    if len(bins) != 2 * len(issame_list):
        raise ValueError(f"expected 2P images for P={len(issame_list)} pairs, got {len(bins)} images")
    with open(path, "wb") as f:
        pickle.dump((bins, issame_list), f, protocol=2)
