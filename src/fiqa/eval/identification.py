"""1:N identification: closed-set CMC (rank-k) and open-set DIR@FAR (TinyFace, SCface). Pure numpy.

The semantics are those of ``DIR_FAR(score_mat, label_mat, ranks, FARs)``, the function the
AdaFace / QGFace TinyFace and SCface helpers call (spec in ``shared/reference/data_and_eval.md`` §4.1):

- only probes with at least one mate in the gallery ("mated probes") count in a CMC or DIR;
- each probe row is sorted by descending score; a probe is a hit at rank ``k`` iff *any* mate is
  among its top ``k`` gallery entries. ``rank-k = mean(hit)`` over the mated probes;
- ``FARs == [1.0]`` (a single FAR >= 1) is the closed set: no threshold. Otherwise the threshold for
  a FAR is the ``round(n_nm * FAR)``-th highest of the max scores of the ``n_nm`` non-mated probes
  (FAR 0: the highest plus 1e-5), and ``DIR = mean(hit at rank k AND mate score >= threshold)``.

Differences from that code, all documented choices:

- It sorts every row (``argsort``, O(G log G) per probe, a P x G index matrix in memory). Here the
  rank of a probe is computed without sorting: ``rank = 1 + #{non-mates with score >= best mate score}``,
  in chunks of probes, so TinyFace (3,728 x 157,871) never holds the full score matrix. On scores
  without ties the ranks are identical to the sort's.
- **Ties** between a mate and a non-mate count *against* the probe (the non-mate ranks first). The
  sort's order among ties is numpy's, not the model's (``argsort`` then reversed); the pessimistic rule
  is deterministic and means a collapsed model (all embeddings equal, or zero: every score tied)
  scores rank-k = 0 for every k below the gallery size, never 1 (W&B keeps the max of ``rank*``, so a
  single collapsed epoch would otherwise show 1.0 for the rest of the run). :func:`fiqa.eval.ijb.identify`
  (IJB-B/C) uses the same rule.
- The open-set mate score of a probe with several mates is its best mate's score (the original
  asserts exactly one mate per probe); with one mate both are the same.
- A FAR of 1.0 in a list with other FARs is an open-set threshold (the lowest non-mated max), as in
  the original; only ``fars == [1.0]`` (or any single FAR >= 1) is the closed set.

Gallery entries labelled :data:`DISTRACTOR` (-100, TinyFace's distractors) are never mates in
:func:`search`. Scores and embeddings must be finite: NaN would silently compare as "not greater".
Non-finite rows raise a ValueError that names the set (``name``, the val set's name when called from
:mod:`fiqa.eval.protocols_lq`) and counts them. A zero embedding is finite (L2-normalised it stays zero,
score 0 with everything): a model collapsed to zero is not refused, it ranks every mate last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DISTRACTOR",
    "Searches",
    "cmc",
    "cmc_after_reject",
    "dir_at_far",
    "dir_far",
    "open_set_thresholds",
    "search",
    "search_scores",
]

#: Label of a gallery image that belongs to no probe identity (TinyFace's Gallery_Distractor).
DISTRACTOR = -100

#: Default number of score-matrix entries computed at once by :func:`search` (2^24 float64 = 128 MiB).
CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Searches:
    """The outcome of one search per probe.

    rank: (P,) float, 1-based rank of the best mate (pessimistic on ties); ``inf`` without a mate.
    mate_score: (P,) the best mate's score; ``-inf`` without a mate.
    nonmate_max: (P,) the highest non-mate score (the probe's search with its mates removed);
        ``-inf`` when every gallery entry is a mate."""

    rank: np.ndarray
    mate_score: np.ndarray
    nonmate_max: np.ndarray

    @property
    def has_mate(self) -> np.ndarray:
        return np.isfinite(self.rank)

    def __len__(self) -> int:
        return len(self.rank)

    def subset(self, mask: np.ndarray) -> Searches:
        return Searches(self.rank[mask], self.mate_score[mask], self.nonmate_max[mask])

    @staticmethod
    def concat(parts: Sequence[Searches]) -> Searches:
        return Searches(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("rank", "mate_score", "nonmate_max"))
        )


_NON_FINITE_HINT = "a diverged model, or a collapsed one whose zero features were divided by their zero norm"


def _non_finite_rows(x: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isfinite(x).all(axis=1))) if x.size else 0


def search_scores(scores: np.ndarray, label_mat: np.ndarray, name: str | None = None) -> Searches:
    """Per-probe rank, best mate score and best non-mate score of a (P, G) score matrix
    (higher = more similar) with its (P, G) boolean mate matrix. Ties count against the mate:
    ``rank = 1 + #{non-mates with score >= the best mate's}``. ``name``: the set, in the errors."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(label_mat)
    if s.ndim != 2 or m.shape != s.shape:
        raise ValueError(
            f"scores and label_mat must be 2-D (probes, gallery) of one shape, got {s.shape} and {m.shape}"
        )
    if s.shape[1] == 0:
        raise ValueError("the gallery is empty")
    bad = _non_finite_rows(s)
    if bad:
        where = f"{name}: " if name else ""
        raise ValueError(f"{where}scores contain NaN or inf in {bad} of {s.shape[0]} probe rows ({_NON_FINITE_HINT})")
    m = m.astype(bool)
    mate_score = np.where(m, s, -np.inf).max(axis=1)
    nonmate_max = np.where(m, -np.inf, s).max(axis=1)
    # Ties count AGAINST the mate (`>=`): a non-mate scoring exactly the best mate's score ranks first.
    # The original's argsort leaves ties in numpy's order (the gallery order in practice), so a tie
    # would be decided by gallery position, not by the model; counting ties for the mate let a collapsed
    # model (every score equal) reach rank-1 = 1.0, which W&B's max summary of rank* would keep.
    ahead = np.count_nonzero(~m & (s >= mate_score[:, None]), axis=1)
    rank = np.where(np.isfinite(mate_score), ahead + 1.0, np.inf)
    return Searches(rank, mate_score, nonmate_max)


def search(
    probe: np.ndarray,
    gallery: np.ndarray,
    probe_labels: np.ndarray,
    gallery_labels: np.ndarray,
    chunk_elements: int = CHUNK_ELEMENTS,
    name: str | None = None,
) -> Searches:
    """Search every probe feature (P, D) in the gallery (G, D) by inner product, in float64 and in
    chunks of probes (at most ``chunk_elements`` scores at a time). A mate is a gallery entry with
    the probe's label; entries labelled :data:`DISTRACTOR` never are. Pass unit features for cosine.
    Non-finite feature rows raise a ValueError naming the set ``name`` and counting them."""
    p, g = np.asarray(probe, dtype=np.float64), np.asarray(gallery, dtype=np.float64)
    pl, gl = np.asarray(probe_labels).reshape(-1), np.asarray(gallery_labels).reshape(-1)
    if p.ndim != 2 or g.ndim != 2 or p.shape[1] != g.shape[1]:
        raise ValueError(f"probe and gallery must be (P, D) and (G, D) with one D, got {p.shape} and {g.shape}")
    if len(pl) != len(p) or len(gl) != len(g):
        raise ValueError(
            f"one label per feature: {len(p)} probes / {len(pl)} labels, {len(g)} gallery / {len(gl)} labels"
        )
    bad_p, bad_g = _non_finite_rows(p), _non_finite_rows(g)
    if bad_p or bad_g:
        where = f"{name}: " if name else ""
        raise ValueError(
            f"{where}features contain NaN or inf: {bad_p} of {len(p)} probe and {bad_g} of {len(g)} gallery "
            f"rows ({_NON_FINITE_HINT})"
        )
    if len(g) == 0:
        raise ValueError("the gallery is empty")
    can_mate = (gl != DISTRACTOR)[None, :]
    rows = max(1, int(chunk_elements) // len(g))
    parts = [
        search_scores(p[a : a + rows] @ g.T, (pl[a : a + rows, None] == gl[None, :]) & can_mate, name)
        for a in range(0, len(p), rows)
    ]
    if not parts:
        return Searches(np.zeros(0), np.zeros(0), np.zeros(0))
    return Searches.concat(parts)


def _mated_ranks(rank: np.ndarray) -> np.ndarray:
    r = np.asarray(rank, dtype=np.float64).reshape(-1)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise ValueError("no probe has a mate in the gallery: the CMC is undefined")
    return r


def cmc(rank: np.ndarray, ranks: Sequence[int] = (1, 5, 20)) -> np.ndarray:
    """Closed-set identification rate at each of ``ranks``: the fraction of mated probes (finite
    ``rank``, e.g. ``Searches.rank``) whose best mate is within the top k. ``DIR_FAR(..., FARs=[1.0])``."""
    r = _mated_ranks(rank)
    return np.array([np.count_nonzero(r <= int(k)) / r.size for k in ranks], dtype=np.float64)


def cmc_after_reject(rank: np.ndarray, quality: np.ndarray, reject: float, ranks: Sequence[int] = (1,)) -> np.ndarray:
    """The CMC of the mated probes that remain after rejecting the ``floor(reject * n)`` lowest-quality
    ones (n = mated probes; stable ascending sort, so among equal qualities the earlier go first; the
    same rule as :func:`fiqa.eval.quality_metrics.fnmr_at_fmr`). A quality-aware 1:N view: a useful
    quality rejects the probes that would be missed, and rank-1 rises."""
    r = np.asarray(rank, dtype=np.float64).reshape(-1)
    q = np.asarray(quality, dtype=np.float64).reshape(-1)
    if q.shape != r.shape:
        raise ValueError(f"one quality per probe: {r.size} probes, {q.size} qualities")
    if not 0.0 <= reject < 1.0:
        raise ValueError(f"reject must be in [0, 1), got {reject}")
    mated = np.isfinite(r)
    r, q = r[mated], q[mated]
    if r.size == 0:
        raise ValueError("no probe has a mate in the gallery: the CMC is undefined")
    n_reject = math.floor(reject * r.size)
    if n_reject > 0:
        if np.isnan(q).any():
            raise ValueError("probe qualities contain NaN")
        r = r[np.argsort(q, kind="stable")[n_reject:]]
    return cmc(r, ranks)


def open_set_thresholds(nonmated_max: np.ndarray, fars: Sequence[float], epsilon: float = 1e-5) -> np.ndarray:
    """The score threshold for each FAR: the ``round(n * FAR)``-th highest of the ``n`` non-mated
    searches' max scores (``np.round``, half to even); FAR 0: the highest plus ``epsilon``."""
    s = np.sort(np.asarray(nonmated_max, dtype=np.float64).reshape(-1))[::-1]
    if s.size == 0:
        raise ValueError("open-set identification (FAR < 1) needs at least one non-mated search")
    if not np.all(np.isfinite(s)):
        raise ValueError("non-mated max scores must be finite")
    out = []
    for far in fars:
        if not 0.0 <= far <= 1.0:
            raise ValueError(f"a FAR must be in [0, 1], got {far}")
        k = int(np.round(s.size * far))
        out.append(s[0] + epsilon if k == 0 else s[k - 1])
    return np.asarray(out, dtype=np.float64)


def dir_at_far(
    searches: Searches,
    fars: Sequence[float] = (1.0,),
    ranks: Sequence[int] = (1,),
    nonmated: str = "probes",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(DIR (F, R), achieved FAR (F,), threshold (F,))`` of the searches.

    ``nonmated`` says which searches set the thresholds: ``"probes"`` (the original): the probes
    without a mate; ``"mate_removed"``: every probe, each searched with its own mates removed
    (``nonmate_max``), for sets such as TinyFace whose probes all have mates. A single FAR >= 1 is
    the closed set (threshold ``-inf``, achieved FAR 1)."""
    fars = [float(f) for f in fars]
    mated = searches.has_mate
    rank, mate_score = searches.rank[mated], searches.mate_score[mated]
    if rank.size == 0:
        raise ValueError("no probe has a mate in the gallery: DIR is undefined")
    if len(fars) == 1 and fars[0] >= 1.0:
        thresholds, achieved = np.array([-np.inf]), np.array([1.0])
    else:
        if nonmated == "probes":
            nm = searches.nonmate_max[~mated]
        elif nonmated == "mate_removed":
            nm = searches.nonmate_max[np.isfinite(searches.nonmate_max)]
        else:
            raise ValueError(f"nonmated={nonmated!r} is not valid; choose one of ['probes', 'mate_removed']")
        thresholds = open_set_thresholds(nm, fars)
        achieved = np.array([np.count_nonzero(nm >= t) / nm.size for t in thresholds])
    dirs = np.array(
        [[np.count_nonzero((rank <= int(k)) & (mate_score >= t)) / rank.size for k in ranks] for t in thresholds],
        dtype=np.float64,
    )
    return dirs, achieved, thresholds


def dir_far(
    score_mat: np.ndarray,
    label_mat: np.ndarray,
    ranks: Sequence[int] = (1,),
    fars: Sequence[float] = (1.0,),
    nonmated: str = "probes",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``DIR_FAR`` on a full (P, G) score matrix and its boolean mate matrix: ``(DIR (F, R),
    achieved FAR (F,), threshold (F,))``. ``fars=[1.0]``: the closed-set CMC at ``ranks``."""
    return dir_at_far(search_scores(score_mat, label_mat), fars, ranks, nonmated)
