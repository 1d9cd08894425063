"""The originals' augmentation pipelines, selected by the ``augment`` config group: :func:`adaface_augment`,
:func:`eqface_augment`, :func:`dali_augment` (arcface_torch) return them (before the flip and
:class:`~fiqa.data.transforms.ToModelInput`) with their probabilities as defaults; :class:`QGFaceViews`
returns QGFace's two views."""

from __future__ import annotations

import numpy as np

from fiqa.data.augment import (
    ALL_INTERPOLATIONS,
    EQFaceLowRes,
    GaussianBlur,
    Grayscale,
    LowResolution,
    RandomCropPad,
    RandomResizedCrop,
    Rotate,
    _image,
)
from fiqa.data.augment_colour import HueSaturation, Photometric
from fiqa.data.transforms import Compose, RandomHorizontalFlip


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
