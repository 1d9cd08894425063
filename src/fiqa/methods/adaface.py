"""AdaFace (Kim et al., CVPR 2022): CE on the quality-adaptive margin logits (heads/adaface.py);
quality = the raw embedding's norm (FaceModule's default), the norm the margin adapts to.

Inputs are BGR, ``(x/255 - 0.5)/0.5`` (``conf/method/adaface.yaml`` sets ``data.color``), with
AdaFace's augmentation (``augment=adaface``). The original's optimiser puts weight decay on every
parameter except those of BatchNorm layers; fiqa's ``optim.no_decay_bn`` exempts all 1-D parameters,
so PReLU slopes and the embedding Linear's bias also go without decay here (see the method config).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fiqa.heads.adaface import AdaFaceHead, AdaFaceOutput
from fiqa.heads.partial_fc import cross_entropy
from fiqa.methods.base import FaceModule
from fiqa.types import BackboneOutput


class AdaFace(FaceModule):
    """Subclass hook: :meth:`sample_weights` (per-sample factors on the CE terms, e.g. a quality gate)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        **face_module_args,
    ):
        if head is not None and not isinstance(head, AdaFaceHead):
            raise ValueError(f"method=adaface needs head=adaface (AdaFaceHead), got {type(head).__name__}")
        super().__init__(backbone, head, **face_module_args)

    def sample_weights(self, head_out: AdaFaceOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-sample weights (B,) of the CE terms, or None (AdaFace: plain mean CE). With weights
        the loss is ``mean(w * ce)`` (divided by B, not by the sum of the weights)."""
        return None

    def classification_loss(self, head_out: AdaFaceOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["label"]
        w = self.sample_weights(head_out, batch)
        if w is None:
            return cross_entropy(head_out, labels)
        if head_out.partial is not None:
            raise ValueError("per-sample loss weights (sample_weights) are not supported with head.fc=partial")
        return (w.float() * F.cross_entropy(head_out.logits, labels, reduction="none")).mean()

    def losses(self, out: BackboneOutput, batch: Mapping[str, torch.Tensor]) -> dict:
        head_out = self.head(out.embedding, batch["label"])
        self.log_dict(
            {
                "train/norm": head_out.norm.mean(),
                "train/norm_ema_mean": self.head.batch_mean[0],
                "train/norm_ema_std": self.head.batch_std[0],
                "train/ms": head_out.ms.mean(),
            },
            batch_size=batch["label"].shape[0],
        )
        return {"id": self.classification_loss(head_out, batch)}
