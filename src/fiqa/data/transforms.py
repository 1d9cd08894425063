"""Transforms: reader output (uint8 HxWx3 RGB) -> model input (float CHW in [-1, 1]).

The channel order fed to the network is an explicit data key (``data.color: rgb|bgr``),
applied here and nowhere else: readers always yield RGB.

Calling convention (every transform here): ``t(img, rng) -> img`` where ``img`` is uint8
HxWx3 **RGB** and ``rng`` a ``numpy.random.Generator``. All randomness comes from ``rng``, so a
pipeline is reproducible: :class:`fiqa.data.datamodule.FaceDataset` hands each DataLoader worker
its own generator seeded from ``torch.initial_seed()`` (which Lightning's
``seed_everything(workers=True)`` derives from the run seed, the rank and the worker id).
:class:`ToModelInput` (the last step) ignores ``rng``.

The training augmentations (:mod:`fiqa.data.augment`) follow the same convention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

COLORS = ("rgb", "bgr")


class Compose:
    """Apply transforms in order, passing the same generator to each (uint8 HxWx3 -> ... )."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img, rng: np.random.Generator | None = None):
        rng = np.random.default_rng() if rng is None else rng
        for t in self.transforms:
            img = t(img, rng)
        return img

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomHorizontalFlip:
    """Flip a uint8 HxWx3 image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"data.flip must be a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.p > 0 and rng.random() < self.p:
            return img[:, ::-1]
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ToModelInput:
    """uint8 HxWx3 RGB -> float32 CHW tensor ``(x - mean) / std`` in the channel order ``color``.

    Defaults give the InsightFace normalisation (x - 127.5) / 127.5 = (x/255 - 0.5)/0.5.
    """

    def __init__(self, color: str = "rgb", mean: float = 127.5, std: float = 127.5):
        if color not in COLORS:
            raise ValueError(f"data.color must be one of {list(COLORS)}, got {color!r}")
        self.color, self.mean, self.std = color, float(mean), float(std)

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected a uint8 HxWx3 image, got dtype {img.dtype} shape {img.shape}")
        if self.color == "bgr":
            img = img[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
        return x.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"ToModelInput(color={self.color!r}, mean={self.mean}, std={self.std})"


def to_uint8_image(x: torch.Tensor, color: str = "rgb", mean: float = 127.5, std: float = 127.5) -> np.ndarray:
    """Inverse of :class:`ToModelInput` for one CHW tensor: back to uint8 HxWx3 **RGB**."""
    img = (x.detach().cpu().float() * std + mean).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(img[:, :, ::-1] if color == "bgr" else img)
