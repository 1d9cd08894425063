"""Quality sources applied to a trained FR model at evaluation time (the ``quality`` config group):
the model's embeddings are kept, only its quality is replaced.

``quality=own`` (default) keeps the model's quality; ``quality=norm`` takes the embedding
magnitude (MagFace's quality; a baseline for any model); ``quality=serfiq`` runs SER-FIQ on the
model (``fiqa.methods.serfiq``); ``quality=random`` is the chance baseline of ERC plots."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fiqa.methods.base import FaceModule
from fiqa.types import BackboneOutput


class QualityWrapper(FaceModule):
    """A FaceModule that shares ``model``'s backbone (and head) and replaces ``quality``."""

    source = "wrapped"

    def __init__(self, model: FaceModule):
        super().__init__(
            model.backbone, model.head, None, model.val_sets, None, channels_last=getattr(model, "channels_last", True)
        )
        self.input_convention = getattr(model, "input_convention", None)
        self.source_config = getattr(model, "source_config", None)
        self.wrapped_name = type(model).__name__

    def losses(self, out, batch):
        raise RuntimeError(f"quality={self.source} is an evaluation-time quality source: it is not trained")


class NormQuality(QualityWrapper):
    """Quality = ``||embedding||`` (the raw, un-normalised embedding)."""

    source = "norm"

    def quality(self, out: BackboneOutput) -> torch.Tensor:
        return out.embedding.float().norm(dim=1)


class RandomQuality(QualityWrapper):
    """Quality ~ U(0, 1), seeded per image batch order: the chance line of an ERC plot."""

    source = "random"

    def __init__(self, model: FaceModule, seed: int = 0):
        super().__init__(model)
        self.generator = torch.Generator().manual_seed(int(seed))

    def quality(self, out: BackboneOutput) -> torch.Tensor:
        n = out.embedding.shape[0]
        return torch.rand(n, generator=self.generator).to(out.embedding.device)


#: training-free quality sources that observe an FR model (``task=compare`` / ``task=benchmark`` source names):
#: name -> the QualityWrapper class, built as ``cls(fr_model, **<task>.<name>)``
OBSERVERS = {
    "serfiq": "fiqa.methods.serfiq.SERFIQ",
    "grafiqs": "fiqa.methods.grafiqs.GraFIQs",
    "froq": "fiqa.methods.froq.FROQ",
    "iso": "fiqa.methods.iso.IsoQuality",
}


def observer(name: str, model, params: Mapping | None = None):
    """The training-free source ``name`` (:data:`OBSERVERS`) on FR ``model``, in eval mode, with ``params``."""
    import importlib

    if name not in OBSERVERS:
        raise ValueError(f"{name!r} is not a training-free quality source; choose one of {sorted(OBSERVERS)}")
    module, cls = OBSERVERS[name].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(model, **dict(params or {})).eval()
