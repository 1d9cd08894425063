"""OFIQ's unified quality score (ISO/IEC 29794-5 QAA 0x41), as a preset: alignment, input blob, native
score and mapping of OFIQ 1.0.3 (``BSI-OFIQ/OFIQ-Project``; ``OFIQlib/modules/utils/src/utils.cpp``
``alignImage`` and ``OFIQlib/modules/measures/src/UnifiedQualityScore.cpp``).

Pipeline, per image (OFIQ's 98-point ADNet landmarks and face detector are *not* part of this module:
pass the five points, e.g. from :func:`landmarks5_from_wflw98`):

1. :func:`ofiq_similarity`: the 4-DOF similarity (rotation, uniform scale, translation) from the five
   landmarks to :data:`OFIQ_TARGET_616`, fitted like OFIQ with ``cv2.estimateAffinePartial2D(..., LMEDS)``;
2. :func:`ofiq_align`: ``warpAffine`` to 616x616 (bilinear, black border), ``resize`` to 192x192
   (bilinear), crop rows 33:145, cols 40:152 -> 112x112 (the crop is ArcFace-like: the targets land within
   0.3 px of the ArcFace 112 template);
3. :func:`ofiq_input`: BGR, ``/ 255``, no mean or std, NCHW float32: OFIQ's ``blobFromImage`` blob;
4. the native score: the MagFace iResNet-50 feature norm (:class:`OnnxNorm` runs OFIQ's
   ``magface_iresnet50_norm.onnx``, or any MagFace ONNX model that outputs the embedding);
5. :func:`~fiqa.quality.iso_scale.sigmoid_map` with :data:`~fiqa.quality.iso_scale.OFIQ_UNIFIED`
   (``x0 = 23, w = 2.6``).

OpenCV and numpy only at import; ``onnxruntime`` is imported when an :class:`OnnxNorm` is made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from fiqa.quality.iso_scale import OFIQ_UNIFIED, c_round, sigmoid_map

__all__ = [
    "OFIQ_ALIGNED_SIZE",
    "OFIQ_CROP_COLS",
    "OFIQ_CROP_ROWS",
    "OFIQ_INPUT_SIZE",
    "OFIQ_RESIZE",
    "OFIQ_TARGET_616",
    "OnnxNorm",
    "landmarks5_from_wflw98",
    "ofiq_align",
    "ofiq_input",
    "ofiq_similarity",
    "unified_quality",
]

# alignImage (utils.cpp): targets in the 616x616 aligned image, in the order image-left eye centre,
# image-right eye centre, nose tip, image-left mouth corner, image-right mouth corner (x, y).
OFIQ_TARGET_616 = np.array([(251, 272), (364, 272), (308, 336), (262, 402), (355, 402)], dtype=np.float64)
OFIQ_TARGET_616.setflags(write=False)
OFIQ_ALIGNED_SIZE = 616
# UnifiedQualityScore.cpp: resize to 192, crop top 33 / bottom 47, left 40 / right 40 -> 112x112
OFIQ_RESIZE = 192
OFIQ_CROP_ROWS = (33, 145)
OFIQ_CROP_COLS = (40, 152)
OFIQ_INPUT_SIZE = 112

ONNXRUNTIME_HINT = "pip install onnxruntime  (or: pip install -e '.[dev]')"


def _landmarks5(landmarks5) -> np.ndarray:
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2):
        raise ValueError(
            f"landmarks5 must have shape (5, 2) (x, y of: image-left eye, image-right eye, nose, image-left mouth "
            f"corner, image-right mouth corner), got shape {lm.shape}"
        )
    if not np.all(np.isfinite(lm)):
        raise ValueError(f"landmarks5 must be finite, got {lm.tolist()}")
    return lm


def landmarks5_from_wflw98(landmarks98) -> np.ndarray:
    """OFIQ's five alignment points from 98 WFLW (ADNet) landmarks ``(98, 2)`` x, y: the eye centres
    ``round(p60 + (p64 - p60) / 2)`` and ``round(p68 + (p72 - p68) / 2)`` (C rounding, per coordinate),
    the nose tip 54, the mouth corners 76 and 82. The inputs are first rounded (C rounding), as OFIQ rounds
    ADNet's output, so the five points are integers."""
    lm = np.asarray(landmarks98, dtype=np.float64)
    if lm.shape != (98, 2):
        raise ValueError(f"landmarks98 must have shape (98, 2) (WFLW layout, x, y), got shape {lm.shape}")
    p = c_round(lm)  # OFIQ's ADNet landmarks are rounded to integers

    def centre(i: int, j: int) -> np.ndarray:
        return c_round(p[i] + 0.5 * (p[j] - p[i]))

    return np.stack([centre(60, 64), centre(68, 72), p[54], p[76], p[82]])


