"""Score images with any model: ``fiqa.quality.score(images, model) -> qualities``.

``images``: a uint8 array ``(N, H, W, 3)`` or one ``(H, W, 3)`` image, RGB; a list of image paths; a
path (directory, ``.rec``, ``.bin`` or list file, see :mod:`fiqa.data.sources`); or any reader yielding
``(uint8 RGB, label, meta)``. ``model``: a :class:`~fiqa.methods.base.FaceModule` or a checkpoint path
(ours, or an original's released one through :mod:`fiqa.interop`; ``quality_path=`` for a two-file
release such as EQFace's ``backbone.pth`` + ``quality.pth``). The model's input convention (channel
order, normalisation: ``model.input_convention``, set by whatever built the model) is applied, so a BGR
model (MagFace, AdaFace, QGFace) gets BGR; a model without one is an error, never a guess. The quality
is the model's own (``FaceOutput.quality``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from fiqa.data.transforms import ToModelInput

__all__ = ["ArrayImages", "input_convention_of", "input_transform", "score", "score_reader"]

CONVENTION_KEYS = ("color", "mean", "std")


class ArrayImages:
    """A uint8 (N, H, W, 3) RGB array as a reader."""

    def __init__(self, images: np.ndarray):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3) RGB, got {images.dtype} {images.shape}")
        self.images = images
        self.keys = [str(i) for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], 0, {"index": i}


def input_convention_of(model) -> dict:
    """``model.input_convention`` (``{"color", "mean", "std"}``), checked; the one place every path
    (task=quality|eval|compare|export, ``fiqa.quality.score``) reads it from."""
    conv = getattr(model, "input_convention", None)
    if not conv:
        raise ValueError(
            f"{type(model).__name__} has no input_convention (channel order and normalisation), so it cannot be "
            f"fed: load models with fiqa.methods.loading.load_model(path) or "
            f"fiqa.methods.released.to_face_module(released), "
            f"or build them with fiqa.methods.loading.build_method(cfg); for a module made by hand set "
            f"model.input_convention = {{'color': 'rgb' or 'bgr', 'mean': 127.5, 'std': 127.5}}"
        )
    missing = [k for k in CONVENTION_KEYS if k not in conv]
    if missing:
        raise ValueError(f"{type(model).__name__}.input_convention={conv!r} lacks {missing} (keys: {CONVENTION_KEYS})")
    return dict(conv)


def input_transform(model) -> ToModelInput:
    """The model's input convention as a transform (uint8 RGB -> its input tensor)."""
    conv = input_convention_of(model)
    return ToModelInput(conv["color"], conv["mean"], conv["std"])


class _Scored(torch.utils.data.Dataset):
    def __init__(self, reader, transform):
        self.reader, self.transform = reader, transform

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        img, _, _ = self.reader[i]
        return self.transform(img), i


def score_reader(
    model,
    reader,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    return_embeddings: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(qualities (N,), embeddings (N, D) or None)`` of every image of ``reader``, in order."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    was_training = model.training
    model.eval().to(device)
    loader = DataLoader(_Scored(reader, input_transform(model)), batch_size=batch_size, num_workers=num_workers)
    qualities, embeddings = np.empty(len(reader), np.float64), None
    bar = _progress(progress, len(reader))
    try:
        with torch.no_grad():
            for images, idx in loader:
                out = model(images.to(device, non_blocking=True))
                qualities[idx.numpy()] = out.quality.float().view(-1).cpu().numpy()
                if return_embeddings:
                    e = out.embedding.float().cpu().numpy()
                    if embeddings is None:
                        embeddings = np.empty((len(reader), e.shape[1]), np.float32)
                    embeddings[idx.numpy()] = e
                if bar is not None:
                    bar[0].update(bar[1], advance=len(idx))
    finally:
        if bar is not None:
            bar[0].stop()
        model.train(was_training)
    return qualities, embeddings


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    p.start()
    return p, p.add_task("score", total=total)


def _as_reader(images: Any):
    from fiqa.data.sources import FileSource, open_source

    if isinstance(images, np.ndarray):
        return ArrayImages(images)
    if isinstance(images, (str, os.PathLike)):
        return open_source(images)
    if isinstance(images, Sequence) and images and isinstance(images[0], (str, os.PathLike)):
        paths = [os.fspath(p) for p in images]
        return FileSource(paths, paths, "a list of paths")
    if hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        return images
    raise TypeError(f"images: expected a uint8 array, a path, a list of paths or a reader, got {type(images).__name__}")


def score(
    images: Any,
    model: Any,
    batch_size: int = 64,
    device: str | None = None,
    quality_path: str | os.PathLike | None = None,
    ckpt_format: str = "auto",
    trust_checkpoint: bool = False,
    **kwargs,
) -> np.ndarray:
    """The quality of every image (higher = better), with ``model``'s input convention.

    ``model`` a path: loaded as task=quality loads ``ckpt_path`` (``ckpt_format``, ``trust_checkpoint``,
    and ``quality_path`` for EQFace's ``quality.pth``, without which an EQFace backbone is refused)."""
    if isinstance(model, (str, os.PathLike)):
        from fiqa.methods.loading import load_model

        model = load_model(
            os.fspath(model),
            trust_checkpoint=trust_checkpoint,
            ckpt_format=ckpt_format,
            quality_path=None if quality_path is None else os.fspath(quality_path),
        )
    elif quality_path is not None:
        raise ValueError("quality_path= goes with a checkpoint path, not with a model object (load it with it)")
    q, _ = score_reader(model, _as_reader(images), batch_size=batch_size, device=device, **kwargs)
    return q
