"""Validation protocols of the low-quality 1:N identification sets, TinyFace and SCface.

Same calling convention as :mod:`fiqa.eval.protocols`::

    protocol(embeddings=(N, D) raw (flip-fused) embeddings, qualities=(N,), **targets) -> dict

with the targets of :class:`fiqa.data.tinyface.TinyFace` / :class:`fiqa.data.scface.SCface`:
``labels`` (N,), ``is_probe`` (N,) (the gallery is every other image) and, for SCface, ``distance``.
Features are the L2-normalised flip-fused embeddings and the score is their inner product (cosine),
as AdaFace's ``pre_norm_vector_add`` fusion followed by normalisation. Ranks follow
:mod:`fiqa.eval.identification` (``DIR_FAR`` semantics: only probes with a mate count).

Quality-aware view: ``rank1_reject<r>`` is rank-1 of the mated probes left after rejecting the
``floor(r * n)`` probes with the lowest quality (the model's own ``qualities``; gallery qualities are
not used). A quality that predicts recognisability makes it rise above ``rank1``. It is NaN when a
probe quality is NaN or inf. ``reject=0`` leaves it out.

``return_curves=True`` adds ``"curves": {"cmc": {label: (ranks, rates)}}`` (``fiqa.eval.protocols``), up
to rank ``max(20, max(ranks))`` (at most the gallery size): one curve ``all`` for TinyFace, one per
distance (``d1``, ``d2``, ``d3``) and ``all`` for SCface.

The whole set must be embedded: a partial run (``limit_val_batches``, ``fast_dev_run``) raises a
ValueError, which :func:`fiqa.eval.sets.evaluate_set` turns into a warning; so do NaN or inf
embeddings (the error names the set, ``set_name``, given by ``evaluate_set``, and counts the rows). Ties
count against the mate (:mod:`fiqa.eval.identification`): a collapsed model scores rank-k = 0 below the
gallery size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fiqa.eval import identification as idn
from fiqa.eval.verification import far_key, l2_normalize

__all__ = ["scface", "tinyface"]


def _search(embeddings, labels, is_probe, chunk_elements: int, set_name: str) -> tuple[idn.Searches, np.ndarray]:
    emb = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    is_probe = np.asarray(is_probe, dtype=bool).reshape(-1)
    if emb.ndim != 2 or len(emb) != len(labels) or len(is_probe) != len(labels):
        raise ValueError(
            f"{len(emb)} embeddings for a set of {len(labels)} images ({len(is_probe)} roles): identification "
            f"needs the whole set embedded (not a limit_val_batches / fast_dev_run subset)"
        )
    if not is_probe.any() or is_probe.all():
        raise ValueError(f"the set needs probes and gallery images; got {int(is_probe.sum())} probes of {len(labels)}")
    f = l2_normalize(emb)
    s = idn.search(f[is_probe], f[~is_probe], labels[is_probe], labels[~is_probe], chunk_elements, set_name)
    return s, is_probe


def _rank_metrics(rank: np.ndarray, ranks: Sequence[int], suffix: str = "") -> dict:
    if not np.isfinite(rank).any():
        return {f"rank{int(k)}{suffix}": float("nan") for k in ranks}
    return {f"rank{int(k)}{suffix}": float(v) for k, v in zip(ranks, idn.cmc(rank, ranks))}


def _cmc_curve(rank: np.ndarray, ranks: Sequence[int], n_gallery: int) -> tuple:
    from fiqa.eval.report import cmc_points

    return cmc_points(rank, min(max([20, *[int(k) for k in ranks]]), n_gallery))


def _reject_metric(rank: np.ndarray, probe_quality: np.ndarray, reject: float) -> dict:
    if reject <= 0:
        return {}
    q = np.asarray(probe_quality, dtype=np.float64)
    ok = np.all(np.isfinite(q)) and np.isfinite(rank).any()
    value = float(idn.cmc_after_reject(rank, q, reject, (1,))[0]) if ok else float("nan")
    return {f"rank1_reject{reject:g}": value}


def tinyface(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    labels: np.ndarray,
    is_probe: np.ndarray,
    ranks: Sequence[int] = (1, 5, 20),
    fars: Sequence[float] = (),
    open_set: str = "mate_removed",
    reject: float = 0.2,
    chunk_elements: int = idn.CHUNK_ELEMENTS,
    return_curves: bool = False,
    set_name: str = "tinyface",
    **_,
) -> dict:
    """TinyFace 1:N: probes against Gallery_Match + Gallery_Distractor.

    Returns ``rank1``, ``rank5``, ``rank20`` (closed-set CMC at ``ranks``; QGFace logs these three as
    "rank_1, rank_2, rank_3"), ``rank1_reject0.2``, and for each of ``fars`` (default none) the open-set
    rank-1 ``dir@far<x>``. TinyFace's probes all have mates, so the open-set thresholds come from each
    probe searched with its own mates removed (``open_set="mate_removed"``; ``"probes"``: from the
    non-mated probes, the original's rule, which needs such probes)."""
    s, is_probe = _search(embeddings, labels, is_probe, chunk_elements, set_name)
    out = _rank_metrics(s.rank, ranks)
    if fars:
        dirs, _, _ = idn.dir_at_far(s, [float(f) for f in fars], (1,), open_set)
        out.update({f"dir@{far_key(f)}": float(d) for f, d in zip(fars, dirs[:, 0])})
    out.update(_reject_metric(s.rank, np.asarray(qualities).reshape(-1)[is_probe], reject))
    if return_curves and s.has_mate.any():
        out["curves"] = {"cmc": {"all": _cmc_curve(s.rank, ranks, int((~is_probe).sum()))}}
    return out


def scface(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    labels: np.ndarray,
    is_probe: np.ndarray,
    distance: np.ndarray,
    ranks: Sequence[int] = (1,),
    reject: float = 0.2,
    chunk_elements: int = idn.CHUNK_ELEMENTS,
    return_curves: bool = False,
    set_name: str = "scface",
    **_,
) -> dict:
    """SCface 1:N: surveillance probes against the frontal mugshots.

    Returns ``rank1_d1``, ``rank1_d2``, ``rank1_d3`` (closed-set rank-1 of the probes at each distance,
    d1 the farthest; QGFace's ``scface/d1..d3``), ``rank1`` over all probes, and ``rank1_reject0.2``
    over all probes. More ``ranks`` add ``rank<k>`` and ``rank<k>_d<d>``."""
    s, is_probe = _search(embeddings, labels, is_probe, chunk_elements, set_name)
    d = np.asarray(distance).reshape(-1)
    if len(d) != len(is_probe):
        raise ValueError(f"one distance per image: {len(is_probe)} images, {len(d)} distances")
    d = d[is_probe]
    out, cmc = {}, {}
    n_gallery = int((~is_probe).sum())
    for dist in np.unique(d):
        out.update(_rank_metrics(s.rank[d == dist], ranks, f"_d{int(dist)}"))
        if np.isfinite(s.rank[d == dist]).any():
            cmc[f"d{int(dist)}"] = _cmc_curve(s.rank[d == dist], ranks, n_gallery)
    out.update(_rank_metrics(s.rank, ranks))
    out.update(_reject_metric(s.rank, np.asarray(qualities).reshape(-1)[is_probe], reject))
    if return_curves and np.isfinite(s.rank).any():
        out["curves"] = {"cmc": {**cmc, "all": _cmc_curve(s.rank, ranks, n_gallery)}}
    return out
