"""Colour augmentations (uint8 HxWx3 RGB -> same, all randomness from ``rng``): :class:`Photometric`
(torchvision-style brightness / contrast / saturation / hue jitter, AdaFace's and QGFace's) and
:class:`HueSaturation` (arcface_torch's DALI ``hsv``). The ops see RGB and use the ITU-R 601 luma
0.299 R + 0.587 G + 0.114 B (AdaFace and QGFace run PIL on BGR data: their luma weighs the channels swapped)."""

from __future__ import annotations

import cv2
import numpy as np

from fiqa.data.augment import _Augment, _check_p, _range

# YIQ (FCC NTSC): Y = luma; I, Q are chroma axes whose rows sum to 0 (invariant to adding gray).
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


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
