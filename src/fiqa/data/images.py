"""Image decoding shared by every reader: encoded bytes or a file -> uint8 HxWx3 **RGB**.

One decoder for the whole package, so a ``.rec``, a ``.bin``, a folder and a list file give the same
pixels for the same JPEG. OpenCV's decoder (libjpeg-turbo) is used; ``benchmarks/recordio_throughput.py``
measures the alternatives. Grayscale and 4-channel images are converted to 3-channel RGB.

A damaged JPEG is an error, not a picture: libjpeg decodes garbage in the entropy-coded data (or a
missing tail) into grey or smeared blocks and only *warns* ("Corrupt JPEG data: ..."), on the process's
stderr, through OpenCV, which has no way to report it. :func:`decode_rgb` therefore points file
descriptor 2 at a private temporary file while OpenCV decodes a JPEG, and turns libjpeg's corrupt-data
warnings into :class:`ImageDecodeError` (whatever else was written there is passed on to stderr).
That costs two ``dup2`` calls per JPEG (~3% of a 112x112 decode); the pixels are OpenCV's, unchanged.
TorchVision's ``decode_jpeg`` and Pillow were measured and return such images without a word.

JPEG has no checksum, so this catches what libjpeg notices, not all damage: a truncated file, data cut
out, bytes added, and damage that shifts where the data ends; libjpeg-turbo's fast Huffman decoder
(all but the last ~3 KB of the data) decodes an invalid code as 0 without a warning: of random
overwrites (1-64 bytes) in the middle of a 112x112 face's data, 20-55% decoded unnoticed when measured.
"""

from __future__ import annotations

import os
import tempfile
import threading

import cv2
import numpy as np

__all__ = ["ImageDecodeError", "decode_rgb", "read_bytes", "read_rgb", "to_square", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: libjpeg's warnings that mean the data is damaged (jerror.h: JWRN_EXTRANEOUS_DATA, JWRN_HIT_MARKER,
#: JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE, JWRN_MUST_RESYNC, JWRN_BOGUS_ICC: "Corrupt JPEG data: ...";
#: JWRN_JPEG_EOF: "Premature end of JPEG file"). Other libjpeg warnings (an unknown JFIF revision ...) are
#: passed on, not raised.
_CORRUPT_JPEG = (b"Corrupt JPEG data", b"Premature end of JPEG file")


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; the message names where it came from."""


class _Stderr:
    """What native code writes to file descriptor 2 during a call. One temporary file per process
    (a forked DataLoader worker makes its own: a shared file offset would mix the workers' messages),
    and a lock, since fd 2 is the process's, not the thread's."""

    def __init__(self):
        self.lock = threading.Lock()
        self.file = None

    def call(self, fn, *args):
        """``(fn(*args), bytes written to fd 2 meanwhile)``; ``fn`` alone if fd 2 cannot be redirected."""
        with self.lock:
            try:
                if self.file is None:
                    self.file = tempfile.TemporaryFile()
                fd = self.file.fileno()
                saved = os.dup(2)
            except OSError:  # no fd 2 (a daemon) or no temp dir: decode without the check
                return fn(*args), b""
            try:
                os.dup2(fd, 2)
                try:
                    out = fn(*args)
                finally:
                    os.dup2(saved, 2)
            finally:
                os.close(saved)
            size = os.lseek(fd, 0, os.SEEK_CUR)
            if not size:
                return out, b""
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, size)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            return out, text


_stderr = _Stderr()


def _after_fork_in_child() -> None:
    global _stderr
    _stderr = _Stderr()  # a fresh lock (the parent's may be held) and a temporary file of its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _jpeg_problem(text: bytes) -> str | None:
    """libjpeg's corrupt-data warning in ``text``, if any; the rest of ``text`` goes on to stderr."""
    problem, rest = None, []
    for line in text.splitlines(keepends=True):
        if problem is None and line.startswith(_CORRUPT_JPEG):
            problem = line.decode("ascii", "replace").strip()
        else:
            rest.append(line)
    if rest:
        try:
            os.write(2, b"".join(rest))
        except OSError:
            pass
    return problem


def decode_rgb(buf, source: str = "image") -> np.ndarray:
    """Decode an encoded image (bytes, bytearray, memoryview or uint8 array) to uint8 HxWx3 RGB.

    ``source`` names the origin in the error (a file, ``'<rec> key 12'`` ...). A JPEG that libjpeg
    reports as corrupt (damaged entropy-coded data, extraneous bytes, a premature end) is an
    :class:`ImageDecodeError` too, quoting libjpeg."""
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    flat = arr.reshape(-1)  # cv2.imencode's output is N x 1
    is_jpeg = flat.size >= 2 and flat[0] == 0xFF and flat[1] == 0xD8
    if is_jpeg:
        img, text = _stderr.call(cv2.imdecode, arr, cv2.IMREAD_COLOR)
        problem = _jpeg_problem(text) if text else None
        if problem is not None:
            raise ImageDecodeError(f"cannot decode {source} ({arr.size} bytes): corrupt JPEG, libjpeg says {problem!r}")
    else:
        img = cv2.imdecode(arr, cv2.IMREAD_COLOR) if arr.size else None
    if img is None:
        what = "not a valid JPEG/PNG/... image"
        if is_jpeg and not (flat[-2] == 0xFF and flat[-1] == 0xD9):
            what = "a JPEG without its end-of-image marker (truncated?)"
        raise ImageDecodeError(f"cannot decode {source} ({arr.size} bytes): {what}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file; ``FileNotFoundError`` that says it is an image file that is missing."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {os.fspath(path)!r}") from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 HxWx3 RGB; a clear error for a missing or undecodable file."""
    path = os.fspath(path)
    return decode_rgb(read_bytes(path), f"image file {path!r}")


def to_square(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` resized (bilinear) to ``size x size`` unless it already is: the rule every aligned-face
    reader applies (insightface's ``resize_short`` for square inputs)."""
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    return img
