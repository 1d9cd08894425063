"""GraFIQs (Kolf et al., CVPR Workshops 2024): training-free quality of any trained FR model with
BatchNorm2d layers, from the gradient of its Batch-Normalisation-statistics discrepancy
(``fiqa.quality.grafiqs``, where the facts and their sources are listed).

quality = ``-sum |dL/dphi|`` (the magnitude is read as an uncertainty: lower = better, so it is negated;
``quality.negate=false`` reports the raw magnitude, see the sign note in ``fiqa.quality.grafiqs``);
``phi`` is ``quality.wrt``: ``image``, ``block1..block4`` (the outputs of the four residual stages, as the
original ``extract_grafiqs.py``) or ``params`` (all backbone weights, as the paper's text; one image at a
time, slow). The embedding used for matching is the ordinary deterministic one.

    python main.py task=eval ckpt_path=<FR model> quality=grafiqs val=[lfw] [quality.wrt=image]
    python main.py task=compare ... (any quality source list that names grafiqs)
"""

from __future__ import annotations

import contextlib

import torch

from fiqa.methods.base import FaceModule
from fiqa.methods.wrappers import QualityWrapper
from fiqa.quality.grafiqs import STAGES, WRT, bn_layers, gradient_magnitude, stage_modules
from fiqa.types import FaceOutput


class GraFIQs(QualityWrapper):
    source = "grafiqs"

    def __init__(self, model: FaceModule, wrt: str = "block2", chunk: int = 0, negate: bool = True):
        super().__init__(model)
        if wrt not in WRT:
            raise ValueError(f"quality.wrt={wrt!r} is not valid; choose one of {list(WRT)}")
        bn_layers(self.backbone)  # a clear error now for a backbone without BatchNorm2d
        if wrt in STAGES:
            stage_modules(self.backbone)  # ... and for one without four stages
        self.wrt, self.chunk, self.negate = wrt, int(chunk), bool(negate)

    def forward(self, images: torch.Tensor) -> FaceOutput:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        # a compiled backbone (trainer.compile) runs eager here, as FaceModule.embed does outside training
        eager = torch.compiler.set_stance("force_eager") if self.compiled_backbone else contextlib.nullcontext()
        with eager:
            embedding, magnitude = gradient_magnitude(self.backbone, images, self.wrt, chunk=self.chunk)
        return FaceOutput(embedding=embedding, quality=-magnitude if self.negate else magnitude)
