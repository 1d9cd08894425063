"""Margin heads: normalised class centres (C, D) and a margin function of the cosines.

Every margin head takes ``fc: full | partial`` and ``sample_rate`` (config ``head.fc``,
``head.sample_rate``): ``full`` (the default) holds all C centres on every rank; ``partial`` shards
them over the ranks and samples them (Partial FC, :mod:`fiqa.heads.partial_fc`). Compute the id loss
of a :class:`HeadOutput` with :func:`fiqa.heads.partial_fc.cross_entropy`, which handles both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fiqa.heads import margins, partial_fc
from fiqa.heads.partial_fc import PartialInfo, ShardInfo


@dataclass
class HeadOutput:
    logits: torch.Tensor  # (B, C) scaled, margin applied to the targets (float32)
    cosine: torch.Tensor  # (B, C) pre-margin cosines (float32), e.g. for CR-FIQA's targets
    norm: torch.Tensor | None = None  # (B,) the magnitude a head used (MagFace: clamped ||x||)
    # Partial FC only: logits/cosine are then (N, kept): the global batch against this shard's kept centres
    partial: PartialInfo | None = None


class MarginHead(nn.Module):
    """``weight`` (C, D) class centres, N(0, 0.01) as arcface_torch; ``forward(embedding,
    labels) -> HeadOutput``. Subclasses choose the margin; margins are config values.

    ``fc="partial"``: the weight keeps only this rank's rows once :meth:`shard` ran (``FaceModule.setup``
    calls it; else the first forward), ``sample_rate < 1`` samples the centres each training step, and
    ``state_dict``/``load_state_dict`` speak the full (C, D) weight whatever the world size
    (:mod:`fiqa.heads.partial_fc`).

    Subclass hooks (the full and the partial forward share them): :meth:`row_terms` (per-row values of
    the embedding the margin needs, e.g. MagFace's magnitude), :meth:`margin_logits` (cosines, labels,
    terms -> scaled logits; a label ``-1`` = no target among these columns, no margin on that row).
    """

    #: False for heads whose loss is not a plain margin softmax (EQFace, QGFace): ``fc=partial`` is refused.
    supports_partial_fc = True
    output_type = HeadOutput

    def __init__(
        self, num_classes: int, embedding_dim: int, s: float = 64.0, fc: str = "full", sample_rate: float = 1.0
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"head.num_classes must be >= 2, got {num_classes}")
        self.fc, self.sample_rate = partial_fc.check_fc(fc, sample_rate, type(self).__name__, self.supports_partial_fc)
        self.num_classes, self.embedding_dim, self.s = int(num_classes), int(embedding_dim), float(s)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.shard_info: ShardInfo | None = None

    # ---- the margin (shared by the full and the partial forward) -------------------------------
    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def row_terms(self, embedding: torch.Tensor) -> dict:
        """Per-row values of the raw embedding that the margin uses (none here)."""
        return {}

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor, terms: dict) -> torch.Tensor:
        """Scaled logits with the margin on the target entries (may add per-row entries to ``terms``)."""
        return self.margin(cos, labels)

    def cosine(self, embedding: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cosines of the embeddings to the centres ``weight`` (default: all of this head's)."""
        w = self.weight if weight is None else weight
        return F.linear(F.normalize(embedding.float(), dim=1), F.normalize(w.float(), dim=1)).clamp(-1, 1)

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        if self.fc == "partial":
            return partial_fc.forward(self, embedding, labels)
        cos = self.cosine(embedding)
        terms = self.row_terms(embedding)
        logits = self.margin_logits(cos, labels, terms)
        return self.output_type(logits=logits, cosine=cos, **terms)

    # ---- Partial FC: sharding and the full (C, D) state ------------------------------------------
    def shard(self, rank: int | None = None, world_size: int | None = None) -> ShardInfo:
        """Keep only the rows of ``rank`` (default: of the default process group; ``(0, 1)`` without
        one). Idempotent for the same layout; ``fc=partial`` only."""
        if self.fc != "partial":
            raise RuntimeError("MarginHead.shard() is for head.fc=partial")
        if rank is None or world_size is None:
            rank, world_size = partial_fc.rank_and_world()
        info = ShardInfo.of(self.num_classes, rank, world_size)
        if self.shard_info is not None:
            if self.shard_info == info:
                return info
            raise RuntimeError(
                f"head already sharded as {self.shard_info}, cannot re-shard to {info}: build the head anew "
                f"and load the full state_dict (a checkpoint) instead"
            )
        if info.num_local < 1:
            raise ValueError(
                f"head.fc=partial needs at least one class per rank: head.num_classes={self.num_classes} "
                f"< world size {world_size}"
            )
        if world_size > 1:
            rows = self.weight.detach()[info.rows].clone()
            self.weight = nn.Parameter(rows, requires_grad=self.weight.requires_grad)
        self.shard_info = info
        return info

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if partial_fc.is_sharded(self):  # the full (C, D): a collective, every rank calls it
            destination[prefix + "weight"] = partial_fc.gather_rows(
                self.weight.detach(), self.shard_info, self.num_classes
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        key = prefix + "weight"
        if partial_fc.is_sharded(self) and key in state_dict:
            full = state_dict[key]
            if tuple(full.shape) == (self.num_classes, self.embedding_dim):
                state_dict[key] = full[self.shard_info.rows]  # this rank's rows of the full weight
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)

    def extra_repr(self) -> str:
        fc = f", fc={self.fc!r}, sample_rate={self.sample_rate:g}" if self.fc == "partial" else ""
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, s={self.s}{fc}"


class ArcFaceHead(MarginHead):
    """ArcFace, s=64, m=0.5."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 64.0,
        margin: float = 0.5,
        fc: str = "full",
        sample_rate: float = 1.0,
    ):
        super().__init__(num_classes, embedding_dim, s, fc, sample_rate)
        self.margin_value = float(margin)
        self.margin = partial(margins.arcface, s=self.s, margin=self.margin_value)


class CosFaceHead(MarginHead):
    """CosFace, s=64, m=0.4."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 64.0,
        margin: float = 0.4,
        fc: str = "full",
        sample_rate: float = 1.0,
    ):
        super().__init__(num_classes, embedding_dim, s, fc, sample_rate)
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
        fc: str = "full",
        sample_rate: float = 1.0,
    ):
        super().__init__(num_classes, embedding_dim, s, fc, sample_rate)
        self.m1, self.margin_value, self.m3 = float(m1), float(margin), float(m3)
        self.margin = partial(margins.combined, s=self.s, m1=self.m1, m2=self.margin_value, m3=self.m3)
