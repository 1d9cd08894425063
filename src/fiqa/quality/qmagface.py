"""QMagFace: a quality-aware comparison score on raw MagFace embeddings, and the fit of its two
scalars (reference ``methods_crfiqa_serfiq_magface_qmagface.md`` §5). Pure numpy (+ scipy's expit).

Score (§5.1), for a pair with cosine similarity ``s`` and magnitudes (qualities) ``q1, q2``::

    omega(s) = min(0, beta * s - alpha)
    score    = omega(s) * min(q1, q2) + s

Only pairs with ``s < alpha / beta`` are changed; the published ``alpha, beta`` are in :data:`PRESETS`.

Fit (§5.2), :func:`fit` = :func:`generate_pairs` -> :func:`pair_scores` -> :func:`fit_scores`:

1. pairs: per identity up to ``limit=10`` random images, all their genuine pairs, and for each
   genuine pair ``(i, j)`` ``n_impostors=5`` random impostors for ``i`` and 5 for ``j``;
2. ``fmrs = logspace(1e-5, 1e-2, 50)``; ``omegas = linspace(-w, w, 20)`` with ``w = 0.5 / max(q)``;
3. per omega: ROC of ``expit(omega * q + s)`` (``sklearn.metrics.roc_curve`` semantics, incl. its
   dropped collinear points and the leading ``(0, 0, inf)`` point); per target FMR ``f``, among the
   ROC points with ``fpr < f`` the first one with the largest TPR: its FNMR and its threshold;
4. per FMR the omega with the lowest FNMR (first on ties) and its threshold ``t_f``;
5. least squares ``omega_opt ~ m * t + b`` over the 50 FMRs: ``beta = m``, ``alpha = -b``.
   Note ``t`` lives in sigmoid space while ``omega(s)`` is applied to the raw cosine at test time;
   that is what produced the published constants, so it is reproduced as is.

Where the reference leaves room, this module chooses (and documents):

* Pair generation is seeded (``seed``; the original used the unseeded global ``np.random``). The
  random draws are, per identity in ascending label order: ``rng.choice(members, limit,
  replace=False)`` only when the identity has more than ``limit`` images (members in ascending index
  order), then, if it has at least one genuine pair, one ``rng.integers(0, N - n_id, (pairs, 2,
  n_impostors))``; draw ``[p, 0, k]`` (``[p, 1, k]``) is the k-th impostor of the first (second)
  image of genuine pair ``p``, pairs in ``i < j`` order of the chosen images, and a draw ``r`` names
  the r-th image (ascending index) of another identity. The original's final shuffle is left out:
  the ROC does not depend on the order of the pairs.
* Cosines and magnitudes are computed in float64 (the original kept the embeddings' dtype).
* If every FMR picks the same threshold, the regression is degenerate; like sklearn's
  ``LinearRegression`` (minimum-norm least squares) it then gives ``beta = 0``, ``alpha = -mean(omega)``,
  with a ``RuntimeWarning``.
* If at some FMR no omega reaches a TPR above 0 (too few impostor pairs for that FMR), the
  threshold would be the ROC's ``inf``; the original then fails inside the regression, here a
  ``ValueError`` says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

# the score and its published constants live with the evaluation protocols that apply them (IJB, pairs);
# they are this module's public API too (``fiqa.quality.qmagface.score``)
from fiqa.eval.qmagface_score import PRESETS, get_preset, score

__all__ = ["PRESETS", "fit", "fit_scores", "generate_pairs", "get_preset", "pair_scores", "roc_points", "score"]


# ------------------------------------------------------------------------------------------ pairs
def generate_pairs(labels, *, limit: int = 10, n_impostors: int = 5, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs as in the paper (see the module docstring for the exact random protocol).

    Returns ``pairs`` (P, 2) int64 image indices and ``matches`` (P,) bool (genuine first, then the
    impostors). ``seed``: an int, a ``numpy.random.Generator`` or None (unseeded, as the original).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (one identity per image), got shape {labels.shape}")
    if limit < 2 or n_impostors < 1:
        raise ValueError(f"need limit >= 2 and n_impostors >= 1, got limit={limit}, n_impostors={n_impostors}")
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    order = np.argsort(labels, kind="stable")  # members of each identity stay in ascending index order
    ids, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    if ids.size < 2:
        raise ValueError(f"QMagFace pairs need at least two identities, got {ids.size}")
    genuine, impostor = [], []
    for start, count in zip(starts, counts):
        members = order[start : start + count]
        chosen = rng.choice(members, limit, replace=False) if count > limit else members
        k = chosen.size
        if k < 2:
            continue
        i, j = np.triu_indices(k, 1)
        draws = rng.integers(0, n - count, size=(i.size, 2, n_impostors))
        # the r-th image of another identity: r plus the members of this one that precede it
        others = draws + np.searchsorted(members - np.arange(count), draws, side="right")
        genuine.append(np.stack([chosen[i], chosen[j]], axis=1))
        firsts = np.stack([chosen[i], chosen[j]], axis=1)[:, :, None]  # (pairs, 2, 1)
        impostor.append(np.stack(np.broadcast_arrays(firsts, others), axis=-1).reshape(-1, 2))
    if not genuine:
        raise ValueError("QMagFace pairs need at least one identity with two or more images")
    genuine, impostor = np.concatenate(genuine), np.concatenate(impostor)
    pairs = np.concatenate([genuine, impostor]).astype(np.int64)
    matches = np.zeros(len(pairs), dtype=bool)
    matches[: len(genuine)] = True
    return pairs, matches


def pair_scores(embeddings, pairs, qualities=None, *, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity ``s`` and pair quality ``q = min(q_a, q_b)`` of each pair (float64).

    ``qualities`` defaults to the embedding magnitudes ``||f||`` (MagFace); zero rows have cosine 0.
    """
    f = np.asarray(embeddings, dtype=np.float64)
    pairs = np.asarray(pairs)
    if f.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {f.shape}")
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2) image indices, got shape {pairs.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", f, f))
    q_img = norms if qualities is None else np.asarray(qualities, dtype=np.float64)
    if q_img.shape != (f.shape[0],):
        raise ValueError(f"qualities must have one value per embedding ({f.shape[0]}), got shape {q_img.shape}")
    fn = f / np.where(norms == 0, 1.0, norms)[:, None]
    s = np.empty(len(pairs))
    for lo in range(0, len(pairs), chunk):
        a, b = pairs[lo : lo + chunk, 0], pairs[lo : lo + chunk, 1]
        s[lo : lo + chunk] = np.einsum("ij,ij->i", fn[a], fn[b])
    return s, np.minimum(q_img[pairs[:, 0]], q_img[pairs[:, 1]])


# ------------------------------------------------------------------------------------------ fit
@dataclass(frozen=True)
class QMagFaceFit:
    """Everything the fit computed. ``fnmr`` and ``thresholds`` are (len(omegas), len(fmrs))."""

    alpha: float
    beta: float
    fmrs: np.ndarray
    omegas: np.ndarray
    fnmr: np.ndarray
    thresholds: np.ndarray
    best_omega: np.ndarray  # per FMR
    best_threshold: np.ndarray  # per FMR, in sigmoid space


def roc_points(matches, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` with the semantics of ``sklearn.metrics.roc_curve`` (defaults):
    one point per distinct score (accept ``score >= threshold``), collinear intermediate points
    dropped, and a leading ``(0, 0, inf)`` point."""
    y = np.asarray(matches, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores)[::-1]  # tied scores become one point, so the sort needs no stability
    ss = scores[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]  # last index of each distinct score
    tps = np.cumsum(y[order])[last].astype(np.float64)
    fps = 1.0 + last - tps
    thr = ss[last]
    if fps.size > 2:
        keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps, tps, thr = np.r_[0.0, fps], np.r_[0.0, tps], np.r_[np.inf, thr]
    return fps / fps[-1], tps / tps[-1], thr


def _operating_points(fpr, tpr, thr, fmrs) -> tuple[np.ndarray, np.ndarray]:
    """Per target FMR f: among the points with ``fpr < f``, the first one with the largest TPR
    (``argmin(1 - tpr[fpr < f])``); its FNMR and threshold. fpr and tpr are non-decreasing."""
    n_below = np.searchsorted(fpr, fmrs, side="left")  # points with fpr < f (always >= 1: fpr[0] = 0)
    idx = np.searchsorted(tpr, tpr[n_below - 1], side="left")
    return 1.0 - tpr[idx], thr[idx]


def fit_scores(
    s,
    q,
    matches,
    *,
    weights_num: int = 20,
    fmr_num: int = 50,
    fmr_min: float = 1e-5,
    fmr_max: float = 1e-2,
    max_ratio: float = 0.5,
) -> QMagFaceFit:
    """Fit ``alpha, beta`` on pair cosines ``s``, pair qualities ``q`` and ``matches`` (genuine = True)."""
    s = np.asarray(s, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    y = np.asarray(matches, dtype=bool)
    if not (s.ndim == 1 and s.shape == q.shape == y.shape):
        raise ValueError(f"s, q and matches must be 1-D of one length, got {s.shape}, {q.shape}, {y.shape}")
    if not (np.isfinite(s).all() and np.isfinite(q).all()):
        raise ValueError("s and q must be finite")
    if y.all() or not y.any():
        raise ValueError(f"need genuine and impostor pairs, got {int(y.sum())} genuine of {y.size}")
    if q.max() <= 0:
        raise ValueError(f"the omega grid is +-{max_ratio}/max(q) and needs max(q) > 0, got {q.max()}")
    if not 0 < fmr_min <= fmr_max < 1 or weights_num < 1 or fmr_num < 1:
        raise ValueError(
            f"need 0 < fmr_min <= fmr_max < 1, weights_num >= 1 and fmr_num >= 1, got fmr_min={fmr_min}, "
            f"fmr_max={fmr_max}, weights_num={weights_num}, fmr_num={fmr_num}"
        )

    fmrs = np.logspace(np.log10(fmr_min), np.log10(fmr_max), num=fmr_num)
    max_omega = max_ratio / np.max(q)
    omegas = np.linspace(-max_omega, max_omega, num=weights_num)
    fnmr = np.empty((weights_num, fmr_num))
    thresholds = np.empty((weights_num, fmr_num))
    for w, omega in enumerate(omegas):
        fpr, tpr, thr = roc_points(y, expit(omega * q + s))
        fnmr[w], thresholds[w] = _operating_points(fpr, tpr, thr, fmrs)

    best = np.argmin(fnmr, axis=0)  # first minimum, per FMR
    cols = np.arange(fmr_num)
    t, omega_opt = thresholds[best, cols], omegas[best]
    if not np.isfinite(t).all():
        bad = fmrs[~np.isfinite(t)]
        raise ValueError(
            f"no omega accepts any genuine pair at FMR {bad.min():.3g}: there are {int((~y).sum())} impostor "
            f"pairs, too few for FMRs below about 1/{int((~y).sum())}; raise fmr_min or use more images"
        )
    t_c = t - t.mean()
    var = float(t_c @ t_c)
    if var == 0.0:
        warnings.warn(
            "QMagFace fit: every FMR picked the same threshold, the line is undetermined; beta = 0",
            RuntimeWarning,
            stacklevel=2,
        )
        m = 0.0
    else:
        m = float(t_c @ (omega_opt - omega_opt.mean())) / var
    b = float(omega_opt.mean() - m * t.mean())
    return QMagFaceFit(
        alpha=-b,
        beta=m,
        fmrs=fmrs,
        omegas=omegas,
        fnmr=fnmr,
        thresholds=thresholds,
        best_omega=omega_opt,
        best_threshold=t,
    )


def fit(
    embeddings,
    labels,
    qualities=None,
    *,
    pairs=None,
    limit: int = 10,
    n_impostors: int = 5,
    weights_num: int = 20,
    fmr_num: int = 50,
    fmr_min: float = 1e-5,
    fmr_max: float = 1e-2,
    max_ratio: float = 0.5,
    seed=0,
) -> tuple[float, float]:
    """``(alpha, beta)`` fitted as in the paper on raw embeddings (N, D) with identity ``labels`` (N,).

    ``qualities`` (N,) defaults to ``||f||`` (MagFace). ``pairs`` (P, 2) replaces the generated
    pairs (a pair is genuine when its two labels are equal); otherwise :func:`generate_pairs` draws
    them with ``limit``, ``n_impostors`` and ``seed``. The rest goes to :func:`fit_scores`.
    """
    labels = np.asarray(labels)
    n = np.shape(embeddings)[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have one entry per embedding ({n}), got shape {labels.shape}")
    if pairs is None:
        pairs, matches = generate_pairs(labels, limit=limit, n_impostors=n_impostors, seed=seed)
    else:
        pairs = np.asarray(pairs, dtype=np.int64)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must be (P, 2) image indices, got shape {pairs.shape}")
        matches = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    s, q = pair_scores(embeddings, pairs, qualities)
    result = fit_scores(
        s,
        q,
        matches,
        weights_num=weights_num,
        fmr_num=fmr_num,
        fmr_min=fmr_min,
        fmr_max=fmr_max,
        max_ratio=max_ratio,
    )
    return result.alpha, result.beta
