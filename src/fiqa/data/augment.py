"""Training augmentations: uint8 HxWx3 RGB -> uint8 HxWx3 RGB of the same size, ``t(img, rng)``.

All randomness comes from ``rng`` (see :mod:`fiqa.data.transforms` for the convention):
:class:`JPEGRoundTrip`, :class:`GaussianBlur`, :class:`Grayscale`, :class:`LowResolution`
(:class:`EQFaceLowRes`), :class:`RandomResizedCrop`, :class:`RandomCropPad`, :class:`Rotate`; each has a
probability ``p``. The colour jitters (``Photometric``, ``HueSaturation``) are in
:mod:`fiqa.data.augment_colour`; the originals' pipelines (``adaface_augment``, ``eqface_augment``,
``dali_augment``, ``QGFaceViews``) in :mod:`fiqa.data.augment_presets`.
"""

from __future__ import annotations

import cv2
import numpy as np

# --------------------------------------------------------------------------------------------------
# Training augmentations (uint8 HxWx3 RGB -> uint8 HxWx3 RGB of the same size, all randomness from
# ``rng``). Facts from the originals: AdaFace ``dataset/augmenter.py``, QGFace ``dataset/*_dataset.py``,
# EQFace ``dataset/dataset.py``, arcface_torch ``dataset.py`` (``dali_aug``); see
# shared/reference/methods_eqface_qgface_adaface.md §1.3, §2.6, §3.2 and data_and_eval.md §7.3.
# Deliberate differences from the originals (all documented per class):
# - AdaFace and QGFace run their PIL ops on BGR data, so their luma (contrast, saturation) weighs
#   the channels swapped; here the ops see RGB and use the ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B.
# - PIL/torchvision resampling filters are replaced by the closest cv2 kernel (see INTERPOLATIONS).
# --------------------------------------------------------------------------------------------------

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos4": cv2.INTER_LANCZOS4,
}
# PIL / torchvision names -> cv2 kernels (QGFace's RandomRescale draws from BICUBIC, BILINEAR,
# NEAREST, BOX, LANCZOS; PIL's BOX is an area average, as cv2's INTER_AREA when down-scaling).
_ALIASES = {"bilinear": "linear", "bicubic": "cubic", "box": "area", "lanczos": "lanczos4"}
ALL_INTERPOLATIONS = tuple(INTERPOLATIONS)  # AdaFace: NEAREST, LINEAR, AREA, CUBIC, LANCZOS4


