"""Small quality metrics for validation sets with ground truth (SynthFace) and pair lists.

Pure numpy (scipy for Spearman). No torch, no files, no globals.

- ``quality_spearman``: rank correlation between predicted quality and a known degradation level.
- ``pair_scores`` / ``pair_quality``: per-pair cosine similarity and per-pair quality from
  interleaved (2P, ...) arrays, where pair ``p`` is rows ``2p`` and ``2p+1``.
- ``fnmr_at_fmr``: FNMR at a fixed-threshold operating point, after rejecting the
  lowest-quality pairs. The threshold is set once, on all pairs, before any rejection, as in
  the ISO/IEC 29794-1 EDC. The full ERC (both threshold modes, AUC, pAUC) lives in
  ``fiqa.eval.erc``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from fiqa.eval.verification import l2_normalize, sci_key

__all__ = ["fmr_key", "fmr_threshold", "fnmr_at_fmr", "pair_quality", "pair_scores", "quality_spearman"]

# Slack for products like fmr * n that should be integers but are not in float (0.29 * 100).
_EPS = 1e-9


def fmr_key(fmr: float) -> str:
    """The metric-name part of an FMR: ``fmr_key(1e-2) == "fmr1e-2"``."""
    return "fmr" + sci_key(fmr)


def quality_spearman(quality, degradation) -> float:
    """Spearman's rank correlation between per-image quality and degradation level.

    A good quality method (higher quality = better image) gives a value near -1, because
    quality should fall as degradation rises. The sign is not flipped here.

    Returns ``nan`` without raising or warning when the correlation is undefined:
    - either input is constant (e.g. a quality head that collapsed to one value);
    - there are fewer than 2 samples;
    - either input contains NaN (propagated, as scipy does).
    Raises ValueError when the inputs are not 1-D arrays of the same length.
    """
    q = np.asarray(quality, dtype=np.float64)
    d = np.asarray(degradation, dtype=np.float64)
    if q.ndim != 1 or q.shape != d.shape:
        raise ValueError(f"quality and degradation must be 1-D of the same length, got {q.shape} and {d.shape}")
    if q.size < 2 or np.isnan(q).any() or np.isnan(d).any() or np.all(q == q[0]) or np.all(d == d[0]):
        return float("nan")
    from scipy.stats import spearmanr  # imported here: keep `import fiqa.eval` light

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant inputs can still warn; the result is what matters
        rho = spearmanr(q, d).statistic
    return float(rho)


def _pairs_2p(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] % 2:
        raise ValueError(f"{name} must have 2P rows (pair p = rows 2p, 2p+1), got shape {x.shape}")
    return x


def pair_scores(embeddings) -> np.ndarray:
    """Cosine similarity of rows ``2p`` and ``2p+1`` of a (2P, D) array: (P,), higher = more similar.

    The rows are L2-normalised here, so raw embeddings give the same scores as normalised ones.
    """
    e = _pairs_2p(embeddings, "embeddings")
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (2P, D), got shape {e.shape}")
    e = l2_normalize(e, axis=1)
    return np.sum(e[0::2] * e[1::2], axis=1)


REDUCTIONS = ("min", "mean", "product", "max")


def pair_quality(q1, q2=None, reduce: str = "min") -> np.ndarray:
    """Pair quality from the two images' qualities: ``min`` (CR-FIQA, MagFace, ISO; default),
    ``mean``, ``product`` (for non-negative qualities) or ``max`` (when the score is an uncertainty,
    as PFE). With ``q2=None``, ``q1`` is interleaved (2P,): pair ``p`` is rows ``2p`` and ``2p+1``."""
    a = np.asarray(q1, dtype=np.float64)
    if q2 is None:
        if a.ndim != 1 or a.size % 2:
            raise ValueError(f"interleaved qualities must be 1-D of even length (2P,), got shape {a.shape}")
        a, b = a[0::2], a[1::2]
    else:
        b = np.asarray(q2, dtype=np.float64)
        if a.ndim != 1 or a.shape != b.shape:
            raise ValueError(f"q1 and q2 must be 1-D of the same length, got {a.shape} and {b.shape}")
    ops = {"min": np.minimum, "mean": lambda x, y: (x + y) / 2, "product": np.multiply, "max": np.maximum}
    if reduce not in ops:
        raise ValueError(f"reduce must be one of {list(REDUCTIONS)}, got {reduce!r}")
    return ops[reduce](a, b)


def fmr_threshold(impostor_scores, fmr: float) -> float:
    """The similarity threshold at ``fmr`` (accept iff ``score >= t``) from impostor scores.

    Let ``n`` be the number of impostor scores and ``k = floor(fmr * n)`` the number of
    impostors allowed to be accepted. The threshold is the smallest impostor score ``t`` such
    that ``#{impostor >= t} <= k``:
    - without ties it is the k-th largest impostor score, and the FMR is exactly ``k / n``;
    - if ties make the k-th largest value count more than ``k`` times, ``t`` moves up to the
      next larger impostor score, and the FMR is then below ``k / n``;
    - if the largest impostor score alone occurs more than ``k`` times, ``t`` is the next float
      above it, and no impostor is accepted.
    So the FMR on these scores is never above ``fmr``.

    Raises ValueError when ``k == 0``, that is, with fewer than ``1/fmr`` impostors: the
    operating point is not resolvable.
    """
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64).ravel())
    n = imp.size
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    k = math.floor(fmr * n + _EPS)
    if k < 1:
        need = math.ceil(1.0 / fmr - _EPS)
        raise ValueError(f"FMR={fmr:g} is not resolvable with {n} impostor pairs: at least {need} are needed")
    t = imp[n - k]
    if n - np.searchsorted(imp, t, side="left") > k:  # ties at the k-th largest score
        j = np.searchsorted(imp, t, side="right")
        t = imp[j] if j < n else np.nextafter(t, np.inf)
    return float(t)


def fnmr_at_fmr(scores, issame, fmr: float, reject: float = 0.0, pair_quality=None) -> dict:
    """FNMR at a fixed threshold, after rejecting the lowest-quality fraction of pairs.

    The EDC procedure, "fixed threshold" per ISO/IEC 29794-1:

    1. The threshold ``t = fmr_threshold(impostor scores of ALL pairs, fmr)`` is set once,
       before any rejection. A pair is accepted iff ``score >= t``.
    2. The ``floor(reject * N)`` pairs with the lowest ``pair_quality`` are rejected, where N
       counts all pairs (genuine and impostor), as in CR-FIQA's ERC. The count is
       ``floor(reject * N)`` evaluated in floating point, like CR-FIQA's ``int(r * N)``. The pairs are ordered by
       a stable ascending sort, so among equal qualities the earlier pairs go first.
    3. ``fnmr`` = the fraction of the kept genuine pairs with ``score < t``. It is NaN when no
       genuine pair is kept.

    ``scores`` are similarities (higher = more similar, e.g. ``pair_scores``). ``pair_quality``
    is (P,), higher = better, e.g. ``pair_quality(q)`` = min of the two image qualities. It is
    needed only when ``reject > 0``.

    Returns ``{"fnmr": float, "threshold": float, "n_kept": int}``, where ``n_kept`` is the
    number of pairs (genuine and impostor) left after rejection.
    """
    s = np.asarray(scores, dtype=np.float64)
    same = np.asarray(issame)
    if s.ndim != 1 or same.shape != s.shape:
        raise ValueError(f"scores and issame must be 1-D of the same length, got {s.shape} and {same.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    same = same.astype(bool)
    if not 0.0 <= reject < 1.0:
        raise ValueError(f"reject must be in [0, 1), got {reject}")
    n = s.size
    n_reject = math.floor(reject * n)
    keep = np.arange(n)
    if n_reject > 0:
        if pair_quality is None:
            raise ValueError("reject > 0 needs pair_quality (one value per pair)")
        pq = np.asarray(pair_quality, dtype=np.float64)
        if pq.shape != s.shape:
            raise ValueError(f"pair_quality must have one value per pair: {n} pairs, got shape {pq.shape}")
        if np.isnan(pq).any():
            raise ValueError("pair_quality contains NaN")
        keep = np.argsort(pq, kind="stable")[n_reject:]

    t = fmr_threshold(s[~same], fmr)
    genuine = s[keep][same[keep]]
    fnmr = float(np.mean(genuine < t)) if genuine.size else float("nan")
    return {"fnmr": fnmr, "threshold": t, "n_kept": int(keep.size)}
