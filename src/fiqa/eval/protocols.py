"""Validation protocols with one calling convention, dispatched by name from ``conf/val``:

    protocol(embeddings=(N, D) raw (flip-fused) embeddings, qualities=(N,), **targets) -> dict

``targets`` are what the set provides (``issame`` (P,) for pair sets, ``degradation`` (N,) for
SynthFace); a protocol takes what it needs and ignores the rest. Pure numpy.

``pair_similarity`` (P,), when given, replaces the cosine of the pair's embeddings as the
comparison score (``val.<set>.score=qmagface``: QMagFace's quality-aware score).

A protocol that can also give curves for plots takes ``return_curves: bool = False``; with ``True`` its
dict has one more key, ``"curves"``: ``{kind: {label: (x, y)}}`` (kinds ``roc``, ``cmc``, ``erc``; see
``fiqa.eval.report.PLOTTERS``). ``fiqa.eval.sets.evaluate_set`` asks for them and keeps them apart
from the metrics, whose names do not change. A protocol that takes ``set_name: str`` is given the val
set's name (``evaluate_set``), for its error messages.
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


def ijb(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    template_ids: np.ndarray,
    media_ids: np.ndarray,
    pairs: np.ndarray | None = None,
    pair_labels: np.ndarray | None = None,
    faceness: np.ndarray | None = None,
    gallery_templates: np.ndarray | None = None,
    gallery_subjects: np.ndarray | None = None,
    gallery_split: np.ndarray | None = None,
    probe_templates: np.ndarray | None = None,
    probe_subjects: np.ndarray | None = None,
    norm_score: bool = True,
    detector_score: bool = True,
    weighting: str = "none",
    quality_threshold: float | None = None,
    score: str = "cosine",
    qmagface: dict | None = None,
    fars=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    erc_fmrs=(1e-2, 1e-3, 1e-4),
    erc_mode: str = "recompute_nearest",
    ranks=(1, 5, 10),
    fpirs=(1e-2, 1e-1),
    nist_rank: int = 1,
    return_curves: bool = False,
    set_name: str = "IJB",
    **_,
) -> dict:
    """IJB-B/C (``fiqa.eval.ijb``): templates from the per-image embeddings (media mean, sum over media,
    L2; ``norm_score``, ``detector_score``, quality ``weighting`` none|crfiqa|eqface|qmagface), then the
    1:1 TAR@FAR (insightface's nearest-FPR ``tar@far*`` and ``tar_strict@far*``), ``roc_auc`` and the
    pair ERC of the template quality (``erc_*``), and, when the set has the 1:N files, ``rank1/5/10``,
    ``tpir@fpir*`` (insightface) and ``tpir_nist@fpir*``. Every image of the set must be embedded.
    ``return_curves``: the ROC, the ERC and the 1:N CMC as ``"curves"`` (module docstring). ``set_name``
    (passed by ``fiqa.eval.sets.evaluate_set``) names the set in the errors, e.g. NaN or inf embeddings.
    1:N ties count against the mate (a collapsed model scores rank-k = 0, ``fiqa.eval.ijb``)."""
    from fiqa.eval import ijb as ijb_eval

    return ijb_eval.evaluate(
        embeddings,
        qualities,
        template_ids,
        media_ids,
        pairs,
        pair_labels,
        faceness,
        gallery_templates,
        gallery_subjects,
        gallery_split,
        probe_templates,
        probe_subjects,
        norm_score=norm_score,
        detector_score=detector_score,
        weighting=weighting,
        quality_threshold=quality_threshold,
        score=score,
        qmagface=qmagface,
        fars=tuple(fars),
        erc_fmrs=tuple(erc_fmrs or ()),
        erc_mode=erc_mode,
        ranks=tuple(ranks),
        fpirs=tuple(fpirs),
        nist_rank=nist_rank,
        return_curves=return_curves,
        name=set_name,
    )
