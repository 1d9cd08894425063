"""AdaFace (Kim et al., CVPR 2022): a margin that adapts to image quality, the feature norm
standing in for quality (shared/reference methods_eqface_qgface_adaface §1.1).

With ``n = clip(||x||, 1e-3, 100)`` (x the raw embedding; detached) and the running statistics
``mu``, ``sigma`` of ``n`` (buffers ``batch_mean``, ``batch_std``, initialised 20 / 100):

1. training mode only, BEFORE they are used: ``mu <- a*mean(n) + (1-a)*mu`` and
   ``sigma <- a*std(n) + (1-a)*sigma`` (unbiased std, ``a = t_alpha``);
2. margin scaler ``ms = clip(h * (n - mu) / (sigma + eps), -1, 1)`` (an image-quality proxy);
3. target class: ``theta' = clip(acos(cos_y) - m*ms, eps, pi - eps)`` and logit
   ``s * (cos(theta') - (m + m*ms))``; other classes ``s * cos_j``; cosines clipped to
   ``[-1 + eps, 1 - eps]`` first.

``h = 0`` gives ``ms = 0``: CosFace with margin ``m``. High-norm (easy) samples get an
ArcFace-like angular margin, low-norm (hard) ones a CosFace-like one that emphasises them less.

Under DDP each rank updates its statistics from its own batch. The original relied on DDP's
buffer broadcast (rank 0's buffers overwrite the others at every forward); fiqa's
``trainer=ddp`` sets ``broadcast_buffers: false`` (as arcface_torch), so each rank keeps its own
estimate (they agree up to the noise of the local batches) and a checkpoint holds rank 0's.
``trainer.strategy.broadcast_buffers=true`` gives the original's behaviour exactly (BN running
statistics are then broadcast from rank 0 too, as in the original).

With ``head.fc=partial`` (Partial FC) the head sees the global batch (every rank's embeddings,
gathered), so the statistics are updated from the norms of all ``B * W`` images: every rank holds the
same buffers, and each row's margin scaler is computed from its own image's norm. This differs from
the original under DDP (rank 0's local batch of ``B``) only by the noise of the estimate; with one
process it is identical.

Deliberate difference: with a batch of one the std is undefined (the original writes NaN into
``batch_std`` for good); here ``batch_std`` is left unchanged for such a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fiqa.heads.fc import HeadOutput, MarginHead
from fiqa.heads.margins import replace_target, target_of


@dataclass
class AdaFaceOutput(HeadOutput):
    """``HeadOutput`` plus the margin scaler. ``cosine`` is the pre-margin cosine as the margin saw
    it (clipped to ``[-1+eps, 1-eps]``), ``norm`` the clipped, detached ``||x||`` (B,) and ``ms`` the
    margin scaler (B,) in ``[-1, 1]``, detached (QGFace's quality: ``(ms + 1) / 2``)."""

    ms: torch.Tensor | None = None


def margin_scaler(norm: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, h: float, eps: float) -> torch.Tensor:
    """``clip(h * (norm - mean) / (std + eps), -1, 1)``."""
    return (h * (norm - mean) / (std + eps)).clamp(-1.0, 1.0)


def adaface_logits(
    cos: torch.Tensor, labels: torch.Tensor, ms: torch.Tensor, s: float = 64.0, m: float = 0.4, eps: float = 1e-3
) -> torch.Tensor:
    """Scaled logits with AdaFace's margin on the target entry (float32): target
    ``s * (cos(clip(theta_y - m*ms, eps, pi-eps)) - m - m*ms)``, others ``s * cos``.
    ``cos`` (B, C) is clipped to ``[-1+eps, 1-eps]``; ``ms`` (B,) is the margin scaler. Rows labelled
    ``-1`` (Partial FC: target in another shard) get no margin."""
    cos = cos.float().clamp(-1 + eps, 1 - eps)
    ms = ms.float().view(-1, 1)
    theta = torch.acos(target_of(cos, labels))
    g_angle, g_add = -m * ms, m + m * ms
    target = torch.cos((theta + g_angle).clamp(eps, math.pi - eps)) - g_add
    return s * replace_target(cos, labels, target)


class AdaFaceHead(MarginHead):
    """AdaFace's head: unit class centres ``weight`` (C, D) initialised uniform(-1, 1) with unit
    rows (the original's column-normalised ``kernel`` (D, C), transposed), and the norm statistics
    as buffers ``batch_mean`` / ``batch_std`` (saved in checkpoints).

    ``forward(embedding (B, D) raw, labels (B,)) -> AdaFaceOutput(logits, cosine, norm, ms)``.

    Subclass hooks (QGFace): :meth:`logit_gate` multiplies each sample's logits after scaling
    (default: none); ``init_mean`` / ``init_std`` set the statistics' start (QGFace: 0 / 0).

    ``fc=partial``: Partial FC (statistics from the global batch, see the module docstring).
    """

    output_type = AdaFaceOutput

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 64.0,
        margin: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
        init_mean: float = 20.0,
        init_std: float = 100.0,
        fc: str = "full",
        sample_rate: float = 1.0,
    ):
        super().__init__(num_classes, embedding_dim, s, fc, sample_rate)
        if not 0.0 <= t_alpha <= 1.0:
            raise ValueError(f"head.t_alpha must be in [0, 1], got {t_alpha}")
        if eps <= 0:
            raise ValueError(f"head.eps must be > 0, got {eps}")
        self.margin_value, self.h, self.t_alpha, self.eps = float(margin), float(h), float(t_alpha), float(eps)
        self.norm_min, self.norm_max = 1e-3, 100.0  # the original's clip of ||x|| (fixed, not the eps)
        with torch.no_grad():
            self.weight.uniform_(-1, 1)
            self.weight.copy_(F.normalize(self.weight, dim=1))
        self.register_buffer("batch_mean", torch.full((1,), float(init_mean)))
        self.register_buffer("batch_std", torch.full((1,), float(init_std)))

    def clipped_norm(self, embedding: torch.Tensor) -> torch.Tensor:
        """``clip(||x||, 1e-3, 100)``, detached, float32, (B,)."""
        return embedding.detach().float().norm(dim=1).clamp(self.norm_min, self.norm_max)

    @torch.no_grad()
    def update_statistics(self, norm: torch.Tensor) -> None:
        """EMA of the batch mean and unbiased std of ``norm`` (skipped for the std of a single sample)."""
        a = self.t_alpha
        self.batch_mean.mul_(1 - a).add_(a * norm.mean())
        if norm.numel() > 1:
            self.batch_std.mul_(1 - a).add_(a * norm.std())

    def logit_gate(self, ms: torch.Tensor) -> torch.Tensor | None:
        """A per-sample factor (B,) on the scaled logits, or None (AdaFace). QGFace overrides it."""
        return None

    def cosine(self, embedding: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cosines clipped to ``[-1+eps, 1-eps]`` (as the margin sees them)."""
        return super().cosine(embedding, weight).float().clamp(-1 + self.eps, 1 - self.eps)

    def row_terms(self, embedding: torch.Tensor) -> dict:
        return {"norm": self.clipped_norm(embedding)}

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor, terms: dict) -> torch.Tensor:
        """Updates the statistics (training) from ``terms["norm"]``, adds ``terms["ms"]``."""
        norm = terms["norm"]
        if self.training:
            self.update_statistics(norm)
        ms = margin_scaler(norm, self.batch_mean, self.batch_std, self.h, self.eps)
        terms["ms"] = ms
        logits = adaface_logits(cos, labels, ms, self.s, self.margin_value, self.eps)
        gate = self.logit_gate(ms)
        if gate is not None:
            logits = logits * gate.float().view(-1, 1)
        return logits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin_value}, h={self.h}, t_alpha={self.t_alpha}, eps={self.eps}"


__all__ = ["AdaFaceHead", "AdaFaceOutput", "adaface_logits", "margin_scaler"]
