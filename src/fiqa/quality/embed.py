"""Embeddings and qualities of a whole val set with one model, outside Lightning (``task=compare``,
``task=benchmark``): the same numbers as a validation pass (``FaceModule.validation_step``): each model
is fed in its own input convention, the embedding is the sum of the raw embeddings of the image and its
mirror when the set says ``flip``, and the qualities are of the unflipped image."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from fiqa.quality.scoring import input_convention_of

__all__ = ["SetOutputs", "embed_set", "to_input"]


def to_input(images: torch.Tensor, conv: Mapping) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB -> float (B, 3, H, W) in a model's input convention."""
    x = images.flip(-1) if conv.get("color", "rgb") == "bgr" else images
    return (x.permute(0, 3, 1, 2).float() - float(conv.get("mean", 127.5))) / float(conv.get("std", 127.5))


class _Raw(torch.utils.data.Dataset):
    def __init__(self, reader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.ascontiguousarray(self.reader[i][0])), i


class SetOutputs(dict):
    """``{"embeddings": (N, D) float32 or absent, "own": (N,), "norm": (N,), <source>: (N,)}``."""


@torch.no_grad()
def embed_set(
    dataset,
    model=None,
    flip: bool = True,
    others: Mapping[str, torch.nn.Module] | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> SetOutputs:
    """One pass over ``dataset`` (a reader yielding ``(uint8 RGB, ...)``). With ``model``: its flip-fused
    raw embeddings (``embeddings``), its own quality (``own``) and the norm of the unflipped embedding
    (``norm``). ``others``: ``{name: model}`` whose own quality of each image is wanted (another model's
    quality, SER-FIQ on the FR model, ...), each in its own input convention. ``progress``: a label for a
    progress bar (rich, when stderr is a terminal)."""
    others = dict(others or {})
    n = len(dataset)
    out = SetOutputs({name: np.empty(n, np.float64) for name in others})
    if model is not None:
        out["own"], out["norm"] = np.empty(n, np.float64), np.empty(n, np.float64)
        conv = input_convention_of(model)
    convs = {name: input_convention_of(m) for name, m in others.items()}
    loader = DataLoader(_Raw(dataset), batch_size=batch_size, num_workers=num_workers)
    for images, idx in _progress(loader, progress):
        at = idx.numpy()
        if model is not None:
            x = to_input(images, conv).to(device)
            o = model(x)
            e = o.embedding.float()
            out["own"][at] = o.quality.float().view(-1).cpu().numpy()
            out["norm"][at] = e.norm(dim=1).cpu().numpy()
            if flip:
                e = e + model(x.flip(3)).embedding.float()
            if "embeddings" not in out:
                out["embeddings"] = np.empty((n, e.shape[1]), np.float32)
            out["embeddings"][at] = e.cpu().numpy()
        for name, m in others.items():
            out[name][at] = m(to_input(images, convs[name]).to(device)).quality.float().view(-1).cpu().numpy()
    return out


def _progress(loader, label: str | None):
    import sys

    if not label or not sys.stderr.isatty():
        yield from loader
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=len(loader))
        for batch in loader:
            yield batch
            bar.advance(task)
