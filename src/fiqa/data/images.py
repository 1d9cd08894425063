"""Image decoding shared by every reader: encoded bytes or a file -> uint8 HxWx3 **RGB**.

One decoder for the whole package, so a ``.rec``, a ``.bin``, a folder and a list file give the same
pixels for the same JPEG. OpenCV's decoder (libjpeg-turbo) is used; ``benchmarks/recordio_throughput.py``
measures the alternatives. Grayscale and 4-channel images are converted to 3-channel RGB.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["ImageDecodeError", "decode_rgb", "read_bytes", "read_rgb", "to_square", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; the message names where it came from."""


def decode_rgb(buf, source: str = "image") -> np.ndarray:
    """Decode an encoded image (bytes, bytearray, memoryview or uint8 array) to uint8 HxWx3 RGB.

    ``source`` names the origin in the error (a file, ``'<rec> key 12'`` ...)."""
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR) if arr.size else None
    if img is None:
        raise ImageDecodeError(f"cannot decode {source} ({arr.size} bytes): not a valid JPEG/PNG/... image")
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