def _check_p(owner: str, p, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.number)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _range(owner: str, name: str, value, lo: float, hi: float, integer: bool = False) -> tuple:
    """A scalar (-> (v, v)) or a 2-sequence (a, b) with lo <= a <= b <= hi."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)
        except TypeError:
            pair = ()
    ok = len(pair) == 2 and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in pair)
    if ok and integer:
        ok = all(float(v).is_integer() for v in pair)
    if not ok or not lo <= pair[0] <= pair[1] <= hi:
        kind = "int" if integer else "number"
        raise ValueError(f"{owner}: {name} must be a {kind} or a (min, max) pair within [{lo}, {hi}], got {value!r}")
    return tuple(int(v) for v in pair) if integer else tuple(float(v) for v in pair)


def _interpolations(owner: str, name: str, values) -> tuple[str, ...]:
    values = (values,) if isinstance(values, (str, int, np.integer)) else tuple(values)
    by_flag = {flag: key for key, flag in INTERPOLATIONS.items()}
    out = []
    for v in values:
        key = by_flag.get(v) if isinstance(v, (int, np.integer)) else _ALIASES.get(str(v).lower(), str(v).lower())
        if key not in INTERPOLATIONS:
            valid = sorted(INTERPOLATIONS) + sorted(_ALIASES)
            raise ValueError(f"{owner}: {name} has an unknown interpolation {v!r}; valid: {valid}")
        out.append(key)
    if not out:
        raise ValueError(f"{owner}: {name} must name at least one interpolation")
    return tuple(out)


def _image(img, owner: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"dtype {img.dtype} shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{owner}: expected a uint8 HxWx3 RGB image, got {desc}")
    return np.ascontiguousarray(img)


def _pick(values: tuple, rng: np.random.Generator):
    return values[0] if len(values) == 1 else values[int(rng.integers(len(values)))]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG encode + decode with OpenCV (libjpeg, 4:2:0) of an RGB image."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for an image of shape {img.shape}")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _crop_box(h: int, w: int, scale: tuple, ratio: tuple, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an Inception-style random resized crop (torchvision's rule).

    Up to 10 tries of area fraction ~ U(scale) and aspect w/h ~ logU(ratio), side = round(...),
    the first that fits wins (all 10 drawn at once); else a centred crop with the aspect clamped.
    """
    area = h * w * rng.uniform(scale[0], scale[1], 10)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), 10))
    cws, chs = np.rint(np.sqrt(area * aspect)), np.rint(np.sqrt(area / aspect))
    fits = (cws > 0) & (cws <= w) & (chs > 0) & (chs <= h)
    if fits.any():
        k = int(np.argmax(fits))
        ch, cw = int(chs[k]), int(cws[k])
        return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    if w / h < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class _Augment:
    """Base: with probability ``p`` apply :meth:`apply` (one ``rng.random()`` draw per call)."""

    _fields: tuple[str, ...] = ()
    p: float = 1.0

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.p > 0 and rng.random() < self.p:
            return self.apply(_image(img, type(self).__name__), rng)
        return img

    def apply(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in (*self._fields, "p") if getattr(self, k) is not None)
        return f"{type(self).__name__}({args})"


class JPEGRoundTrip(_Augment):
    """JPEG encode/decode at an integer quality ~ U{lo..hi} (or a fixed int), OpenCV's libjpeg.

    The image is encoded as BGR so that libjpeg's YCbCr sees the true colours. The default range
    (30, 95) is this framework's choice: no original samples the quality (QGFace uses a fixed 75,
    on BGR data, i.e. on swapped chroma; EQFace's unused ``random_compress`` draws 40..90).
    """

    _fields = ("quality",)

    def __init__(self, quality=(30, 95), p: float = 1.0):
        self.quality = _range("JPEGRoundTrip", "quality", quality, 1, 100, integer=True)
        self.p = _check_p("JPEGRoundTrip", p)

    def apply(self, img, rng):
        lo, hi = self.quality
        return _jpeg(img, lo if lo == hi else int(rng.integers(lo, hi + 1)))


class GaussianBlur(_Augment):
    """Gaussian blur with a window drawn from ``kernel_sizes`` and/or sigma ~ U(``sigma``).

    Defaults are arcface_torch's ``dali_aug``: window 2k+1, k in {1, 2}, sigma from the window
    by DALI's rule ``sigma = 0.3 * ((window - 1) / 2 - 1) + 0.8`` (0.8 for 3, 1.1 for 5), passed
    to OpenCV explicitly (OpenCV's own sigma=0 path uses binomial tables for windows <= 7). With
    only ``sigma`` the window is ``2 * ceil(3 sigma) + 1`` (DALI's rule). Border: reflect-101.
    """

    _fields = ("kernel_sizes", "sigma")

    def __init__(self, kernel_sizes=(3, 5), sigma=None, p: float = 1.0):
        if kernel_sizes is None and sigma is None:
            raise ValueError("GaussianBlur: give kernel_sizes, sigma or both")
        if kernel_sizes is not None:
            ks = (kernel_sizes,) if isinstance(kernel_sizes, int) else tuple(kernel_sizes)
            if not ks or not all(isinstance(k, (int, np.integer)) and k > 0 and k % 2 == 1 for k in ks):
                raise ValueError(f"GaussianBlur: kernel_sizes must be positive odd ints, got {kernel_sizes!r}")
            kernel_sizes = tuple(int(k) for k in ks)
        self.kernel_sizes = kernel_sizes
        self.sigma = None if sigma is None else _range("GaussianBlur", "sigma", sigma, 1e-3, 100.0)
        self.p = _check_p("GaussianBlur", p)

    def apply(self, img, rng):
        k = _pick(self.kernel_sizes, rng) if self.kernel_sizes else 0
        s = float(rng.uniform(*self.sigma)) if self.sigma else 0.3 * ((k - 1) / 2 - 1) + 0.8
        if k == 0:
            k = 2 * int(np.ceil(3 * s)) + 1
        return cv2.GaussianBlur(img, (k, k), s, borderType=cv2.BORDER_REFLECT_101)


