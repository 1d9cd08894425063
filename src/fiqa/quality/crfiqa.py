"""CR-FIQA: certainty-ratio target from the pre-margin cosines, and its regression loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CR_TARGETS = ("code", "paper")
# The original masks the target class with -1e-12 (not -inf) before the max, so NNCCS >= -1e-12.
TARGET_MASK = -1e-12


@torch.no_grad()
def certainty_ratio(
    cosine: torch.Tensor, labels: torch.Tensor, kind: str = "code", eps: float = 1e-9, nnccs_min: float = 0.0
):
    """(CR target, CCS, NNCCS), each (B,), detached.

    CCS = cos[i, y_i]; NNCCS = max over j of cos with the target entry set to -1e-12.
    ``code`` (the released weights, C:losses.py): CR = CCS / max(NNCCS, nnccs_min).
    ``paper`` (the paper's figure): CR = CCS / (NNCCS + (1 + eps)).

    ``nnccs_min`` = 0 is the original exactly. The code's ratio explodes when NNCCS nears 0,
    which never happens with the original's 10k-85k classes (the max over that many non-target
    cosines stays around 0.2-0.4) but does with a few hundred: on SynthFace we saw targets of
    1e6 and the backbone collapse. A floor of 0.1 only acts in that degenerate regime.
    """
    check_kind(kind)
    ccs, nnccs = _ccs_nnccs(cosine.float(), labels)
    return cr_target(ccs, nnccs, kind, eps, nnccs_min), ccs, nnccs


def check_kind(kind: str) -> None:
    if kind not in CR_TARGETS:
        raise ValueError(f"method.cr_target must be one of {list(CR_TARGETS)}, got {kind!r}")


def _ccs_nnccs(cosine: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the target cosine (0 for a label -1) and the max of the others with the target
    entry set to -1e-12 (-inf for a row without columns)."""
    valid = labels >= 0
    idx = labels.clamp_min(0).view(-1, 1)
    if cosine.shape[1] == 0:
        return cosine.new_zeros(len(labels)), cosine.new_full((len(labels),), float("-inf"))
    ccs = torch.where(valid, cosine.gather(1, idx).squeeze(1), torch.zeros_like(cosine[:, 0]))
    own = cosine.gather(1, idx)
    nnccs = cosine.scatter(1, idx, torch.where(valid.view(-1, 1), torch.full_like(own, TARGET_MASK), own))
    nnccs = nnccs.max(dim=1).values
    return ccs, nnccs


@torch.no_grad()
def target_scores(head_out, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CCS, NNCCS) of this rank's samples (B,), detached, from a head's output.

    Full head: :func:`certainty_ratio`'s. Partial FC (``head.fc=partial``): CCS is the target cosine,
    from the rank that holds the target class, and NNCCS the max non-target cosine over all ranks'
    shards (all-reduce SUM and MAX over the global batch), so they equal the full head's; with
    ``head.sample_rate < 1`` NNCCS is the max over the sampled negatives only (the positives are always
    kept, so CCS is exact).
    """
    partial = getattr(head_out, "partial", None)
    if partial is None:
        return _ccs_nnccs(head_out.cosine.float(), labels)
    from fiqa.heads.partial_fc import all_reduce

    ccs, nnccs = _ccs_nnccs(head_out.cosine.float(), partial.labels)
    ccs, nnccs = all_reduce(ccs, "sum"), all_reduce(nnccs, "max")
    return ccs[partial.rows], nnccs[partial.rows]


@torch.no_grad()
def cr_target(
    ccs: torch.Tensor, nnccs: torch.Tensor, kind: str = "code", eps: float = 1e-9, nnccs_min: float = 0.0
) -> torch.Tensor:
    """The CR regression target from CCS and NNCCS (see :func:`certainty_ratio`)."""
    check_kind(kind)
    if nnccs_min < 0:
        raise ValueError(f"method.cr_nnccs_min must be >= 0, got {nnccs_min}")
    if kind == "code":
        return ccs / (nnccs.clamp_min(nnccs_min) if nnccs_min > 0 else nnccs)
    return ccs / (nnccs + (1.0 + eps))


def cr_loss(quality: torch.Tensor, target: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """SmoothL1_beta(quality, target), mean: 0.5 d^2/beta if |d| < beta else |d| - beta/2."""
    return F.smooth_l1_loss(quality.float(), target.float(), beta=beta)
