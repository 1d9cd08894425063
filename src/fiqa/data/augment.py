"""Training augmentations: uint8 HxWx3 RGB -> uint8 HxWx3 RGB of the same size, ``t(img, rng)``.

All randomness comes from ``rng`` (see :mod:`fiqa.data.transforms` for the convention):
:class:`JPEGRoundTrip`, :class:`GaussianBlur`, :class:`Grayscale`, :class:`LowResolution`
(:class:`EQFaceLowRes`), :class:`RandomResizedCrop`, :class:`RandomCropPad`, :class:`Photometric`,
:class:`HueSaturation`, :class:`Rotate`; each has a probability ``p``. :class:`QGFaceViews` returns two
views. The presets :func:`adaface_augment`, :func:`eqface_augment` and :func:`dali_augment` return the
originals' pipelines (before the flip and :class:`~fiqa.data.transforms.ToModelInput`) with their
probabilities as defaults; the ``augment`` config group selects them.
"""

from __future__ import annotations

import cv2
import numpy as np

from fiqa.data.transforms import Compose, RandomHorizontalFlip

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
# YIQ (FCC NTSC): Y = luma; I, Q are chroma axes whose rows sum to 0 (invariant to adding gray).
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


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


def _jitter(owner: str, name: str, value, center: float, lo: float, hi: float) -> tuple | None:
    """ColorJitter's argument rule: v >= 0 -> (max(center - v, lo), center + v); a (min, max) pair
    is kept. None when it is the identity (the op is then skipped and draws nothing)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{owner}: {name} must be >= 0, got {value!r}")
        value = (max(center - value, lo), center + value)
    pair = _range(owner, name, value, lo, hi)
    return None if pair == (center, center) else pair


class Photometric(_Augment):
    """ColorJitter(brightness, contrast, saturation, hue) in a random order (AdaFace, QGFace).

    Factors as torchvision: a value v gives a factor ~ U(max(0, 1 - v), 1 + v) (hue: a shift
    ~ U(-v, v) turns, v <= 0.5); a (lo, hi) pair is used as is. Ops on float RGB, each clipped to
    [0, 255]: brightness x*f; contrast mean + f (x - mean) with mean the image's mean luma;
    saturation luma + f (x - luma); hue a rotation of HSV hue. Rounded to uint8 once, at the end
    (PIL rounds after each op). AdaFace: 0.5, 0.5, 0.5, 0; QGFace's LQ view: 0.2, 0.2, 0.2, 0.
    """

    _fields = ("brightness", "contrast", "saturation", "hue")

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p: float = 1.0):
        self.brightness = _jitter("Photometric", "brightness", brightness, 1.0, 0.0, np.inf)
        self.contrast = _jitter("Photometric", "contrast", contrast, 1.0, 0.0, np.inf)
        self.saturation = _jitter("Photometric", "saturation", saturation, 1.0, 0.0, np.inf)
        self.hue = _jitter("Photometric", "hue", hue, 0.0, -0.5, 0.5)
        self.p = _check_p("Photometric", p)

    def apply(self, img, rng):
        order = rng.permutation(4)
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        factors = [None if r is None else float(rng.uniform(*r)) for r in ranges]
        x = img.astype(np.float32)
        for i in order:
            f = factors[i]
            if f is None:
                continue
            if i == 0:
                x *= f
            elif i == 1:
                m = float(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).mean())
                x = (x - m) * f + m
            elif i == 2:
                g = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[:, :, None]
                x = (x - g) * f + g
            else:
                hsv = cv2.cvtColor(x * np.float32(1 / 255), cv2.COLOR_RGB2HSV)  # H in degrees
                hsv[:, :, 0] = (hsv[:, :, 0] + 360.0 * f) % 360.0
                x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * np.float32(255)
            np.clip(x, 0, 255, out=x)
        return np.rint(x).astype(np.uint8)


class HueSaturation(_Augment):
    """DALI's ``hsv`` as arcface_torch's ``dali_aug`` uses it: hue shift ~ U(hue) degrees and
    saturation factor ~ U(saturation), as DALI does it, one linear map of RGB: to YIQ, rotate
    (I, Q) by the hue angle, scale them by the saturation, back (uint8 rounding and clipping)."""

    _fields = ("hue", "saturation")

    def __init__(self, hue=(0.0, 20.0), saturation=(1.0, 1.2), p: float = 1.0):
        self.hue = _range("HueSaturation", "hue", hue, -360.0, 360.0)
        self.saturation = _range("HueSaturation", "saturation", saturation, 0.0, 100.0)
        self.p = _check_p("HueSaturation", p)

    @staticmethod
    def matrix(hue_degrees: float, saturation: float) -> np.ndarray:
        c, s = np.cos(np.deg2rad(hue_degrees)), np.sin(np.deg2rad(hue_degrees))
        yiq = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]) * np.array([1.0, saturation, saturation])[:, None]
        return _YIQ2RGB @ yiq @ _RGB2YIQ

    def apply(self, img, rng):
        m = self.matrix(rng.uniform(*self.hue), rng.uniform(*self.saturation))
        return cv2.transform(img, m)


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


class QGFaceViews:
    """QGFace's two views of one image: ``(low_quality_view, high_quality_view)``, uint8 HxWx3.

    LQ (``ContrastDataset`` on .rec): LowResolution(scale (0.1, 0.5), JPEG 75, always) ->
    RandomResizedCrop(scale (0.8, 1), ratio (0.75, 1.33), p=crop_p) -> Photometric(0.2, 0.2,
    0.2, 0, p=photometric_p) -> Rotate(45, p=rotation_p) -> flip. HQ: flip only. QGFace's
    configs are missing from its repository, so crop_p, photometric_p and rotation_p are not
    known: 0.2 is chosen here (QGFace's image-folder variant hard-codes 0.2 for all three, and
    AdaFace's scripts use 0.2). The image-folder variant is ``scale=(0.1, 0.2), jpeg_quality=None,
    crop_scale=(0.8, 1.2), rotation=30``. The flips are independent draws (one per view).
    """

    def __init__(
        self,
        scale=(0.1, 0.5),
        jpeg_quality=75,
        crop_scale=(0.8, 1.0),
        crop_ratio=(0.75, 1.33),
        crop_p: float = 0.2,
        photometric=0.2,
        photometric_p: float = 0.2,
        rotation=45.0,
        rotation_p: float = 0.2,
        flip_p: float = 0.5,
    ):
        self.low = Compose(
            [
                LowResolution(scale=scale, jpeg_quality=jpeg_quality, p=1.0),
                RandomResizedCrop(scale=crop_scale, ratio=crop_ratio, p=crop_p),
                Photometric(photometric, photometric, photometric, 0.0, p=photometric_p),
                Rotate(rotation, p=rotation_p),
                RandomHorizontalFlip(flip_p),
            ]
        )
        self.high = Compose([RandomHorizontalFlip(flip_p)])

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        img = _image(img, "QGFaceViews")
        return self.low(img, rng), self.high(img, rng)

    def __repr__(self) -> str:
        return f"QGFaceViews(low={self.low!r}, high={self.high!r})"


def adaface_augment(crop_p: float = 0.2, low_res_p: float = 0.2, photometric_p: float = 0.2) -> Compose:
    """AdaFace's training augmentation (before flip): crop-pad, low resolution, photometric."""
    return Compose(
        [
            RandomCropPad(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), p=crop_p),
            LowResolution(scale=(0.2, 1.0), down=ALL_INTERPOLATIONS, up=ALL_INTERPOLATIONS, p=low_res_p),
            Photometric(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.0, p=photometric_p),
        ]
    )