def ofiq_similarity(landmarks5) -> np.ndarray:
    """The 2x3 float64 similarity that maps ``landmarks5`` (5, 2) onto :data:`OFIQ_TARGET_616`, fitted as
    OFIQ does: ``cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)`` (OpenCV computes in float32)."""
    lm = _landmarks5(landmarks5)
    m, _ = cv2.estimateAffinePartial2D(
        lm.astype(np.float32).reshape(-1, 1, 2), OFIQ_TARGET_616.astype(np.float32).reshape(-1, 1, 2), method=cv2.LMEDS
    )
    if m is None:
        raise ValueError(
            f"OpenCV found no similarity from landmarks5 {lm.tolist()} to OFIQ's targets "
            f"{OFIQ_TARGET_616.tolist()} (degenerate landmarks, e.g. coincident points?)"
        )
    return np.asarray(m, dtype=np.float64)


def ofiq_align(image_rgb_uint8: np.ndarray, landmarks5) -> np.ndarray:
    """OFIQ's 112x112 crop for the unified score: warp to 616x616 with :func:`ofiq_similarity`
    (``INTER_LINEAR``, constant 0 border), ``cv2.resize`` to 192x192 (``INTER_LINEAR``), crop rows 33:145,
    cols 40:152. ``image_rgb_uint8``: HxWx3 uint8 RGB; returns uint8 112x112x3 RGB (the interpolation is
    per channel, so warping RGB instead of OFIQ's BGR gives the same pixels)."""
    img = np.asarray(image_rgb_uint8)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image_rgb_uint8 must be a uint8 HxWx3 RGB array, got {img.dtype} shape {img.shape}")
    m = ofiq_similarity(landmarks5)
    size = OFIQ_ALIGNED_SIZE
    aligned = cv2.warpAffine(
        np.ascontiguousarray(img),
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    small = cv2.resize(aligned, (OFIQ_RESIZE, OFIQ_RESIZE), interpolation=cv2.INTER_LINEAR)
    (r0, r1), (c0, c1) = OFIQ_CROP_ROWS, OFIQ_CROP_COLS
    return np.ascontiguousarray(small[r0:r1, c0:c1])


def ofiq_input(aligned_rgb_batch: np.ndarray) -> np.ndarray:
    """OFIQ's network input from aligned crops ``(N, 112, 112, 3)`` uint8 RGB (a single ``(112, 112, 3)``
    crop is taken as N = 1): float32 ``(N, 3, 112, 112)``, channels **BGR**, values ``/ 255``, no mean."""
    x = np.asarray(aligned_rgb_batch)
    if x.ndim == 3:
        x = x[None]
    s = OFIQ_INPUT_SIZE
    if x.ndim != 4 or x.shape[1:] != (s, s, 3) or x.dtype != np.uint8:
        raise ValueError(
            f"aligned_rgb_batch must be uint8 (N, {s}, {s}, 3) RGB crops (from ofiq_align), got {x.dtype} "
            f"shape {x.shape}"
        )
    bgr = x[..., ::-1].astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(bgr.transpose(0, 3, 1, 2))


class OnnxNorm:
    """Native unified score from an ONNX model: ``OnnxNorm(path)(x)`` with ``x`` float32 NCHW (from
    :func:`ofiq_input`) gives ``(N,)`` float64.

    Output 0 decides (``output="auto"``): one value per image is the norm itself (OFIQ's
    ``magface_iresnet50_norm.onnx``; OFIQ reads the first float of output 0); ``D > 1`` values per image
    are an embedding (a plain MagFace export) and its L2 norm is returned. ``output="first"`` always takes
    the first value per image (OFIQ's literal rule), ``output="l2"`` always the L2 norm.

    Batches of ``batch_size``; a model whose batch dimension is fixed (OFIQ feeds ``{1, C, 112, 112}``) is
    run in chunks of that size (image by image for 1), the last chunk zero-padded."""

    OUTPUT_MODES = ("auto", "first", "l2")

    def __init__(self, path: str | os.PathLike, batch_size: int = 64, output: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(f"OnnxNorm needs onnxruntime, which is not installed: {ONNXRUNTIME_HINT}") from e
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"ONNX model file not found: {self.path!r}")
        if output not in self.OUTPUT_MODES:
            raise ValueError(f"OnnxNorm output={output!r}: choose one of {list(self.OUTPUT_MODES)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"OnnxNorm batch_size must be a positive int, got {batch_size!r}")
        self.output = output
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        b = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = b if isinstance(b, int) and b > 0 else None
        self.batch_size = self.fixed_batch or batch_size

    def _check(self, x: np.ndarray) -> None:
        if x.ndim != 4:
            raise ValueError(f"OnnxNorm({self.path!r}) needs float32 NCHW input, got shape {x.shape}")
        want = self.input_shape[1:]
        if len(want) == 3:
            for axis, (w, g) in enumerate(zip(want, x.shape[1:]), start=1):
                if isinstance(w, int) and w > 0 and w != g:
                    raise ValueError(
                        f"OnnxNorm({self.path!r}): model input {self.input_name!r} has shape {self.input_shape}, "
                        f"got {tuple(x.shape)} (axis {axis} differs)"
                    )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._check(x)
        n = x.shape[0]
        out = np.empty(n, dtype=np.float64)
        bs = self.batch_size
        for i in range(0, n, bs):
            chunk = x[i : i + bs]
            k = chunk.shape[0]
            if self.fixed_batch is not None and k < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - k, *chunk.shape[1:]), dtype=np.float32)
                chunk = np.concatenate([chunk, pad])
            y = np.asarray(self.session.run(None, {self.input_name: chunk})[0], dtype=np.float64)
            m = chunk.shape[0]
            if y.size == 0 or y.size % m:
                raise ValueError(
                    f"OnnxNorm({self.path!r}): output 0 has shape {y.shape}, which does not split into {m} images"
                )
            y = y.reshape(m, -1)[:k]
            if self.output == "first" or (self.output == "auto" and y.shape[1] == 1):
                out[i : i + k] = y[:, 0]
            else:
                out[i : i + k] = np.linalg.norm(y, axis=1)
        return out


