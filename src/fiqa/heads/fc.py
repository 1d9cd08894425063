"""Margin heads: normalised class centres (C, D) and a margin function of the cosines."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fiqa.heads import margins


@dataclass
class HeadOutput:
    logits: torch.Tensor  # (B, C) scaled, margin applied to the targets (float32)
    cosine: torch.Tensor  # (B, C) pre-margin cosines (float32), e.g. for CR-FIQA's targets
    norm: torch.Tensor | None = None  # (B,) the magnitude a head used (MagFace: clamped ||x||)


class MarginHead(nn.Module):
    """``weight`` (C, D) class centres, N(0, 0.01) as arcface_torch; ``forward(embedding,
    labels) -> HeadOutput``. Subclasses choose the margin; margins are config values."""

    def __init__(self, num_classes: int, embedding_dim: int, s: float = 64.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"head.num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.embedding_dim, self.s = int(num_classes), int(embedding_dim), float(s)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embedding.float(), dim=1), F.normalize(self.weight.float(), dim=1)).clamp(-1, 1)

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        cos = self.cosine(embedding)
        return HeadOutput(logits=self.margin(cos, labels), cosine=cos)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, s={self.s}"


class ArcFaceHead(MarginHead):
    """ArcFace, s=64, m=0.5."""

    def __init__(self, num_classes: int, embedding_dim: int, s: float = 64.0, margin: float = 0.5):
        super().__init__(num_classes, embedding_dim, s)
        self.margin_value = float(margin)
        self.margin = partial(margins.arcface, s=self.s, margin=self.margin_value)


class CosFaceHead(MarginHead):
    """CosFace, s=64, m=0.4."""

    def __init__(self, num_classes: int, embedding_dim: int, s: float = 64.0, margin: float = 0.4):
        super().__init__(num_classes, embedding_dim, s)
        self.margin_value = float(margin)
        self.margin = partial(margins.cosface, s=self.s, margin=self.margin_value)


class CombinedHead(MarginHead):
    """arcface_torch's combined margin ``cos(m1*theta + m2) - m3``; ``margin`` is m2 (the
    additive angular term), so ``head.margin`` sweeps work with this head too."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 64.0,
        m1: float = 1.0,
        margin: float = 0.5,
        m3: float = 0.0,
    ):
        super().__init__(num_classes, embedding_dim, s)
        self.m1, self.margin_value, self.m3 = float(m1), float(margin), float(m3)
        self.margin = partial(margins.combined, s=self.s, m1=self.m1, m2=self.margin_value, m3=self.m3)
