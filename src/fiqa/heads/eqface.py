"""EQFace's classification head and loss (Liu & Tan, CVPRW 2021, "FaceQuality"; shared/reference
methods_eqface_qgface_adaface §3.1).

* ArcFace, s=64, m=0.5, with insightface's fallback past ``theta + m > pi``: the target logit is
  ``phi = cos(theta + m)`` where ``cos theta > cos(pi - m)``, else ``cos theta - sin(pi - m) * m``;
  the other logits are ``cos theta``.
* With a quality ``q`` per sample the logits are scaled by ``c = clamp(q - 0.2, 0, 1) * 1.2``, so
  ``logits = s * c * (...)`` lies in ``[0, 61.44]`` times the cosines. ``q <= 0.2`` gives zero logits: the
  cross-entropy is ``log C`` and no gradient reaches the class centres (nor, through the clamp, ``q``).
* Loss: focal, ``mean((1 - p)^gamma * CE)`` with the per-sample CE and ``p = exp(-CE)``, ``gamma = 2``.

Deliberate differences from the original: the margin is computed in float32 (the original casts
``phi`` to half), and ``cos`` is clamped to ``±(1 - 1e-7)`` before ``sqrt(1 - cos²)`` (at ±1 its gradient
is infinite). The class centres are initialised as the original's (kaiming-uniform, a=√5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fiqa.heads.fc import HeadOutput, MarginHead
from fiqa.heads.margins import COS_EPS


def arcface_with_fallback(cos: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Unscaled ArcFace cosines (float32): target ``cos(theta + m)`` where ``cos theta > cos(pi - m)``,
    else ``cos theta - sin(pi - m) * m``; the other entries ``cos theta``."""
    cos = cos.float().clamp(-1 + COS_EPS, 1 - COS_EPS)
    t = cos.gather(1, labels.view(-1, 1))
    phi = t * math.cos(margin) - torch.sqrt(1.0 - t * t) * math.sin(margin)
    t_m = torch.where(t > math.cos(math.pi - margin), phi, t - math.sin(math.pi - margin) * margin)
    return cos.scatter(1, labels.view(-1, 1), t_m)


def quality_scale(quality: torch.Tensor, offset: float = 0.2, gain: float = 1.2) -> torch.Tensor:
    """EQFace's per-sample logit scale ``clamp(q - offset, 0, 1) * gain`` (float32, shape of ``quality``)."""
    return (quality.float() - offset).clamp(0.0, 1.0) * gain


def eqface_logits(
    cos: torch.Tensor,
    labels: torch.Tensor,
    s: float = 64.0,
    margin: float = 0.5,
    quality: torch.Tensor | None = None,
    offset: float = 0.2,
    gain: float = 1.2,
) -> torch.Tensor:
    """``s * (...)`` without a quality (EQFace step 1), ``s * c(q) * (...)`` with one (steps 2 and 3)."""
    out = s * arcface_with_fallback(cos, labels, margin)
    if quality is None:
        return out
    return out * quality_scale(quality, offset, gain).view(-1, 1)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """``mean((1 - p)^gamma * CE)``, per-sample CE, ``p = exp(-CE)`` (EQFace's FocalLoss, gamma=2)."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    p = torch.exp(-ce)
    return ((1.0 - p) ** gamma * ce).mean()


class EQFaceHead(MarginHead):
    """EQFace's ``GaussianFace``: class centres (C, D) and ArcFace-with-fallback logits, scaled per sample
    by the quality when one is given: ``forward(embedding, labels, quality=None) -> HeadOutput``."""

    # Partial FC is not implemented for its quality-scaled logits and focal loss: head.fc=partial is refused
    supports_partial_fc = False

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 64.0,
        margin: float = 0.5,
        quality_offset: float = 0.2,
        quality_gain: float = 1.2,
        fc: str = "full",
        sample_rate: float = 1.0,
    ):
        super().__init__(num_classes, embedding_dim, s, fc, sample_rate)
        if not 0.0 <= float(margin) < math.pi / 2:
            raise ValueError(f"head.margin must be in [0, pi/2), got {margin}")
        self.margin_value = float(margin)
        self.quality_offset, self.quality_gain = float(quality_offset), float(quality_gain)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # EQFace's init

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor | None = None) -> HeadOutput:
        cos = self.cosine(embedding)
        logits = eqface_logits(cos, labels, self.s, self.margin_value, quality, self.quality_offset, self.quality_gain)
        return HeadOutput(logits=logits, cosine=cos)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, margin={self.margin_value}, "
            f"quality_scale=clamp(q - {self.quality_offset:g}, 0, 1) * {self.quality_gain:g}"
        )


__all__ = ["EQFaceHead", "arcface_with_fallback", "eqface_logits", "focal_loss", "quality_scale"]
