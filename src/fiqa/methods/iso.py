"""``quality=iso``: the ISO/IEC 29794-5 component measures (:mod:`fiqa.quality.iso`) as a quality source
beside the learned ones: the FR model's embeddings are kept, the quality is computed from the pixels.

The images reach a model in its input convention (normalised, RGB or BGR); they are turned back into
uint8 RGB crops and measured as ArcFace-aligned crops (:func:`~fiqa.quality.iso.measure_aligned`: the
appearance components; the geometric ones were fixed by the alignment). The quality is
:func:`~fiqa.quality.iso.combine` of the 0-100 components (``combine``: min | mean; ``components``:
recognition | all | a list of names).

    python main.py task=compare ckpt_path=<FR model> val=[synth] compare.sources=[own,iso,serfiq,random]
    python main.py task=quality quality=iso score.input=<photos> score.detect=true   # no model needed
"""

from __future__ import annotations

import numpy as np
import torch

from fiqa.methods.base import FaceModule
from fiqa.methods.wrappers import QualityWrapper
from fiqa.quality import iso
from fiqa.types import FaceOutput


def to_uint8_rgb(images: torch.Tensor, conv) -> np.ndarray:
    """The inverse of :func:`fiqa.quality.embed.to_input`: float (B, 3, H, W) in a model's input convention
    -> uint8 (B, H, W, 3) RGB."""
    conv = conv or {}
    x = images.detach().float().cpu() * float(conv.get("std", 127.5)) + float(conv.get("mean", 127.5))
    x = x.permute(0, 2, 3, 1)
    if conv.get("color", "rgb") == "bgr":
        x = x.flip(-1)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


class IsoQuality(QualityWrapper):
    """ISO/IEC 29794-5 components of each (aligned) image, combined into one quality (0-100)."""

    source = "iso"

    def __init__(self, model: FaceModule, combine: str = "min", components="recognition"):
        super().__init__(model)
        if combine not in iso.COMBINE:
            raise ValueError(f"quality.combine={combine!r} is not a choice; valid choices: {list(iso.COMBINE)}")
        if not isinstance(components, str):
            components = [str(c) for c in components]
        iso.combine(np.zeros((1, len(iso.NAMES))), combine, components)  # a clear error now for a bad name
        self.how, self.components = combine, components

    def iso_quality(self, images: torch.Tensor) -> torch.Tensor:
        crops = to_uint8_rgb(images, self.input_convention)
        raw = np.stack([iso.measure_aligned(c) for c in crops])
        q = iso.combine(iso.component_scores(raw), self.how, self.components)
        return torch.from_numpy(q.astype(np.float32)).to(images.device)

    def forward(self, images: torch.Tensor) -> FaceOutput:
        out = self.embed(images)
        return FaceOutput(embedding=out.embedding, quality=self.iso_quality(images))
