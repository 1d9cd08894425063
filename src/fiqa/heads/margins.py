"""Margins as pure functions of the cosines (B, C) and the labels (B,).

Each returns the scaled logits ``s * f(cos)`` with the margin applied to the target entry only.
All arithmetic is done in float32 whatever the input dtype. A label ``-1`` means "no target among
these columns" (Partial FC: the target is in another rank's shard): that row gets no margin.
"""

from __future__ import annotations

import torch

# acos has an infinite gradient at +-1: clamp slightly inside (CR-FIQA pitfall 5; the
# originals clamp at exactly +-1).
COS_EPS = 1e-7


def target_of(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The target cosines (B, 1); a row labelled ``-1`` gives its column 0 (a placeholder, never used)."""
    return cos.gather(1, labels.clamp_min(0).view(-1, 1))


def replace_target(cos: torch.Tensor, labels: torch.Tensor, new_target: torch.Tensor) -> torch.Tensor:
    """``cos`` with the target entries replaced by ``new_target`` (B, 1); rows labelled ``-1`` unchanged."""
    idx = labels.clamp_min(0).view(-1, 1)
    keep = (labels < 0).view(-1, 1)
    return cos.scatter(1, idx, torch.where(keep, cos.gather(1, idx), new_target))


def combined(
    cos: torch.Tensor, labels: torch.Tensor, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0
) -> torch.Tensor:
    """arcface_torch's combined margin: target logit ``s * (cos(m1*theta + m2) - m3)``, the others
    ``s * cos``. (1, 0.5, 0) is ArcFace, (1, 0, 0.35..0.4) CosFace, (0.9, 0.4, 0.15) their mix."""
    cos = cos.float().clamp(-1 + COS_EPS, 1 - COS_EPS)
    t = target_of(cos, labels)
    if m1 != 1.0 or m2 != 0.0:
        t = torch.cos(m1 * torch.acos(t) + m2)
    return s * replace_target(cos, labels, t - m3)


def arcface(cos: torch.Tensor, labels: torch.Tensor, s: float = 64.0, margin: float = 0.5) -> torch.Tensor:
    """ArcFace (additive angular margin): target ``s*cos(theta + m)``; no easy-margin and no
    theta+m > pi fallback, as arcface_torch and CR-FIQA."""
    return combined(cos, labels, s=s, m1=1.0, m2=margin, m3=0.0)


def cosface(cos: torch.Tensor, labels: torch.Tensor, s: float = 64.0, margin: float = 0.4) -> torch.Tensor:
    """CosFace (additive cosine margin): target ``s*(cos - m)``."""
    return combined(cos, labels, s=s, m1=1.0, m2=0.0, m3=margin)
