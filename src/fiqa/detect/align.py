"""Raw photos -> detected, 5-point aligned crops, one image at a time, never stopping on a bad one.

:func:`list_photos` turns ``align.input`` / ``score.input`` (a folder, a list file or one image) into
``(path, key)`` pairs; :func:`align_photos` reads each (:func:`fiqa.data.photos.read_photo`: EXIF
orientation, grayscale, CMYK, 16-bit), detects in batches (:class:`fiqa.detect.FaceDetector`, on a
downscaled copy of a large photo), keeps the faces asked for (``largest`` | ``all`` | ``center``) and
cuts each aligned crop from the full-resolution original with :func:`fiqa.data.align.norm_crop`. Every
image gives either a :class:`Aligned` (its faces) or a :class:`Failed` (a reason from
:data:`REASONS` and a detail), so ``failed.csv`` accounts for every image that yields no crop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fiqa.data.align import norm_crop
from fiqa.data.images import IMAGE_EXTENSIONS
from fiqa.data.photos import PhotoError, read_photo
from fiqa.detect import LANDMARK_NAMES, FaceDetector, Faces, select_faces

__all__ = ["REASONS", "Aligned", "Failed", "list_photos", "align_photos", "FACE_COLUMNS", "face_row"]

PHOTO_EXTENSIONS = tuple(IMAGE_EXTENSIONS) + (".gif",)
REASONS = {
    "unreadable": "the file cannot be read or decoded as an image",
    "not_an_image": "the file's extension is not an image format (listed, not opened)",
    "no_face": "the detector found no face",
    "face_too_small": "every face found is smaller than align.min_face_size",
    "alignment_failed": "the landmarks admit no similarity transform (degenerate points)",
    "detection_error": "the detector raised an error on this image (the message is in detail)",
}
FACE_COLUMNS = ["x1", "y1", "x2", "y2", "det_score"] + [f"{n}_{c}" for n in LANDMARK_NAMES for c in "xy"]


@dataclass
class Aligned:
    """The kept faces of one image: ``crops[k]`` is face ``faces.boxes[k]`` aligned."""

    key: str
    path: str
    faces: Faces
    crops: list[np.ndarray]
    image_shape: tuple[int, ...]
    detections: Faces | None = None  # every face found (before selection), for the report
    image: np.ndarray | None = field(default=None, repr=False)  # the photo, when keep_images


@dataclass
class Failed:
    key: str
    path: str
    reason: str
    detail: str
    detections: Faces | None = None
    image: np.ndarray | None = field(default=None, repr=False)


def face_row(faces: Faces, k: int) -> list[str]:
    """The :data:`FACE_COLUMNS` values of face ``k`` (pixels with 2 decimals, score with 6)."""
    b, lm = faces.boxes[k], faces.landmarks[k]
    return [f"{v:.2f}" for v in b] + [f"{faces.scores[k]:.6f}"] + [f"{v:.2f}" for v in lm.reshape(-1)]


def list_photos(input: str | os.PathLike, list_root: str | None = None, key: str = "align.input"):
    """``(photos [(path, key)], others [(path, key)])`` of a folder (recursive, sorted; keys relative to
    it; ``others`` are files whose extension is not an image's, hidden files aside), a list file (one
    path per line, optionally followed by a label; relative to ``list_root`` or the list's folder) or
    a single image."""
    from fiqa.data.sources import LIST_SUFFIXES, _list_source

    p = Path(input)
    if p.is_dir():
        photos, others = [], []
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            rel = os.path.relpath(f, p)
            if any(part.startswith(".") for part in Path(rel).parts):
                continue
            (photos if f.suffix.lower() in PHOTO_EXTENSIONS else others).append((str(f), rel))
        if not photos and not others:
            raise ValueError(f"{key}={str(p)!r}: the folder holds no files")
        return photos, others
    if not p.is_file():
        raise FileNotFoundError(f"{key}={str(p)!r}: no such file or directory")
    if p.suffix.lower() in LIST_SUFFIXES:
        src = _list_source(p, list_root)
        return list(zip(src.paths, src.keys)), []
    if p.suffix.lower() in PHOTO_EXTENSIONS:
        return [(str(p), p.name)], []
    raise ValueError(
        f"{key}={str(p)!r}: give a folder of photos, a list file ({', '.join(LIST_SUFFIXES)}) or one image "
        f"({', '.join(PHOTO_EXTENSIONS)})"
    )


def _align_one(key, path, img, found: Faces, faces: str, min_face_size: float, crop_fn, keep_image: bool):
    keep = select_faces(found, faces, img.shape)
    image = img if keep_image else None
    if len(found) == 0:
        return Failed(key, path, "no_face", "the detector found no face", found, image)
    big = keep[found.sizes[keep] >= min_face_size]
    if big.size == 0:
        size = float(found.sizes[keep].max())
        return Failed(
            key,
            path,
            "face_too_small",
            f"largest kept face {size:.0f} px < align.min_face_size={min_face_size:g}",
            found,
            image,
        )
    crops, ok = [], []
    for k in big:
        try:
            crops.append(crop_fn(img, found.landmarks[k]))
            ok.append(k)
        except ValueError as err:
            last = str(err)
    if not ok:
        return Failed(key, path, "alignment_failed", last, found, image)
    return Aligned(key, path, found.take(ok), crops, img.shape, found, image)


def align_photos(
    photos: Sequence[tuple[str, str]],
    detector: FaceDetector,
    faces: str = "largest",
    min_face_size: float = 24.0,
    image_size: int = 112,
    batch_images: int = 8,
    keep_images: bool = False,
    on_image=None,
    crop_fn=None,
) -> Iterator[Aligned | Failed]:
    """One :class:`Aligned` or :class:`Failed` per photo, in order. ``on_image()`` is called after each
    (a progress bar). ``keep_images`` keeps each decoded photo on the result (for the report).
    ``crop_fn(image, landmarks5) -> crop`` replaces the ArcFace ``norm_crop`` (e.g. OFIQ's alignment)."""
    if crop_fn is None:

        def crop_fn(img, landmarks):
            return norm_crop(img, landmarks, image_size)

    from fiqa.detect import SELECT_MODES

    if faces not in SELECT_MODES:
        raise ValueError(f"align.faces={faces!r} is not a choice; valid choices: {list(SELECT_MODES)}")
    if min_face_size < 0:
        raise ValueError(f"align.min_face_size must be >= 0 pixels, got {min_face_size}")
    for start in range(0, len(photos), max(1, int(batch_images))):
        chunk = photos[start : start + max(1, int(batch_images))]
        loaded, results = [], {}
        for j, (path, key) in enumerate(chunk):
            try:
                loaded.append((j, read_photo(path)))
            except PhotoError as err:
                results[j] = Failed(key, path, err.reason, str(err))
        if loaded:
            found = _detect_each(detector, loaded, chunk, results)
            for (j, img), f in zip(loaded, found):
                path, key = chunk[j]
                results[j] = _align_one(key, path, img, f, faces, min_face_size, crop_fn, keep_images)
        for j in range(len(chunk)):
            yield results[j]
            if on_image is not None:
                on_image()


def _detect_each(detector, loaded, chunk, results) -> list:
    """Detect the chunk in one batch; if that fails, image by image, so one bad image fails alone."""
    try:
        return detector([img for _, img in loaded])
    except (ValueError, RuntimeError, MemoryError, cv2.error):
        pass
    found, ok = [], []
    for j, img in loaded:
        try:
            found.append(detector([img])[0])
            ok.append((j, img))
        except (ValueError, RuntimeError, MemoryError, cv2.error) as err:
            path, key = chunk[j]
            results[j] = Failed(key, path, "detection_error", f"{type(err).__name__}: {err}")
    loaded[:] = ok
    return found


def failed_others(others: Iterable[tuple[str, str]]) -> list[Failed]:
    """A :class:`Failed` ``not_an_image`` for each listed non-image file."""
    return [
        Failed(key, path, "not_an_image", f"{Path(path).suffix or 'no extension'} is not an image extension")
        for path, key in others
    ]
