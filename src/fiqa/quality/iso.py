"""ISO/IEC 29794-5 component quality measures from the image, the face box and the 5 landmarks
(``quality=iso``): quality that means something on a real photo without a trained model.

Pure numpy / OpenCV, no network, no learned model. The facts (formulas, constants, mappings, QAA ids)
are those of OFIQ 1.0.3 (``BSI-OFIQ/OFIQ-Project``: ``OFIQlib/modules/measures/src/*.cpp``,
``OFIQlib/modules/utils/src/image_utils.cpp``, ``data/ofiq_config.jaxn``); the code is written here.

What OFIQ computes with a learned model is replaced, and every replacement is named in
:data:`MEASURES` (``conformance``) and in docs/evaluation.md:

* the face region: OFIQ takes the convex hull of ADNet's 98 landmarks in its aligned 616x616 face
  (and, for the exposure measures, also a face-occlusion segmentation CNN); here it is a fixed ellipse
  in the same aligned frame (:data:`FACE_ELLIPSE_616`, brows to chin), cut to the pixels that lie inside
  the photo. The alignment itself is OFIQ's (5-point similarity onto its targets, ``fiqa.quality.ofiq``).
* the eye centres, mouth centre and chin: OFIQ's come from the 98 landmarks; here the eye centres and
  mouth corners are the detector's 5 points and the chin is estimated
  (``eye midpoint + CHIN_FACTOR * (mouth centre - eye midpoint)``).
* head pose: OFIQ runs 3DDFA-V2 (a CNN); here roll is the angle of the eye line and yaw / pitch are
  coarse geometric estimates from the nose's offset (named ``HeadPose*5pt``: not OFIQ's values).
* sharpness: OFIQ's is a random forest on Laplacian / mean-difference / Sobel features; here
  ``SharpnessLaplacian`` is the mean absolute Laplacian of the aligned face region (a classical stand-in
  with a mapping chosen here, :data:`SHARPNESS_MAP`).

A measure that cannot be assessed has raw value NaN and quality ``-1`` (OFIQ's ``FailureToAssess``).

Two entry points: :func:`measure_face` (a photo, its 5 landmarks and optionally every detected box: all
measures) and :func:`measure_aligned` (an ArcFace-aligned 112x112 crop, as in SynthFace or a .rec: the
crop's geometry was set by the alignment, so the geometric measures are not assessed and only the
appearance measures are computed). :func:`component_scores` maps raw values to [0, 100];
:func:`combine` makes the single ``quality`` (the minimum of the assessed components by default).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fiqa.quality import iso_components
from fiqa.quality.iso_components import APPEARANCE, NAMES
from fiqa.quality.iso_scale import c_round

# the registry, the mappings and the combination, re-exported (fiqa.quality.iso_components)
COMBINE, COMPONENT_SETS, GEOMETRY, MEASURES = (
    iso_components.COMBINE,
    iso_components.COMPONENT_SETS,
    iso_components.GEOMETRY,
    iso_components.MEASURES,
)
SHARPNESS_MAP, SHORT, Measure = iso_components.SHARPNESS_MAP, iso_components.SHORT, iso_components.Measure
combine, component_scores = iso_components.combine, iso_components.component_scores

__all__ = [
    *iso_components.__all__,
    "CHIN_FACTOR",
    "FACE_ELLIPSE_616",
    "luminance",
    "measure_aligned",
    "measure_face",
    "pose_5pt",
    "single_face",
]


#: eye-line-to-chin distance / eye-line-to-mouth distance: anthropometric norms (eye line to gnathion
#: about 111 mm, eye line to stomion about 66 mm in adults) give 1.6-1.7; 1.6 is used
CHIN_FACTOR = 1.6
#: the depth of the nose tip in front of the eyes, in inter-eye distances (yaw) and in eye-to-mouth
#: distances (pitch): coarse values for the 5-point pose estimates
NOSE_DEPTH_IED, NOSE_DEPTH_EM = 0.5, 0.5
#: where the nose sits between the eye line and the mouth line in a frontal face (the ArcFace template:
#: (71.7366 - 51.5989) / (92.2848 - 51.5989))
NOSE_HEIGHT_FRONTAL = 0.4950

# OFIQ's aligned frame (616x616; fiqa.quality.ofiq.OFIQ_TARGET_616): eyes at y 272, x 251 / 364 (IED 113), mouth
# at y 402. The face region: an ellipse from the brows (272 - 0.35 IED = 232) to the chin (272 + 1.6 * 130 = 480),
# half-width 1.1 IED = 124. A stand-in for OFIQ's hull of 98 landmarks.
FACE_ELLIPSE_616 = {"centre": (307.5, 356.0), "axes": (124.0, 124.0)}
_ALIGNED = 616


def _face_mask_616() -> tuple[np.ndarray, tuple[int, int]]:
    """The face ellipse, cut to its bounding box (every measure reads only that box of the 616 frame), and
    the box's top-left corner in the frame."""
    m = np.zeros((_ALIGNED, _ALIGNED), np.uint8)
    (cx, cy), (ax, ay) = FACE_ELLIPSE_616["centre"], FACE_ELLIPSE_616["axes"]
    cv2.ellipse(m, (round(cx), round(cy)), (round(ax), round(ay)), 0, 0, 360, 1, thickness=-1)
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return m[y0:y1, x0:x1].astype(bool), (int(x0), int(y0))


