"""The ISO/IEC 29794-5 components of ``quality=iso``: their registry (:data:`MEASURES`: name, QAA id,
kind, conformance, mapping), the mapping of raw values to [0, 100] (:func:`component_scores`, OFIQ 1.0.3's
formulas and parameters) and the single quality made from them (:func:`combine`). Pure numpy; the
measuring itself is :mod:`fiqa.quality.iso`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fiqa.quality.iso_scale import c_round, sigmoid_map

__all__ = [
    "APPEARANCE",
    "COMBINE",
    "COMPONENT_SETS",
    "GEOMETRY",
    "MEASURES",
    "NAMES",
    "SHARPNESS_MAP",
    "SHORT",
    "Measure",
    "combine",
    "component_scores",
]


@dataclass(frozen=True)
class Measure:
    """One component: its column name, ISO/IEC 29794-5 QAA id (OFIQ's enum value; None for a stand-in
    without one), how its raw value is mapped to [0, 100], and how close it is to OFIQ."""

    name: str
    qaa: int | None
    kind: str  # "appearance" (aligned face pixels) | "geometry" (landmarks and image size) | "detection"
    conformance: str  # "ofiq-formula" | "ofiq-formula, stand-in inputs" | "stand-in"
    mapping: str
    raw: str


#: OFIQ's sigmoid mapping: Q = round(h (a + s / (1 + exp((x0 - x) / w)))), clamped to [0, 100]
_SIG = "sigmoid"

#: every component, in column order
MEASURES: tuple[Measure, ...] = (
    Measure("LuminanceMean", 0x44, "appearance", "ofiq-formula, stand-in inputs",
            "Q = round(100 sig(x, 0.2, 0.05) (1 - sig(x, 0.8, 0.05)))",
            "mean of the face region's luminance histogram, luminance / 255"),
    Measure("LuminanceVariance", 0x45, "appearance", "ofiq-formula, stand-in inputs",
            "Q = round(100 sin(pi 60x / (60x + 1)))", "variance of the face region's luminance (/255)"),
    Measure("UnderExposurePrevention", 0x46, "appearance", "ofiq-formula, stand-in inputs",
            f"{_SIG}; h=120, a=0.832, s=-1, x0=0.92, w=0.05", "fraction of face pixels with luminance 0..25"),
    Measure("OverExposurePrevention", 0x47, "appearance", "ofiq-formula, stand-in inputs",
            "Q = round(1 / (x + 0.01)), clamped", "fraction of face pixels with luminance 247..255"),
    Measure("DynamicRange", 0x48, "appearance", "ofiq-formula, stand-in inputs",
            "Q = round(12.5 x), clamped", "entropy (bits) of the face region's luminance histogram"),
    Measure("IlluminationUniformity", 0x43, "appearance", "ofiq-formula, stand-in inputs",
            "Q = round(100 x^0.3)", "histogram intersection of the luminance of the two cheek zones"),
    Measure("NaturalColour", 0x4B, "appearance", "ofiq-formula, stand-in inputs",
            f"{_SIG}; h=200, a=1, s=-1, x0=0, w=10",
            "distance of the cheek zones' mean CIELAB (a, b) from a in [5, 25], b in [5, 35]"),
    Measure("SharpnessLaplacian", None, "appearance", "stand-in",
            f"{_SIG}; h=100, a=0, s=1, x0=2.5, w=0.7 (chosen here, see SHARPNESS_MAP)",
            "mean absolute Laplacian (3x3) of the Gaussian-smoothed grey face region in OFIQ's 616x616 frame"),
    Measure("SingleFacePresent", 0x4C, "detection", "ofiq-formula, stand-in inputs",
            "Q = round(100 (1 - x))", "area of the 2nd-largest face box / the largest's (0: one face)"),
    Measure("InterEyeDistance", 0x52, "geometry", "ofiq-formula, stand-in inputs",
            f"{_SIG}; h=100, a=0, s=1, x0=70, w=20", "eye-centre distance (px) / cos(yaw), yaw from HeadPoseYaw5pt"),
    Measure("HeadSize", 0x53, "geometry", "ofiq-formula, stand-in inputs",
            f"{_SIG} of abs(x - 0.45); h=200, a=1, s=-1, x0=0, w=0.05",
            "eye midpoint to (estimated) chin / image height"),
    Measure("LeftwardCropOfTheFaceImage", 0x54, "geometry", "ofiq-formula, stand-in inputs",
            f"{_SIG}; h=100, a=0, s=1, x0=0.9, w=0.1", "x of the image-right eye centre / inter-eye distance"),
    Measure("RightwardCropOfTheFaceImage", 0x55, "geometry", "ofiq-formula, stand-in inputs",
            f"{_SIG}; h=100, a=0, s=1, x0=0.9, w=0.1",
            "(image width - x of the image-left eye centre) / inter-eye distance"),
    Measure("MarginAboveOfTheFaceImage", 0x56, "geometry", "ofiq-formula, stand-in inputs",
            f"{_SIG}; h=100, a=0, s=1, x0=1.4, w=0.1", "y of the eye midpoint / eye-to-chin distance"),
    Measure("MarginBelowOfTheFaceImage", 0x57, "geometry", "ofiq-formula, stand-in inputs",
            f"{_SIG}; h=100, a=0, s=1, x0=1.8, w=0.1",
            "(image height - y of the eye midpoint) / eye-to-chin distance"),
    Measure("HeadPoseYaw5pt", None, "geometry", "stand-in",
            "Q = round(100 max(0, cos x)^2) (OFIQ's HeadPose mapping)", "yaw estimate (degrees) from the nose offset"),
    Measure("HeadPosePitch5pt", None, "geometry", "stand-in",
            "Q = round(100 max(0, cos x)^2) (OFIQ's HeadPose mapping)",
            "pitch estimate (degrees) from the nose height between eyes and mouth"),
    Measure("HeadPoseRoll5pt", None, "geometry", "stand-in",
            "Q = round(100 max(0, cos x)^2) (OFIQ's HeadPose mapping)", "roll (degrees): the angle of the eye line"),
)  # fmt: skip
NAMES: tuple[str, ...] = tuple(m.name for m in MEASURES)
APPEARANCE: tuple[str, ...] = tuple(m.name for m in MEASURES if m.kind == "appearance")
GEOMETRY: tuple[str, ...] = tuple(m.name for m in MEASURES if m.kind != "appearance")
_INDEX = {n: i for i, n in enumerate(NAMES)}
#: short labels for figures (contact-sheet tiles)
SHORT = {
    "LuminanceMean": "luminance", "LuminanceVariance": "contrast", "UnderExposurePrevention": "under-exp.",
    "OverExposurePrevention": "over-exp.", "DynamicRange": "dyn. range", "IlluminationUniformity": "uneven light",
    "NaturalColour": "colour", "SharpnessLaplacian": "sharpness", "SingleFacePresent": "more faces",
    "InterEyeDistance": "eye dist.", "HeadSize": "head size", "LeftwardCropOfTheFaceImage": "crop left",
    "RightwardCropOfTheFaceImage": "crop right", "MarginAboveOfTheFaceImage": "margin top",
    "MarginBelowOfTheFaceImage": "margin bottom", "HeadPoseYaw5pt": "yaw", "HeadPosePitch5pt": "pitch",
    "HeadPoseRoll5pt": "roll",
}  # fmt: skip

#: OFIQ's sigmoid parameters (``ofiq_config.jaxn`` / the measures' constructor defaults)
_SIGMOIDS = {
    "UnderExposurePrevention": {"h": 120.0, "a": 0.832, "s": -1.0, "x0": 0.92, "w": 0.05},
    # OFIQ reads "NaturalColour"'s parameters, its config file spells the key "NaturalColor": the defaults apply
    "NaturalColour": {"h": 200.0, "a": 1.0, "s": -1.0, "x0": 0.0, "w": 10.0},
    "InterEyeDistance": {"h": 100.0, "a": 0.0, "s": 1.0, "x0": 70.0, "w": 20.0},
    "HeadSize": {"h": 200.0, "a": 1.0, "s": -1.0, "x0": 0.0, "w": 0.05},
    "LeftwardCropOfTheFaceImage": {"h": 100.0, "a": 0.0, "s": 1.0, "x0": 0.9, "w": 0.1},
    "RightwardCropOfTheFaceImage": {"h": 100.0, "a": 0.0, "s": 1.0, "x0": 0.9, "w": 0.1},
    "MarginAboveOfTheFaceImage": {"h": 100.0, "a": 0.0, "s": 1.0, "x0": 1.4, "w": 0.1},
    "MarginBelowOfTheFaceImage": {"h": 100.0, "a": 0.0, "s": 1.0, "x0": 1.8, "w": 0.1},
}
#: SharpnessLaplacian's mapping, chosen here (not OFIQ's: its sharpness is a random forest) on the real faces
#: of tests/quality/test_iso.py: Grace Hopper (matplotlib's sample, inter-eye distance 89 px) reads 6.6 (Q 100),
#: the same photo blurred with sigma 1 / 2 / 4 px 3.2 / 1.7 / 1.1 (Q 73 / 24 / 12); a small face is upscaled to
#: the frame and reads lower too (the astronaut, 42 px: 2.0, Q 33)
SHARPNESS_MAP = {"h": 100.0, "a": 0.0, "s": 1.0, "x0": 2.5, "w": 0.7}


def _pose_q(x: np.ndarray) -> np.ndarray:
    c = np.maximum(0.0, np.cos(np.radians(x)))
    return c_round(100 * c * c)


def _sig(x, x0, w):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp((x0 - x) / w))


def component_scores(raw: np.ndarray) -> np.ndarray:
    """``(N, len(MEASURES))`` raw values -> the 0-100 components (float64, integral; -1: not assessed)."""
    raw = np.atleast_2d(np.asarray(raw, np.float64))
    if raw.shape[1] != len(NAMES):
        raise ValueError(f"component_scores needs {len(NAMES)} columns ({', '.join(NAMES)}), got {raw.shape[1]}")
    q = np.empty_like(raw)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, name in enumerate(NAMES):
            x = raw[:, j]
            if name in _SIGMOIDS:
                v = sigmoid_map(np.abs(x - 0.45) if name == "HeadSize" else x, **_SIGMOIDS[name])
            elif name == "SharpnessLaplacian":
                v = sigmoid_map(x, **SHARPNESS_MAP)
            elif name == "LuminanceMean":
                v = c_round(100 * _sig(x, 0.2, 0.05) * (1 - _sig(x, 0.8, 0.05)))
            elif name == "LuminanceVariance":
                v = c_round(100 * np.sin(60 * x / (60 * x + 1) * np.pi))
            elif name == "OverExposurePrevention":
                v = np.clip(c_round(1.0 / (x + 0.01)), 0, 100)
            elif name == "DynamicRange":
                v = np.clip(c_round(12.5 * x), 0, 100)
            elif name == "IlluminationUniformity":
                v = c_round(100 * np.power(np.maximum(x, 0), 0.3))
            elif name == "SingleFacePresent":
                v = c_round(100 * (1 - x))
            else:  # the three pose angles
                v = _pose_q(x)
            q[:, j] = np.where(np.isfinite(x), v, -1.0) + 0.0
    return q


COMBINE = ("min", "mean")
#: named component sets for :func:`combine`: ``recognition`` (the default) leaves out what describes the
#: photo's framing rather than the face (HeadSize, the crop and margin measures, SingleFacePresent: a group
#: photo or a tight crop scores 0 there however good the face); ``all`` is every component (ISO capture
#: conformance, e.g. for a passport photo)
COMPONENT_SETS: dict[str, tuple[str, ...]] = {
    "recognition": (*APPEARANCE, "InterEyeDistance", "HeadPoseYaw5pt", "HeadPosePitch5pt", "HeadPoseRoll5pt"),
    "all": NAMES,
}


def combine(scores: np.ndarray, how: str = "min", components: str | Sequence[str] = "recognition") -> np.ndarray:
    """One quality per face from the 0-100 components: ``min`` (the weakest assessed component: every
    requirement met, as a capture guideline asks) or ``mean``, over ``components`` (a name of
    :data:`COMPONENT_SETS` or a list of measure names); the not-assessed ones (-1) are left out; NaN when
    none is assessed."""
    if how not in COMBINE:
        raise ValueError(f"quality.combine={how!r} is not a choice; valid choices: {list(COMBINE)}")
    if isinstance(components, str):
        if components not in COMPONENT_SETS:
            raise ValueError(
                f"quality.components={components!r} is not a component set; valid choices: {list(COMPONENT_SETS)} "
                f"or a list of measure names"
            )
        components = COMPONENT_SETS[components]
    if components is not None:
        unknown = [c for c in components if c not in _INDEX]
        if unknown:
            raise ValueError(f"quality.components: unknown measure(s) {unknown}; valid choices: {list(NAMES)}")
        cols = [_INDEX[c] for c in components]
    s = np.atleast_2d(np.asarray(scores, np.float64))[:, cols]
    s = np.where(s >= 0, s, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row: NaN, said in the docstring
        out = np.nanmin(s, axis=1) if how == "min" else np.nanmean(s, axis=1)
    return out