def eqface_augment(low_res_p: float = 0.5, crop_p: float = 0.5, grayscale_p: float = 0.01) -> Compose:
    """EQFace's training augmentation (before flip): 60/80/100 px low resolution, a near-full
    square crop, rare grayscale. EQFace crops the low-res image and then up-scales; here the
    low-res image is up-scaled first (the crop keeps >= 95 % of the area either way)."""
    return Compose(
        [
            EQFaceLowRes(sizes=(60, 80, 100), p=low_res_p),
            RandomResizedCrop(scale=(0.95, 1.0), ratio=(1.0, 1.0), p=crop_p),
            Grayscale(p=grayscale_p),
        ]
    )


def dali_augment(resize_p: float = 0.1, blur_p: float = 0.2, hsv_p: float = 0.2, grayscale_p: float = 0.1) -> Compose:
    """arcface_torch's ``dali_aug`` (before flip): resize to U(56, 89) px and back (DALI: linear
    with anti-aliasing; here AREA down, LINEAR up), blur window 3 or 5, hue U(0, 20) degrees and
    saturation U(1, 1.2), grayscale."""
    return Compose(
        [
            LowResolution(side_range=(56, 89), down="area", up="linear", p=resize_p),
            GaussianBlur(kernel_sizes=(3, 5), p=blur_p),
            HueSaturation(hue=(0.0, 20.0), saturation=(1.0, 1.2), p=hsv_p),
            Grayscale(p=grayscale_p),
        ]
    )