_MASK, _MASK_ORIGIN = _face_mask_616()
_MASK.setflags(write=False)


def _srgb_linear(x: np.ndarray) -> np.ndarray:
    """OFIQ's ``ColorConvert``: the sRGB decoding curve on values in [0, 1]."""
    return np.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)


_LIN = _srgb_linear(np.arange(256) / 255.0)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """OFIQ's ``GetLuminanceImageFromBGR``: ``floor(255 (0.2126 R + 0.7152 G + 0.0722 B) + 0.5)`` on the
    linearised channels, as uint8; ``rgb`` is ``(..., 3)`` uint8 RGB."""
    rgb = np.asarray(rgb)
    y = 0.2126 * _LIN[rgb[..., 0]] + 0.7152 * _LIN[rgb[..., 1]] + 0.0722 * _LIN[rgb[..., 2]]
    return np.floor(y * 255 + 0.5).astype(np.uint8)


def _hist(values: np.ndarray) -> np.ndarray:
    """The normalised 256-bin histogram of uint8 values (NaN when there are none)."""
    h = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    n = h.sum()
    return h / n if n else np.full(256, np.nan)


def _cielab_ab(mean_rgb: np.ndarray) -> tuple[float, float]:
    """OFIQ's ``ConvertBGRToCIELAB`` of a mean colour (0-255 RGB): sRGB decoding, the D50 matrix, and
    its constant ``k = 24289 / 27`` (the CIE value is 24389 / 27; kept, as OFIQ computes it)."""
    k, eps = 24289 / 27.0, 216 / 24389.0
    r, g, b = _srgb_linear(np.asarray(mean_rgb, np.float64) / 255.0)
    x = (r * 0.43605 + g * 0.38508 + b * 0.14309) / 0.964221
    y = r * 0.22249 + g * 0.71689 + b * 0.06062
    z = (r * 0.01393 + g * 0.09710 + b * 0.71419) / 0.825211

    def f(t):
        return (k * t + 16) / 116 if t <= eps else math.cbrt(t)

    return 500.0 * (f(x) - f(y)), 200.0 * (f(y) - f(z))


def _natural_colour_raw(a: float, b: float) -> float:
    if a >= 0 and b >= 0:
        return math.hypot(max(0.0, 5 - a, a - 25), max(0.0, 5 - b, b - 35))
    return 100.0


def _ofiq_similarity(landmarks5: np.ndarray) -> np.ndarray:
    from fiqa.quality.ofiq import ofiq_similarity

    return ofiq_similarity(landmarks5)