def _as_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, without importing torch here
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def unified_quality(
    images_rgb: Sequence[np.ndarray] | np.ndarray,
    landmarks,
    native_fn: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """OFIQ's unified quality score: align every image with its five landmarks (:func:`ofiq_align`), build
    the blob (:func:`ofiq_input`), ``native_fn(blob)`` -> ``(N,)`` native scores (MagFace norms; e.g. an
    :class:`OnnxNorm`), map them with :data:`~fiqa.quality.iso_scale.OFIQ_UNIFIED`.

    ``images_rgb``: N uint8 HxWx3 RGB images (sizes may differ); ``landmarks``: ``(N, 5, 2)``. Returns
    ``{"raw": (N,) float64, "scalar": (N,) float64}`` (a non-finite raw score gives scalar -1).
    ``native_fn`` is called on at most ``batch_size`` images at a time."""
    n = len(images_rgb)
    lms = np.asarray(landmarks, dtype=np.float64)
    if lms.shape != (n, 5, 2):
        raise ValueError(f"landmarks must have shape (N, 5, 2) = ({n}, 5, 2) for {n} images, got {lms.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"unified_quality batch_size must be a positive int, got {batch_size!r}")
    raw = np.empty(n, dtype=np.float64)
    for i in range(0, n, batch_size):
        idx = range(i, min(i + batch_size, n))
        crops = []
        for j in idx:
            try:
                crops.append(ofiq_align(images_rgb[j], lms[j]))
            except ValueError as e:
                raise ValueError(f"unified_quality: image {j}: {e}") from e
        blob = ofiq_input(np.stack(crops))
        scores = _as_numpy(native_fn(blob))
        if scores.shape not in ((len(idx),), (len(idx), 1)):
            raise ValueError(
                f"unified_quality: native_fn returned shape {scores.shape} for a batch of {len(idx)} images; "
                f"expected ({len(idx)},)"
            )
        raw[i : i + len(idx)] = scores.reshape(-1)
    return {"raw": raw, "scalar": sigmoid_map(raw, **OFIQ_UNIFIED)}
