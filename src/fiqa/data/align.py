"""5-point face alignment to the ArcFace 112x112 template (a similarity transform, then a warp).

- :data:`ARCFACE_DST`: InsightFace's ``arcface_dst``, the 96x112 SphereFace template shifted by
  +8 px in x (left eye, right eye, nose, left mouth corner, right mouth corner; x, y in pixels).
- :func:`umeyama`: least-squares similarity (rotation, isotropic scale, translation) from
  ``src`` to ``dst`` points (Umeyama 1991); the same float64 operations as scikit-image's
  ``SimilarityTransform`` estimation, which is the transform InsightFace uses.
- :func:`estimate_norm`: the 2x3 matrix mapping image landmarks onto the template scaled to
  ``image_size`` (sizes divisible by 112 scale the template; sizes divisible by 128 scale it by
  size/128 and shift x by 8*size/128, as InsightFace does).
- :func:`norm_crop`: the aligned ``image_size`` x ``image_size`` crop (``cv2.warpAffine``,
  bilinear, constant 0 border).

Landmarks are ``(5, 2)`` arrays of ``(x, y)``. Detectors that emit 10 flat values (MTCNN's
``[x1..x5, y1..y5]`` or ``[x1, y1, x2, y2, ...]``) go through :func:`landmarks_from_flat`
first, so the layout is always explicit.
"""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_DST = np.array(
    [
        [38.2946, 51.6963],  # left eye
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float32,
)
ARCFACE_DST.setflags(write=False)

LAYOUTS = ("xxxxxyyyyy", "xyxyxyxyxy")


def landmarks_from_flat(values, layout: str = "xxxxxyyyyy") -> np.ndarray:
    """10 flat landmark values -> a float64 ``(5, 2)`` array of ``(x, y)``.

    ``layout="xxxxxyyyyy"``: ``[x1..x5, y1..y5]`` (MTCNN in AdaFace/QGFace, InsightFace's MXNet
    detector); ``layout="xyxyxyxyxy"``: ``[x1, y1, ..., x5, y5]``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    flat = np.asarray(values, dtype=np.float64)
    if flat.size != 10:
        raise ValueError(f"expected 10 landmark values (5 points), got shape {flat.shape}")
    flat = flat.reshape(10)
    return flat.reshape(2, 5).T.copy() if layout == "xxxxxyyyyy" else flat.reshape(5, 2).copy()


def _points(landmarks, name: str) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        hint = " (10 flat values: use fiqa.data.align.landmarks_from_flat)" if pts.size == 10 else ""
        raise ValueError(f"{name} must have shape (5, 2) of (x, y) points, got {pts.shape}{hint}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{name} contains NaN or infinite values: {pts.tolist()}")
    return pts


def umeyama(src, dst, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` (N, D) points onto ``dst`` (N, D).

    Returns the homogeneous ``(D+1, D+1)`` float64 matrix ``T`` with ``dst ~ T @ [src, 1]``. A
    reflection is never returned: when the best orthogonal fit is a reflection, the smallest
    singular direction is flipped (``d[-1] = -1``). For rank-deficient point sets (e.g. collinear
    points in 2-D, rank D-1) the rotation is ``U @ Vt`` when ``det(U) det(Vt) > 0`` and
    ``U @ diag(d') @ Vt`` with the last sign flipped otherwise, the scale keeping the original
    ``d``. Coincident source points (rank 0) admit no transform: ``ValueError``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"src and dst must be (N, D) arrays of one shape, N >= 2; got {src.shape} and {dst.shape}")
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    a = dst_c.T @ src_c / n  # cross-covariance (D, D)

    d = np.ones(dim, dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1.0
    u, s, vt = np.linalg.svd(a)
    rank = np.linalg.matrix_rank(a)
    if rank == 0:
        raise ValueError("degenerate points: the source points coincide (rank 0), no similarity transform exists")
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            rot = u @ vt
        else:
            d_flip = d.copy()
            d_flip[dim - 1] = -1.0
            rot = u @ np.diag(d_flip) @ vt
    else:
        rot = u @ np.diag(d) @ vt

    scale = 1.0
    if estimate_scale:
        scale = (s @ d) / src_c.var(axis=0).sum()
    t = np.eye(dim + 1, dtype=np.float64)
    t[:dim, :dim] = scale * rot
    t[:dim, dim] = dst_mean - scale * (rot @ src_mean)
    return t


def template(image_size: int = 112) -> np.ndarray:
    """The ArcFace template for an ``image_size`` square crop (float64 (5, 2))."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    dst = ARCFACE_DST.astype(np.float64)
    if image_size % 112 == 0:
        return dst * (image_size / 112.0)
    if image_size % 128 == 0:
        ratio = image_size / 128.0
        dst = dst * ratio
        dst[:, 0] += 8.0 * ratio
        return dst
    raise ValueError(f"image_size must be a multiple of 112 or of 128 (ArcFace template rule), got {image_size}")


def estimate_norm(landmarks5, image_size: int = 112) -> np.ndarray:
    """2x3 float64 affine matrix mapping image ``landmarks5`` (5, 2) onto the ArcFace template."""
    pts = _points(landmarks5, "landmarks5")
    return umeyama(pts, template(image_size), estimate_scale=True)[:2, :]


def norm_crop(img: np.ndarray, landmarks5, image_size: int = 112) -> np.ndarray:
    """Aligned uint8 crop ``(image_size, image_size[, C])`` of ``img`` (uint8 HxW or HxWxC).

    ``cv2.warpAffine`` with bilinear interpolation and a constant 0 border, as InsightFace's
    ``norm_crop``. Channel order is preserved (alignment does not care about it).
    """
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ValueError(f"img must be a uint8 numpy array, got {type(img).__name__} {getattr(img, 'dtype', '')}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and not 1 <= img.shape[2] <= 4) or min(img.shape[:2]) < 1:
        raise ValueError(f"img must be HxW or HxWxC (C <= 4), got shape {img.shape}")
    m = estimate_norm(landmarks5, image_size)
    out = cv2.warpAffine(
        np.ascontiguousarray(img), m, (image_size, image_size), flags=cv2.INTER_LINEAR, borderValue=0.0
    )
    return out.reshape((image_size, image_size) + img.shape[2:])
