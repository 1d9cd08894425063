"""Error versus Discard Characteristic (EDC), ISO/IEC 29794-1 style. Pure numpy.

The conventions are those of ISO/IEC 29794-1 (2024), Schlett et al. (arXiv 2303.13294) and their
reference code (dasec ``edc.py``):

- the comparisons are of one kind: mated ones for the FNM-EDC (``error="fnmr"``), non-mated ones for
  the FM-EDC (``error="fmr"``). Scores are similarities (higher = more similar);
- the threshold is fixed once, before anything is discarded: explicit, or
  ``np.quantile(scores, starting_error)`` (FNM-EDC) / ``np.quantile(scores, 1 - starting_error)``
  (FM-EDC), or ``np.quantile(scores, quantile)``;
- errors: ``score < threshold`` (FNMR) or ``score >= threshold`` (FMR);
- comparisons are discarded in ascending order of pair quality, and only where the quality changes,
  so comparisons of equal quality go together. At discard count ``k`` (a quality change),
  ``error_fraction = remaining errors / (n - k)`` and ``discard_fraction = k / n``; the point
  ``(1, 0)`` closes the curve;
- pAUC: the stepwise integral up to ``limit`` (default 0.2), minus the area under the theoretical
  best curve ``max(e0 - x, 0)``: ``e0**2 / 2``, less ``(e0 - limit)**2 / 2`` when ``limit < e0``.

One sort of the qualities and a cumulative count of the errors: no loop.
``fiqa.eval.erc.erc(mode="fixed")`` uses this with the threshold at an FMR on all non-mated scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fiqa.eval.quality_metrics import _EPS

__all__ = ["EDC", "ERRORS", "edc", "edc_curve", "fixed_threshold_erc", "quality_changes"]

ERRORS = ("fnmr", "fmr")


@dataclass(frozen=True)
class EDC:
    """An EDC curve. ``discard_fractions``/``error_fractions`` (M+1,) include the closing (1, 0) point;
    ``discard_counts``/``error_counts`` (M,) are the integer counts at the M quality changes (the first
    is 0 discarded)."""

    error: str
    threshold: float
    n: int
    discard_counts: np.ndarray
    error_counts: np.ndarray
    discard_fractions: np.ndarray
    error_fractions: np.ndarray

    @property
    def starting_error(self) -> float:
        return float(self.error_fractions[0])

    def pauc(self, limit: float = 0.2, subtract_best: bool = True) -> float:
        """Stepwise area under the curve on ``[0, limit]``, minus :meth:`theoretical_best` by default."""
        if not 0.0 <= limit <= 1.0:
            raise ValueError(f"limit must be in [0, 1], got {limit}")
        if limit == 0:
            return 0.0
        x, e = self.discard_fractions, self.error_fractions
        # The step of point m ends where the next point starts, or at the limit: the first m with x[m+1] >= limit.
        m = min(int(np.searchsorted(x[1:], limit, side="left")), x.size - 1)
        area = float(np.sum(e[:m] * np.diff(x[: m + 1])) + e[m] * (limit - x[m]))
        return area - self.theoretical_best(limit) if subtract_best else area

    def theoretical_best(self, limit: float = 0.2) -> float:
        """Area under ``max(e0 - x, 0)`` on ``[0, limit]``, with ``e0`` the error at 0 % discarded."""
        e0 = self.starting_error
        area = e0**2 / 2
        if limit < e0:
            area -= (e0 - limit) ** 2 / 2
        return area

    def at(self, reject) -> np.ndarray:
        """The error after discarding at most ``int(r * n)`` comparisons, rounded down to a quality
        change (the value of the step curve at ``r``), for every ``r`` in ``reject``."""
        cap = (np.asarray(reject, np.float64) * self.n).astype(np.int64)
        m = np.searchsorted(self.discard_counts, cap, side="right") - 1
        return self.error_fractions[np.maximum(m, 0)]

    def remaining(self, reject) -> np.ndarray:
        """The number of comparisons left at every ``r`` of ``reject`` (the counterpart of :meth:`at`)."""
        cap = (np.asarray(reject, np.float64) * self.n).astype(np.int64)
        m = np.searchsorted(self.discard_counts, cap, side="right") - 1
        return self.n - self.discard_counts[np.maximum(m, 0)]


def quality_changes(q_sorted: np.ndarray) -> np.ndarray:
    """The discard counts of an EDC: 0 and every index where the ascending qualities change."""
    return np.concatenate(([0], np.flatnonzero(q_sorted[1:] != q_sorted[:-1]) + 1)).astype(np.int64)


def edc_curve(q_sorted: np.ndarray, errors: np.ndarray, error: str, threshold: float, discard=None) -> EDC:
    """The EDC from the ascending pair qualities and the error flags in that order (any order among
    equal qualities: only the counts at quality changes matter). ``discard``: ``quality_changes(q_sorted)``."""
    n = q_sorted.size
    discard = quality_changes(q_sorted) if discard is None else discard
    before = np.concatenate(([0], np.cumsum(errors, dtype=np.int64)))  # errors among the first k
    err = before[-1] - before[discard]
    return EDC(
        error=error,
        threshold=float(threshold),
        n=int(n),
        discard_counts=discard,
        error_counts=err,
        discard_fractions=np.concatenate((discard / n, [1.0])),
        error_fractions=np.concatenate((err / (n - discard), [0.0])),
    )


def edc(
    scores,
    pair_q,
    *,
    error: str = "fnmr",
    threshold: float | None = None,
    starting_error: float | None = None,
    quantile: float | None = None,
    higher_quality_is_better: bool = True,
) -> EDC:
    """The EDC of one kind of comparisons (see the module docstring).

    ``scores`` (P,): similarities of mated comparisons (``error="fnmr"``) or of non-mated ones
    (``error="fmr"``); ``pair_q`` (P,): their pair qualities (e.g. ``fiqa.eval.erc.pair_quality``).
    Exactly one of ``threshold``, ``starting_error`` or ``quantile`` sets the fixed threshold.
    ``higher_quality_is_better=False`` discards the highest values first (an uncertainty).
    """
    s = np.asarray(scores, dtype=np.float64)
    q = np.asarray(pair_q, dtype=np.float64)
    if s.ndim != 1 or q.shape != s.shape:
        raise ValueError(f"scores and pair_q must be 1-D of the same length, got {s.shape} and {q.shape}")
    if s.size == 0:
        raise ValueError("edc needs at least one comparison")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    if np.isnan(q).any():
        raise ValueError("pair_q contains NaN")
    if error not in ERRORS:
        raise ValueError(f"error must be one of {list(ERRORS)}, got {error!r}")
    given = [v is not None for v in (threshold, starting_error, quantile)]
    if sum(given) != 1:
        raise ValueError("give exactly one of threshold, starting_error or quantile")
    if threshold is None:
        level = quantile if quantile is not None else starting_error
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"starting_error / quantile must be in [0, 1], got {level}")
        if starting_error is not None and error == "fmr":
            level = 1 - level
        threshold = float(np.quantile(s, level))
    elif not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    order = np.argsort(q if higher_quality_is_better else -q)  # ties: any order (see edc_curve)
    s, q = s[order], q[order]
    errors = s < threshold if error == "fnmr" else s >= threshold
    return edc_curve(q if higher_quality_is_better else -q, errors, error, threshold)


def fixed_threshold_erc(d, same, key, reject, fmrs):
    """``fiqa.eval.erc.erc(mode="fixed")``: per FMR, the threshold ``t = fmr_threshold(-d[impostors])``
    on all impostors before any discard (accept iff ``-d >= t``), then the FNM-EDC of the genuine pairs
    (distances ``d``, qualities ``key``, higher = better) sampled at the reject grid: at most
    ``int(r * n_genuine)`` discarded, rounded down to a quality change. An FMR the impostors cannot
    resolve gives NaN. Returns (fnmr (R, F), distance threshold ``-t`` (R, F), genuine pairs kept (R,),
    [EDC or None per FMR])."""
    gen_at = np.flatnonzero(same)
    if gen_at.size == 0:
        raise ValueError("mode='fixed' needs at least one genuine pair")
    d_imp = d.take(np.flatnonzero(~same))
    sim_gen, q_gen = -d.take(gen_at), key.take(gen_at)
    order = np.argsort(q_gen)  # ties in any order: only the counts at quality changes matter
    q_sorted, sim_gen = q_gen[order], sim_gen[order]
    discard = quality_changes(q_sorted)
    thresholds = _top_fmr_thresholds(d_imp, fmrs)
    fnmr, thr = np.full((reject.size, fmrs.size), np.nan), np.full((reject.size, fmrs.size), np.nan)
    n_kept, edcs = np.full(reject.size, sim_gen.size), []
    for f, t in enumerate(thresholds):
        if t is None:  # too few impostors for this FMR
            edcs.append(None)
            continue
        e = edc_curve(q_sorted, sim_gen < t, "fnmr", t, discard)
        edcs.append(e)
        fnmr[:, f], thr[:, f], n_kept = e.at(reject), -t, e.remaining(reject)
    return fnmr, thr, n_kept, edcs


def _top_fmr_thresholds(d_imp: np.ndarray, fmrs) -> list:
    """``fmr_threshold(-d_imp, fmr)`` for every FMR (None where it raises: not resolvable), from the
    impostors' highest similarities only: all values down to the (k+1)-th highest, ``k`` the largest count
    an FMR allows, so every value and tie ``fmr_threshold`` reads is there (no sort of all impostors)."""
    n = d_imp.size
    counts = [math.floor(float(fmr) * n + _EPS) for fmr in fmrs]
    if n == 0 or max(counts) < 1:
        return [None] * len(counts)
    k = min(max(counts) + 1, n)
    low = np.partition(d_imp, k - 1)[k - 1] if k < n else np.inf
    top = np.sort(-d_imp[d_imp <= low])  # ascending similarities: every one >= the (k+1)-th highest
    m = top.size
    out = []
    for c in counts:
        if c < 1:
            out.append(None)
            continue
        t = top[m - c]  # the c-th highest
        if m - np.searchsorted(top, t, side="left") > c:  # ties at the c-th highest score
            j = np.searchsorted(top, t, side="right")
            t = top[j] if j < m else np.nextafter(t, np.inf)
        out.append(float(t))
    return out