class Grayscale(_Augment):
    """Luma (0.299 R + 0.587 G + 0.114 B, OpenCV rounding) replicated to 3 channels.

    torchvision's ``RandomGrayscale`` (EQFace, p=0.01) and DALI's ``hsv(saturation=0)``
    (arcface_torch, p=0.1) compute the same luma.
    """

    def __init__(self, p: float = 1.0):
        self.p = _check_p("Grayscale", p)

    def apply(self, img, rng):
        return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


class LowResolution(_Augment):
    """Down-scale, [JPEG], then back up to the input size, with random cv2 interpolations.

    The small size comes from exactly one of:
    - ``scale=(lo, hi)``: each side ``int(side * r)``, r ~ U(lo, hi) (AdaFace: (0.2, 1.0);
      QGFace's LQ view: (0.1, 0.5), i.e. 11..56 px for 112);
    - ``side_range=(lo, hi)``: a square of ``round(s)`` px, s ~ U(lo, hi) (DALI: (56, 89));
    - ``sizes=(...)``: a square of one of these sides (EQFace: 60, 80, 100).
    ``down`` / ``up``: interpolations (names or cv2 flags) drawn independently for each resize;
    ``up=None`` uses the ``down`` set. ``jpeg_quality``: a JPEG round trip at the small size
    (QGFace's ``RandomRescale(is_jpeg=True, quality=75)``). QGFace draws PIL filters (which
    anti-alias when down-scaling); the cv2 kernels used here (NEAREST/LINEAR/CUBIC/LANCZOS4 do
    not anti-alias, AREA does) are AdaFace's.
    """

    _fields = ("scale", "side_range", "sizes", "down", "up", "jpeg_quality")

    def __init__(
        self,
        scale=None,
        side_range=None,
        sizes=None,
        down=ALL_INTERPOLATIONS,
        up=None,
        jpeg_quality=None,
        p: float = 1.0,
    ):
        name = type(self).__name__
        if sum(x is not None for x in (scale, side_range, sizes)) != 1:
            raise ValueError(f"{name}: give exactly one of scale, side_range, sizes")
        self.scale = None if scale is None else _range(name, "scale", scale, 1e-3, 1.0)
        self.side_range = None if side_range is None else _range(name, "side_range", side_range, 1.0, 1e5)
        if sizes is not None:
            sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
            if not sizes or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
                raise ValueError(f"{name}: sizes must be positive ints, got {sizes!r}")
            sizes = tuple(int(s) for s in sizes)
        self.sizes = sizes
        self.down = _interpolations(name, "down", down)
        self.up = None if up is None else _interpolations(name, "up", up)
        self.jpeg_quality = None if jpeg_quality is None else _range(name, "jpeg_quality", jpeg_quality, 1, 100, True)
        self.p = _check_p(name, p)

    def apply(self, img, rng):
        h, w = img.shape[:2]
        if self.scale is not None:
            r = rng.uniform(*self.scale)
            sh, sw = max(1, int(h * r)), max(1, int(w * r))
        else:
            s = _pick(self.sizes, rng) if self.sizes else max(1, int(round(rng.uniform(*self.side_range))))
            sh = sw = s
        small = cv2.resize(img, (sw, sh), interpolation=INTERPOLATIONS[_pick(self.down, rng)])
        if self.jpeg_quality is not None:
            lo, hi = self.jpeg_quality
            small = _jpeg(small, lo if lo == hi else int(rng.integers(lo, hi + 1)))
        up = INTERPOLATIONS[_pick(self.up or self.down, rng)]
        return cv2.resize(small, (w, h), interpolation=up)


