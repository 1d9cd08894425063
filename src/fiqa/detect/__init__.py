"""Face detection with 5 landmarks: ``fiqa.detect.detect(images) -> [Faces, ...]``.

The detector is MTCNN (:mod:`fiqa.detect.mtcnn`), the one CR-FIQA, MagFace, SER-FIQ and AdaFace
aligned their data with, with the weights shipped in the facenet-pytorch wheel (no download at run
time). Landmarks come in InsightFace's order, as seen in the image: left eye, right eye, nose tip,
left mouth corner, right mouth corner, ``(x, y)`` in pixels of the given image, so
``fiqa.data.align.norm_crop(image, faces.landmarks[k])`` is the ArcFace-aligned crop.

Images larger than ``max_side`` are detected on a downscaled copy (area interpolation) and the
boxes and landmarks scaled back, so a 24-megapixel photo costs what a 1600-px one does; crops are
then cut from the full-resolution original (:mod:`fiqa.detect.align`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Faces", "FaceDetector", "detect", "LANDMARK_NAMES", "SELECT_MODES", "select_faces"]

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
SELECT_MODES = ("largest", "all", "center")


@dataclass(frozen=True)
class Faces:
    """The faces found in one image, highest detection score first."""

    boxes: np.ndarray  # (K, 4) float64: x1, y1, x2, y2 (pixel edges, 0-based)
    scores: np.ndarray  # (K,) float64 detection probabilities
    landmarks: np.ndarray  # (K, 5, 2) float64: (x, y) of LANDMARK_NAMES

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        """(K,) the shorter side of each box, in pixels."""
        return np.minimum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])

    def take(self, idx) -> Faces:
        idx = np.asarray(idx, dtype=np.int64)
        return Faces(self.boxes[idx], self.scores[idx], self.landmarks[idx])

    @staticmethod
    def empty() -> Faces:
        return Faces(np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2)))


def select_faces(faces: Faces, mode: str, image_shape: tuple[int, ...]) -> np.ndarray:
    """Indices of the faces to keep: ``largest`` (box area), ``center`` (box centre nearest the image
    centre), ``all`` (every face, by score)."""
    if mode not in SELECT_MODES:
        raise ValueError(f"align.faces={mode!r} is not a choice; valid choices: {list(SELECT_MODES)}")
    if len(faces) == 0:
        return np.empty(0, dtype=np.int64)
    if mode == "all":
        return np.arange(len(faces))
    b = faces.boxes
    if mode == "largest":
        return np.array([int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))])
    h, w = image_shape[:2]
    centre = np.stack([(b[:, 0] + b[:, 2]) / 2 - w / 2, (b[:, 1] + b[:, 3]) / 2 - h / 2], 1)
    return np.array([int(np.argmin(np.hypot(centre[:, 0], centre[:, 1])))])


class FaceDetector:
    """A reusable detector: ``FaceDetector(...)(images) -> [Faces per image]``.

    ``min_size``: the smallest face looked for (pixels of the original image); ``thresholds``: MTCNN's
    P/R/O-Net thresholds; ``factor``: pyramid step; ``max_side``: images whose longer side exceeds it
    are detected on a downscaled copy (null: never); ``device``: ``cpu``, ``cuda``, ... (default: cuda
    when available); ``batch_size``: R/O-Net crops per forward."""

    def __init__(
        self,
        min_size: float = 20.0,
        thresholds=(0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_side: int | None = 1600,
        device: str | None = None,
        batch_size: int = 512,
        weights: str | None = None,
    ):
        import torch

        from fiqa.detect.mtcnn import MTCNN

        if max_side is not None and int(max_side) < 48:
            raise ValueError(f"detect.max_side must be >= 48 pixels (or null), got {max_side}")
        self.max_side = None if max_side is None else int(max_side)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.net = MTCNN(min_size, tuple(thresholds), factor, device=device, weights=weights, batch_size=batch_size)

    @property
    def device(self):
        return self.net.conv_device()

    def __call__(self, images) -> list[Faces]:
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        images = list(images)
        by_scale: dict[float, list[int]] = {}
        small = []
        for i, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ValueError(f"detect: image {i} must be a uint8 HxWx3 RGB array, got {got}")
            s = 1.0
            if self.max_side is not None and max(img.shape[:2]) > self.max_side:
                s = self.max_side / max(img.shape[:2])
                h, w = img.shape[:2]
                img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            small.append(img)
            by_scale.setdefault(s, []).append(i)
        out: list[Faces | None] = [None] * len(images)
        for s, idx in by_scale.items():
            min_size = max(12.0, self.net.min_size * s) if s != 1.0 else self.net.min_size
            for i, (b, sc, lm) in zip(idx, self.net.detect([small[i] for i in idx], min_size=min_size)):
                if s != 1.0:
                    sx = images[i].shape[1] / small[i].shape[1]
                    sy = images[i].shape[0] / small[i].shape[0]
                    b = b * np.array([sx, sy, sx, sy])
                    lm = lm * np.array([sx, sy])
                out[i] = Faces(b, sc, lm)
        return out  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _default(min_size, thresholds, factor, max_side, device) -> FaceDetector:
    return FaceDetector(min_size, thresholds, factor, max_side, device)


def detect(
    images,
    min_size: float = 20.0,
    thresholds=(0.6, 0.7, 0.7),
    factor: float = 0.709,
    max_side: int | None = 1600,
    device: str | None = None,
):
    """Faces in ``images`` (one uint8 HxWx3 RGB array -> one :class:`Faces`; a list -> a list)."""
    det = _default(float(min_size), tuple(float(t) for t in thresholds), float(factor), max_side, device)
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return det([images])[0]
    return det(images)
