"""MagFace (Meng et al., CVPR 2021): a margin that grows with the feature magnitude, plus a
magnitude regulariser; together they make ``||embedding||`` a quality score.

With ``a = clamp(||x||, l_a, u_a)`` (x the raw BN1d embedding):

* ``m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m``;
* target logit ``s * cos(theta_y + m(a))`` (``kind="arc"``; with ``easy_margin`` only where
  ``cos theta_y > 0``, else ``s * cos theta_y``) or ``s * (cos theta_y - m(a))`` (``kind="cos"``,
  Mag-CosFace); other logits ``s * cos theta_j``;
* regulariser ``g(a) = a / u_a**2 + 1 / a``, averaged over the batch and weighted by ``lambda_g``.

Gradients reach ``a`` through both ``m(a)`` and ``g(a)`` (zero outside ``[l_a, u_a]``: the clamp).
Reference: MagFace ``models/magface.py`` (``MagLinear``, ``MagLoss``) as transcribed in
shared/reference §4.1. One deliberate difference: cos is clamped to ``±(1 - 1e-7)`` before
``sqrt(1 - cos²)`` (the original clamps at ±1, where the gradient is infinite).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fiqa.heads.fc import MarginHead
from fiqa.heads.margins import COS_EPS, replace_target, target_of

KINDS = ("arc", "cos")


def magnitude_margin(a: torch.Tensor, l_a: float, u_a: float, l_m: float, u_m: float) -> torch.Tensor:
    """``m(a)``, linear from ``l_m`` at ``l_a`` to ``u_m`` at ``u_a`` (``a`` already clamped)."""
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magnitude_regularizer(a: torch.Tensor, u_a: float) -> torch.Tensor:
    """``g(a) = a / u_a**2 + 1 / a`` per sample (``a`` already clamped); minimal at ``a = u_a``."""
    return a / (u_a**2) + 1.0 / a


def feasibility_bound(s: float, l_a: float, u_a: float, l_m: float, u_m: float) -> float:
    """The smallest ``lambda_g`` for which MagFace's magnitude is a unique, monotone quality
    (the bound its trainer prints): ``s * k * u_a² * l_a² / (u_a² - l_a²)``, ``k = (u_m - l_m)/(u_a - l_a)``.
    22.59 for the defaults."""
    k = (u_m - l_m) / (u_a - l_a)
    return s * k * u_a**2 * l_a**2 / (u_a**2 - l_a**2)


def mag_logits(
    cos: torch.Tensor,
    labels: torch.Tensor,
    a: torch.Tensor,
    s: float = 64.0,
    l_a: float = 10.0,
    u_a: float = 110.0,
    l_m: float = 0.45,
    u_m: float = 0.8,
    easy_margin: bool = True,
    kind: str = "arc",
) -> torch.Tensor:
    """Scaled logits with the magnitude-aware margin on the target entry (float32); rows labelled
    ``-1`` (Partial FC: target in another shard) get no margin."""
    cos = cos.float().clamp(-1 + COS_EPS, 1 - COS_EPS)
    m = magnitude_margin(a.float().view(-1, 1), l_a, u_a, l_m, u_m)  # (B, 1)
    t = target_of(cos, labels)
    if kind == "arc":
        t_m = t * torch.cos(m) - torch.sqrt(1.0 - t * t) * torch.sin(m)
        if easy_margin:
            t_m = torch.where(t > 0, t_m, t)
        else:  # the insightface fallback past theta + m > pi
            t_m = torch.where(t > torch.cos(math.pi - m), t_m, t - torch.sin(math.pi - m) * m)
    elif kind == "cos":
        t_m = t - m
    else:
        raise ValueError(f"head.kind must be one of {list(KINDS)}, got {kind!r}")
    return s * replace_target(cos, labels, t_m)


class MagFaceHead(MarginHead):
    """MagLinear: unit class centres (C, D) initialised as MagFace (uniform(-1, 1), rows
    normalised); ``forward(embedding, labels) -> HeadOutput`` with ``norm`` = the clamped magnitude.
    ``fc=partial`` (Partial FC): each row's margin uses the magnitude of its own image (gathered from
    its rank); ``norm`` holds this rank's rows, with their gradient, for the regulariser g(a)."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        easy_margin: bool = True,
        kind: str = "arc",
        fc: str = "full",
        sample_rate: float = 1.0,
    ):
        super().__init__(num_classes, embedding_dim, s, fc, sample_rate)
        if not 0 < l_a < u_a:
            raise ValueError(f"head.l_a and head.u_a must satisfy 0 < l_a < u_a, got {l_a}, {u_a}")
        if kind not in KINDS:
            raise ValueError(f"head.kind must be one of {list(KINDS)}, got {kind!r}")
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.easy_margin, self.kind = bool(easy_margin), kind
        with torch.no_grad():
            self.weight.uniform_(-1, 1)
            self.weight.copy_(F.normalize(self.weight, dim=1))

    def clamped_norm(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding.float().norm(dim=1).clamp(self.l_a, self.u_a)

    def row_terms(self, embedding: torch.Tensor) -> dict:
        return {"norm": self.clamped_norm(embedding)}

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor, terms: dict) -> torch.Tensor:
        a = terms["norm"]
        return mag_logits(cos, labels, a, self.s, self.l_a, self.u_a, self.l_m, self.u_m, self.easy_margin, self.kind)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, "
            f"easy_margin={self.easy_margin}, kind={self.kind!r}"
        )


__all__ = [
    "KINDS",
    "MagFaceHead",
    "feasibility_bound",
    "mag_logits",
    "magnitude_margin",
    "magnitude_regularizer",
]