class EQFaceLowRes(LowResolution):
    """EQFace's loader: with p=0.5 resize to 60, 80 or 100 px square (cv2 default, bilinear),
    then back to the input size (bilinear; EQFace's ``Resize(112)`` after its crop)."""

    _fields = ("sizes",)

    def __init__(self, sizes=(60, 80, 100), p: float = 0.5):
        super().__init__(sizes=sizes, down="linear", up="linear", p=p)


class RandomResizedCrop(_Augment):
    """Random crop (area fraction ~ U(scale), aspect ~ logU(ratio)) resized back to the input size.

    torchvision's sampling rule (see ``_crop_box``) and its default bilinear resize. Used by
    EQFace (scale (0.95, 1), ratio (1, 1), p=0.5) and QGFace's LQ view (scale (0.8, 1), ratio
    (0.75, 1.33)).
    """

    _fields = ("scale", "ratio", "interpolation")

    def __init__(self, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="linear", p: float = 1.0):
        name = type(self).__name__
        self.scale = _range(name, "scale", scale, 1e-6, 10.0)
        self.ratio = _range(name, "ratio", ratio, 1e-3, 1e3)
        self.interpolation = _interpolations(name, "interpolation", interpolation)[0]
        self.p = _check_p(name, p)

    def apply(self, img, rng):
        h, w = img.shape[:2]
        top, left, ch, cw = _crop_box(h, w, self.scale, self.ratio, rng)
        crop = img[top : top + ch, left : left + cw]
        return cv2.resize(crop, (w, h), interpolation=INTERPOLATIONS[self.interpolation])


class RandomCropPad(_Augment):
    """AdaFace's crop: a random-resized-crop box kept **in place** on a black canvas (no resize).

    Box from torchvision's rule with AdaFace's scale (0.2, 1) and ratio (3/4, 4/3); everything
    outside the box becomes 0.
    """

    _fields = ("scale", "ratio")

    def __init__(self, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), p: float = 1.0):
        self.scale = _range("RandomCropPad", "scale", scale, 1e-6, 1.0)
        self.ratio = _range("RandomCropPad", "ratio", ratio, 1e-3, 1e3)
        self.p = _check_p("RandomCropPad", p)

    def apply(self, img, rng):
        top, left, ch, cw = _crop_box(img.shape[0], img.shape[1], self.scale, self.ratio, rng)
        out = np.zeros_like(img)
        out[top : top + ch, left : left + cw] = img[top : top + ch, left : left + cw]
        return out


class Rotate(_Augment):
    """Rotation about the image centre by an angle ~ U(-degrees, degrees) (or U(lo, hi)),
    counter-clockwise for positive angles, same size, ``fill`` outside (torchvision's
    ``RandomRotation`` defaults: nearest, fill 0). QGFace's LQ view: 45 (.rec) or 30 (folders)."""

    _fields = ("degrees", "interpolation", "fill")

    def __init__(self, degrees=45.0, interpolation="nearest", fill: int = 0, p: float = 1.0):
        if isinstance(degrees, (int, float, np.number)) and not isinstance(degrees, bool) and degrees >= 0:
            degrees = (-degrees, degrees)
        self.degrees = _range("Rotate", "degrees", degrees, -360.0, 360.0)
        self.interpolation = _interpolations("Rotate", "interpolation", interpolation)[0]
        if isinstance(fill, bool) or not isinstance(fill, (int, np.integer)) or not 0 <= fill <= 255:
            raise ValueError(f"Rotate: fill must be an int in [0, 255], got {fill!r}")
        self.fill = int(fill)
        self.p = _check_p("Rotate", p)

    def apply(self, img, rng):
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), float(rng.uniform(*self.degrees)), 1.0)
        flags = INTERPOLATIONS[self.interpolation]
        return cv2.warpAffine(img, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=(self.fill,) * 3)
