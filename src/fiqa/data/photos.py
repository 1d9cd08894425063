"""Reading raw photos (camera rolls, scans, captures) as uint8 HxWx3 RGB, whatever they are stored as.

:func:`fiqa.data.images.decode_rgb` reads aligned crops; photos need more care:

* **EXIF orientation** (tag 0x0112, values 2-8) is applied here, explicitly: the orientation is read
  from the file's EXIF block (Pillow, header only) and the pixels are decoded by OpenCV with
  ``IMREAD_IGNORE_ORIENTATION``, so the result is the same with every OpenCV version (some apply the
  tag inside ``imdecode``, some do not);
* grayscale, grayscale + alpha, RGBA, palette and CMYK images become 3-channel RGB (alpha dropped);
* 16-bit images are scaled to 8 bits (``>> 8``, i.e. value / 257 rounded down), not clipped;
* an undecodable file raises :class:`PhotoError` with ``reason="unreadable"`` (a file that is not an
  image, a truncated JPEG, an empty file), naming the file.

Very large images are not downscaled here: detection runs on a downscaled copy and the crop is cut
from the full-resolution original (:mod:`fiqa.detect`).
"""

from __future__ import annotations

import io
import os

import cv2
import numpy as np

from fiqa.data.images import read_bytes

__all__ = ["PhotoError", "read_photo", "decode_photo", "exif_orientation", "apply_orientation"]


class PhotoError(ValueError):
    """A photo that cannot be used; ``reason`` is a short machine-readable word for ``failed.csv``."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


def exif_orientation(buf: bytes) -> int:
    """The EXIF orientation (1-8) of an encoded image, 1 when it has none or it cannot be read."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(buf)) as im:
            value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any unreadable header means "no orientation"; decoding reports errors
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as they are meant to be displayed for EXIF ``orientation`` (1 = as stored)."""
    ops = {
        2: lambda a: a[:, ::-1],  # mirrored
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored vertically
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise to display
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # transverse (transposed, then rotated 180)
        8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise to display
    }
    op = ops.get(int(orientation))
    return img if op is None else np.ascontiguousarray(op(img))


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating):
            img = np.clip(np.nan_to_num(img) * 255.0, 0, 255).astype(np.uint8)
        else:
            info = np.iinfo(img.dtype)
            img = np.clip(img.astype(np.float64) / info.max * 255.0, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_photo(buf: bytes, source: str = "image") -> np.ndarray:
    """Encoded bytes -> uint8 HxWx3 RGB, oriented as displayed (module docstring)."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    img = None
    if arr.size:
        img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.size == 0:
        img = _decode_with_pillow(buf)
    if img is None:
        kind = "an empty file" if not arr.size else "not a decodable image (JPEG, PNG, BMP, WebP, TIFF, GIF ...)"
        raise PhotoError(f"cannot decode {source} ({arr.size} bytes): {kind}", "unreadable")
    rgb = _to_rgb8(img)
    return apply_orientation(rgb, exif_orientation(buf))


def _decode_with_pillow(buf: bytes) -> np.ndarray | None:
    """Formats OpenCV cannot read (e.g. some TIFF/GIF variants), as BGR(A) like OpenCV returns."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(buf)) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.uint32)
                return (np.clip(a, 0, 65535)).astype(np.uint16)
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - Pillow's errors for a non-image vary; the caller reports "unreadable"
        return None
    return np.ascontiguousarray(a[:, :, ::-1])


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """Read a photo file as uint8 HxWx3 RGB (oriented); :class:`PhotoError` names the file."""
    path = os.fspath(path)
    try:
        buf = read_bytes(path)
    except FileNotFoundError as err:
        raise PhotoError(str(err), "unreadable") from None
    except OSError as err:
        raise PhotoError(f"cannot read {path!r}: {err.strerror or err}", "unreadable") from None
    return decode_photo(buf, f"image file {path!r}")
