"""Validation protocols with one calling convention, dispatched by name from ``conf/val``:

    protocol(embeddings=(N, D) raw (flip-fused) embeddings, qualities=(N,), **targets) -> dict

``targets`` are what the set provides (``issame`` (P,) for pair sets, ``degradation`` (N,) for
SynthFace); a protocol takes what it needs and ignores the rest. Pure numpy.

``pair_similarity`` (P,), when given, replaces the cosine of the pair's embeddings as the
comparison score (``val.<set>.score=qmagface``: QMagFace's quality-aware score).
"""

from __future__ import annotations

import numpy as np

from fiqa.eval import quality_metrics as qm
from fiqa.eval import verification as ver


def verification(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    issame: np.ndarray,
    nfolds: int = 10,
    far_target: float = 1e-3,
    distance: str = "sqeuclidean",
    pair_similarity: np.ndarray | None = None,
    **_,
) -> dict:
    """insightface 10-fold accuracy and VAL@FAR on L2-normalised embeddings
    (``distance="cosine"``: the XQLFW protocol), or on ``pair_similarity``."""
    if pair_similarity is not None:
        return ver.evaluate_similarity(pair_similarity, issame, nfolds, far_target, distance)
    return ver.evaluate(
        ver.l2_normalize(np.asarray(embeddings, np.float64)),
        np.asarray(issame, bool),
        nfolds=nfolds,
        far_target=far_target,
        distance=distance,
    )


def quality_vs_degradation(embeddings: np.ndarray, qualities: np.ndarray, degradation: np.ndarray, **_) -> dict:
    """Spearman correlation of per-image quality with the ground-truth degradation level
    (a good quality method is strongly negative)."""
    return {"quality_spearman": qm.quality_spearman(qualities, degradation)}


def reject_fnmr(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    issame: np.ndarray,
    fmr: float = 1e-2,
    reject: float = 0.2,
    pair_similarity: np.ndarray | None = None,
    **_,
) -> dict:
    """FNMR at a threshold fixed at ``fmr`` on all pairs, before and after rejecting the
    ``reject`` fraction of pairs with the lowest min-quality."""
    if pair_similarity is not None:
        scores = np.asarray(pair_similarity, np.float64)
    else:
        scores = qm.pair_scores(ver.l2_normalize(np.asarray(embeddings, np.float64)))
    pq = qm.pair_quality(np.asarray(qualities, np.float64), reduce="min")
    key = qm.fmr_key(fmr)
    before = qm.fnmr_at_fmr(scores, issame, fmr)
    after = qm.fnmr_at_fmr(scores, issame, fmr, reject=reject, pair_quality=pq)
    return {f"fnmr@{key}": before["fnmr"], f"fnmr@{key}_reject{reject:g}": after["fnmr"]}