def _aligned_frame(image: np.ndarray, landmarks5: np.ndarray):
    """The face-region box of OFIQ's 616x616 aligned face (OFIQ's similarity; only the box around the face
    ellipse is warped), the face mask cut to the pixels that lie inside the photo, and the 5 points in the
    box's coordinates."""
    m = _ofiq_similarity(landmarks5).copy()
    m[:, 2] -= _MASK_ORIGIN  # the box's top-left corner becomes (0, 0)
    size = (_MASK.shape[1], _MASK.shape[0])
    aligned = cv2.warpAffine(np.ascontiguousarray(image), m, size, flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))  # fmt: skip
    inside = cv2.warpAffine(np.full(image.shape[:2], 255, np.uint8), m, size, flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
    pts = np.asarray(landmarks5, np.float64) @ m[:, :2].T + m[:, 2]
    return aligned, _MASK & (inside > 0), pts


def _cheek_zones(pts: np.ndarray):
    """OFIQ's ``CalculateRegionOfInterest`` in the aligned frame, from integer points as OFIQ's landmarks:
    two squares of side ``int(0.3 IED)`` half the eye-to-mouth distance below each eye, on its inner side.
    Returns ``(x, y, side)`` of the image-left and the image-right zone."""
    left, right = c_round(pts[0]), c_round(pts[1])
    mid = c_round((left + right) / 2)
    mouth = c_round((pts[3] + pts[4]) / 2)
    ied = float(np.hypot(*(left - right)))
    em = float(np.hypot(*(mid - mouth)))
    side = int(ied * 0.3)
    down = int(em / 2)
    return (int(left[0]), int(left[1]) + down, side), (int(right[0]) - side, int(right[1]) + down, side)


def _zone(img: np.ndarray, z) -> np.ndarray:
    x, y, s = z
    h, w = img.shape[:2]
    if s <= 0 or x < 0 or y < 0 or x + s > w or y + s > h:
        return img[0:0, 0:0]
    return img[y : y + s, x : x + s]


def _appearance(aligned: np.ndarray, mask: np.ndarray, pts: np.ndarray) -> dict[str, float]:
    nan = float("nan")
    out = dict.fromkeys(APPEARANCE, nan)
    if mask.sum() < 64:  # the face region is (almost) outside the photo
        return out
    face = np.where(mask[..., None], aligned, 0).astype(np.uint8)
    lum_face = luminance(face)
    h = _hist(lum_face[mask])
    bins = np.arange(256) / 255.0
    mean = float((h * bins).sum())
    out["LuminanceMean"] = mean
    out["LuminanceVariance"] = float((h * (bins - mean) ** 2).sum())
    out["UnderExposurePrevention"] = float(h[0:26].sum())
    out["OverExposurePrevention"] = float(h[247:256].sum())
    nz = h[h > 0]
    out["DynamicRange"] = float(-(nz * np.log2(nz)).sum())
    zl, zr = _cheek_zones(pts)
    left, right = _zone(lum_face, zl), _zone(lum_face, zr)
    if left.size and right.size:
        out["IlluminationUniformity"] = float(np.minimum(_hist(left), _hist(right)).sum())
    cl, cr = _zone(face, zl), _zone(face, zr)
    if not _is_coloured(aligned):
        out["NaturalColour"] = 0.0  # OFIQ: a grey image scores D = 0
    elif cl.size and cr.size:
        mean_rgb = np.concatenate([cr.reshape(-1, 3), cl.reshape(-1, 3)]).mean(axis=0)
        out["NaturalColour"] = _natural_colour_raw(*_cielab_ab(mean_rgb))
    grey = cv2.cvtColor(np.ascontiguousarray(aligned), cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(cv2.GaussianBlur(grey, (3, 3), 0), cv2.CV_64F, ksize=1)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # no edge of the photo's border
    out["SharpnessLaplacian"] = float(np.abs(lap[inner]).mean()) if inner.sum() >= 64 else nan
    return out


def _is_coloured(rgb: np.ndarray) -> bool:
    """OFIQ's ``IsColoured``: any pixel whose three channels differ."""
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 0] != rgb[..., 2]))


