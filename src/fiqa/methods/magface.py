"""MagFace (Meng et al., CVPR 2021): quality = the magnitude of the raw embedding.

Loss = CE(MagLinear logits) + lambda_g * mean g(a) (heads/magface.py). Quality is ``||x||`` of the
eval-mode BN1d output of the unflipped image, as MagFace's ``gen_feat`` (``quality_flip=true``
averages the magnitudes of the image and its mirror instead: documented, off by default). Inputs are
BGR scaled to [0, 1] (``conf/method/magface.yaml`` sets ``data.color``/``data.normalize_*``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fiqa.heads.magface import MagFaceHead, feasibility_bound, magnitude_regularizer
from fiqa.heads.partial_fc import cross_entropy
from fiqa.methods.base import FaceModule
from fiqa.types import BackboneOutput, FaceOutput
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


class MagFace(FaceModule):
    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        *,
        lambda_g: float = 35.0,
        quality_flip: bool = False,
        **face_module_args,
    ):
        super().__init__(backbone, head, **face_module_args)
        if head is not None and not isinstance(head, MagFaceHead):
            raise ValueError(f"method=magface needs head=magface (MagLinear), got {type(head).__name__}")
        self.lambda_g, self.quality_flip = float(lambda_g), bool(quality_flip)
        if head is not None:
            bound = feasibility_bound(head.s, head.l_a, head.u_a, head.l_m, head.u_m)
            self.feasibility_bound = bound
            msg = (
                f"MagFace: lambda_g={self.lambda_g:g}, feasibility bound s*k*u_a^2*l_a^2/(u_a^2-l_a^2) = {bound:.2f} "
                f"(s={head.s:g}, l_a={head.l_a:g}, u_a={head.u_a:g}, l_m={head.l_m:g}, u_m={head.u_m:g})"
            )
            if self.lambda_g < bound:
                log.warning(msg + ": lambda_g is below it, so the magnitude is not guaranteed to order quality")
            else:
                log.info(msg)

    def forward(self, images: torch.Tensor) -> FaceOutput:
        out = self.embed(images)
        q = self.quality(out)
        if self.quality_flip:
            q = 0.5 * (q + self.quality(self.embed(images.flip(3))))
        return FaceOutput(embedding=out.embedding, quality=q)

    def losses(self, out: BackboneOutput, batch: Mapping[str, torch.Tensor]) -> dict:
        labels = batch["label"]
        head_out = self.head(out.embedding, labels)
        g = magnitude_regularizer(head_out.norm, self.head.u_a).mean()
        self.log_dict(
            {"train/magnitude": out.embedding.detach().float().norm(dim=1).mean(), "train/mag_g": g.detach()},
            batch_size=labels.shape[0],
        )
        return {"id": cross_entropy(head_out, labels), "g": self.lambda_g * g}