def pose_5pt(landmarks5) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` in degrees from the 5 points (image-left eye, image-right eye, nose, image-left
    mouth corner, image-right mouth corner).

    roll: the angle of the eye line (positive: the image-right eye lower, i.e. clockwise in the image);
    then, in the frame rotated by -roll about the eye midpoint: yaw = ``atan(dx / (NOSE_DEPTH_IED * IED))``
    with dx the nose's offset from the eye midpoint (positive: nose towards the image right), and pitch =
    ``atan((NOSE_HEIGHT_FRONTAL - r) / NOSE_DEPTH_EM)`` with r the nose's height between the eye line and
    the mouth line (positive: nose higher than frontal, face turned up). Coarse estimates: the nose depths
    are fixed, so |yaw| and |pitch| are off by up to a third; roll is exact up to the landmarks' error."""
    p = np.asarray(landmarks5, np.float64)
    eye_l, eye_r, nose = p[0], p[1], p[2]
    mouth = (p[3] + p[4]) / 2
    d = eye_r - eye_l
    roll = math.atan2(d[1], d[0])
    c, s = math.cos(-roll), math.sin(-roll)
    rot = np.array([[c, -s], [s, c]])
    mid = (eye_l + eye_r) / 2
    n, m = rot @ (nose - mid), rot @ (mouth - mid)
    ied = float(np.hypot(*d))
    if ied <= 0 or m[1] <= 0:
        return float("nan"), float("nan"), math.degrees(roll)
    yaw = math.atan(n[0] / (NOSE_DEPTH_IED * ied))
    pitch = math.atan((NOSE_HEIGHT_FRONTAL - n[1] / m[1]) / NOSE_DEPTH_EM)
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def _geometry(shape: tuple[int, ...], landmarks5: np.ndarray, boxes) -> dict[str, float]:
    height, width = float(shape[0]), float(shape[1])
    p = np.asarray(landmarks5, np.float64)
    eye_l, eye_r = p[0], p[1]
    mid = (eye_l + eye_r) / 2
    mouth = (p[3] + p[4]) / 2
    ied = float(np.hypot(*(eye_r - eye_l)))
    t = CHIN_FACTOR * float(np.hypot(*(mouth - mid)))
    yaw, pitch, roll = pose_5pt(p)
    nan = float("nan")
    cos_yaw = math.cos(math.radians(yaw)) if math.isfinite(yaw) else nan
    out = {
        "InterEyeDistance": ied / cos_yaw if math.isfinite(cos_yaw) and abs(cos_yaw) >= 1e-6 else nan,
        "HeadSize": t / height if t > 0 else nan,
        "LeftwardCropOfTheFaceImage": eye_r[0] / ied if ied > 0 else nan,
        "RightwardCropOfTheFaceImage": (width - eye_l[0]) / ied if ied > 0 else nan,
        "MarginAboveOfTheFaceImage": mid[1] / t if t > 0 else nan,
        "MarginBelowOfTheFaceImage": (height - mid[1]) / t if t > 0 else nan,
        "HeadPoseYaw5pt": yaw,
        "HeadPosePitch5pt": pitch,
        "HeadPoseRoll5pt": roll,
    }
    out["SingleFacePresent"] = single_face(boxes)
    return out


def single_face(boxes) -> float:
    """SingleFacePresent's raw value from every face box ``(K, 4)`` found in the photo: the area of the
    second-largest box over the largest's (OFIQ), 0 for one face; NaN (not assessed) without boxes."""
    if boxes is None:
        return float("nan")
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(b):
        return float("nan")
    areas = np.sort((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[::-1]
    return float(areas[1] / areas[0]) if len(areas) > 1 and areas[0] > 0 else 0.0


def _check_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"quality=iso needs uint8 HxWx3 RGB images, got {img.dtype} shape {img.shape}")
    return img


def measure_face(image, landmarks5, boxes=None) -> np.ndarray:
    """The raw values of every :data:`MEASURES` component (NaN: not assessed) of the face with
    ``landmarks5`` (5, 2) in ``image`` (HxWx3 uint8 RGB, the whole photo); ``boxes`` (K, 4): every face the
    detector found in the photo, for SingleFacePresent (None: not assessed)."""
    img = _check_image(image)
    lm = np.asarray(landmarks5, np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"quality=iso needs 5 finite (x, y) landmarks, got {lm.tolist()}")
    aligned, mask, pts = _aligned_frame(img, lm)
    values = {**_appearance(aligned, mask, pts), **_geometry(img.shape, lm, boxes)}
    return np.array([values[n] for n in NAMES], np.float64)


def measure_aligned(crop) -> np.ndarray:
    """The raw values for an ArcFace-aligned crop (its landmarks are the ArcFace template, scaled to the
    crop): the appearance measures; the geometric and detection ones are NaN (the alignment set them)."""
    from fiqa.data.align import ARCFACE_DST

    img = _check_image(crop)
    h, w = img.shape[:2]
    lm = ARCFACE_DST.astype(np.float64) * np.array([w / 112.0, h / 112.0])
    aligned, mask, pts = _aligned_frame(img, lm)
    values = _appearance(aligned, mask, pts)
    return np.array([values.get(n, np.nan) for n in NAMES], np.float64)
