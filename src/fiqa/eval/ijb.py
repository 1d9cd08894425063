"""IJB-B / IJB-C: template aggregation, 1:1 verification and 1:N identification. Pure numpy.

Facts from ``shared/reference/data_and_eval.md`` §3 (insightface ``ijb_11.py`` / ``ijb_1n.py``,
arcface_torch ``eval_ijbc.py``, AdaFace ``validation_mixed``) and the methods references.

**Aggregation** (:func:`aggregate`), per image ``f_i`` = the flip-fused raw embedding ``e(x) + e(flip x)``:

- ``norm_score=True`` keeps ``f_i`` (insightface's ``use_norm_score``); ``False`` uses ``f_i / ||f_i||``;
- ``detector_score=True`` multiplies by the detector's faceness (insightface's ``use_detector_score``);
- ``weighting``, with the per-image quality ``q_i`` of any method (higher = better):

  * ``none``: ``g_m = mean_{i in m} f_i`` per media, ``t_T = l2(sum_m g_m)`` (insightface, arcface_torch, AdaFace);
  * ``crfiqa`` (CR-FIQA ``eval_ijbc_qs.py``): ``q' = (q - min q) / (max q - min q)`` over all images of the set,
    ``f_i *= q'_i / sum q'``, then the ``none`` pooling. ``max q == min q`` gives ``q' = 1`` (the original
    divides by zero). A template whose images all have ``q' = 0`` gets a zero vector, hence score 0 with
    every template (sklearn's ``normalize`` keeps zero rows, as here);
  * ``eqface`` (EQFace QWFA): the EQFace code has no IJB or QWFA code (methods reference §3.5: the numbers
    come from the paper only), so the documented nearest is implemented: the quality-weighted mean of the
    template's images, ``t_T = l2(sum_i q_i f_i / sum_i q_i)``, with no media step (the paper aggregates a
    template or a video as one set of images). ``quality_threshold=s_th`` gives QWFAF: images with
    ``q_i < s_th`` get weight 0, unless no image of the template reaches ``s_th`` (then all are kept: our
    choice). Qualities must be ``>= 0``; a template whose weights sum to 0 falls back to the plain mean;
  * ``qmagface`` (QMagFace ``combine_weighted_f_q``, methods reference §5.3): per media with more than one
    image ``f = sum q_i f_i``, ``q = sum q_i^2 / sum q_i``, output ``f / ||f|| * q`` (a single-image media
    is left as ``(f_i, q_i)``); then the same over the media of the template, giving ``(t_T, q_T)``.
    ``q_T`` is the template's quality for QMagFace's score ``min(0, beta s - alpha) min(q_T1, q_T2) + s``
    (the original recovers it as ``feat[:, 0] / normalized_feat[:, 0]``; ``q_T`` is kept exactly here).
    With ``q_i = ||f_i||`` (MagFace magnitudes) and ``norm_score=True`` this is QMagFace's rule. Qualities
    must be ``> 0``.

Templates are L2-normalised (a zero vector stays zero). The template quality used for the ERC is the
minimum image quality of the template (CR-FIQA ``IJB-C Evaluation``); a pair's quality is the minimum of
its two templates'. The images are processed in chunks of whole templates, sorted by (template, media),
with sparse group sums: no Python loop over templates, and float64 sums.

**1:1** (:func:`verify`): template-pair cosines, computed as blocks of template-by-template products
(``A[rows] @ B.T``) when the pairs cover enough of the grid of their templates (IJB-B/C: about 23 %),
else as gathered row products in blocks; no Python loop over pairs. ROC exactly as
``sklearn.metrics.roc_curve(labels, scores)`` (``drop_intermediate=True``), built from two sorts
(:func:`roc_curve`). TAR@FAR for FAR in 1e-6 ... 1e-1:

- ``tar@far<x>``: insightface's ``write_result``: ``flipud`` both arrays, ``argmin |fpr - x|`` (the first
  in flipped order on ties, i.e. the largest TPR): the *nearest* FPR, which may exceed ``x``;
- ``tar_strict@far<x>``: the largest TPR over all thresholds with ``FPR <= x`` (every distinct score
  value, not only the ROC's corners);
- ``roc_auc``: trapezoid of the ROC (``sklearn.metrics.auc``).

**1:N** (:func:`identify`): gallery = all listed gallery templates (IJB-C G1 + G2, IJB-B S1 + S2), probes
from the ``*_1N_probe_mixed.csv``; ``sim = P @ G.T`` of the unit templates. Every subject must have one
gallery template (insightface raises otherwise, so does this). Probes whose subject has no gallery
template are non-mated searches: they count only in the NIST variant.

- ``rank<k>``: fraction of mated probes whose mate is among the top ``k``. The (0-based) rank is the
  number of non-mate gallery templates scoring *at least* the mate's similarity: **a tie counts against
  the mate**. insightface ranks by ``argsort(-sim)``, whose order among equal scores is numpy's (the
  gallery order in practice), so a tie is decided by where the mate sits in the gallery, not by the
  model. The pessimistic rule is deterministic and gives a collapsed model (all templates equal, or
  zero: every score ties) rank-k = 0 for every k below the gallery size, never 1.0 (which W&B, keeping
  the max of ``rank*``, would show for the rest of the run). Without ties it is the argsort's rank. The
  same rule as :func:`fiqa.eval.identification.search_scores`;
- ``tpir@fpir<x>`` (insightface ``ijb_1n.py``, non-standard): ``k = ceil(n_probe x)``, ``th`` = the k-th
  largest of all non-mate similarities of the mated probes (every score but the mate's),
  ``TPIR = mean(mate_sim > th)``. Computed on a copy (insightface overwrites ``similarity`` in place);
- ``tpir_nist@fpir<x>`` (NIST open-set, our definition): per gallery split ``s`` (G1, G2: ``gallery_split``),
  the mated searches are the probes whose mate is in ``s``, the non-mated searches the others; the
  threshold ``T`` is the ``(m+1)``-th largest of the non-mated searches' top scores with
  ``m = floor(x n_nonmated)`` (so that ``#{top > T} <= x n_nonmated``: FPIR <= x); TPIR = fraction of
  mated searches whose mate is at rank ``<= nist_rank`` (default 1; ties against the mate, as above)
  with a score ``> T``; the reported value
  is the mean over the splits (the IJB-C convention of averaging G1 and G2). A split without non-mated
  searches (a single closed gallery) uses leave-mate-out: each mated search, with its mate removed, is also
  a non-mated search.

Both thresholded rates compare ``mate_sim > threshold`` strictly (insightface's own rule), so a mate
tied with the threshold also fails: a collapsed model scores 0 there too.

**Finite features.** Image embeddings, aggregated templates and the features given to :func:`verify` /
:func:`identify` must be finite; otherwise a ValueError names the set (``name``, the val set's name when
called through :func:`fiqa.eval.protocols.ijb`) and says how many rows are NaN or inf. NaN compares as
"not greater" and would silently rank a diverged model's mate first. A zero embedding is finite and
stays a zero template (score 0 with every template, e.g. CR-FIQA's weighting with ``q' = 0``): a model
that collapsed to zero gets every score tied, hence rank-k = 0 below the gallery size, not an error; a
zero feature that a caller divided by its zero norm (NaN) is the error above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fiqa.eval.verification import far_key, l2_normalize, sci_key

__all__ = [
    "FARS",
    "FPIRS",
    "RANKS",
    "WEIGHTINGS",
    "Templates",
    "aggregate",
    "evaluate",
    "identify",
    "pair_scores",
    "roc_curve",
    "roc_points",
    "tar_at_far",
    "template_rows",
    "verify",
]

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (1e-2, 1e-1)
RANKS = (1, 5, 10)
WEIGHTINGS = ("none", "crfiqa", "eqface", "qmagface")
SCORES = ("cosine", "qmagface")
_EPS = 1e-12


# ---- aggregation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Templates:
    """Aggregated templates: ``ids`` (T,) sorted template ids; ``features`` (T, D) float32 unit rows;
    ``quality`` (T,) min image quality (NaN without qualities); ``weight`` (T,) QMagFace's ``q_T``
    (``weighting="qmagface"`` only, else None)."""

    ids: np.ndarray
    features: np.ndarray
    quality: np.ndarray
    weight: np.ndarray | None = None

    def rows(self, template_ids, what: str = "templates") -> np.ndarray:
        """Row of each template id (see :func:`template_rows`)."""
        return template_rows(self.ids, template_ids, what)


def template_rows(ids: np.ndarray, query, what: str = "templates") -> np.ndarray:
    """Positions of the template ids ``query`` in the sorted unique ``ids`` (int32 when they fit); a
    template with no image raises a ValueError naming it (``what`` says where it came from)."""
    q = np.asarray(query)
    if not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"{what}: template ids must be integers, got {q.dtype}")
    q = q.astype(np.int64, copy=False)
    out_t = np.int32 if ids.size < 2**31 else np.int64
    if ids.size and ids[0] >= 0 and ids[-1] < 64 * ids.size + (1 << 20):  # ids dense enough: a lookup table
        lut = np.full(int(ids[-1]) + 1, -1, out_t)
        lut[ids] = np.arange(ids.size, dtype=out_t)
        rows = np.full(q.shape, -1, out_t)
        ok = (q >= 0) & (q <= ids[-1])
        rows[ok] = lut[q[ok]]
    else:
        pos = np.searchsorted(ids, q)
        hit = (pos < ids.size) & (ids[np.minimum(pos, max(ids.size - 1, 0))] == q) if ids.size else pos < 0
        rows = np.where(hit, pos, -1).astype(out_t)
    bad = np.flatnonzero(rows < 0)
    if bad.size:
        missing = np.unique(q.ravel()[bad])
        raise ValueError(
            f"{what}: template {int(missing[0])} (and {missing.size - 1} more) has no image in the "
            f"template/media list (e.g. *_face_tid_mid.txt)"
        )
    return rows


_NON_FINITE_HINT = "a diverged model, or a collapsed one whose zero features were divided by their zero norm"


def _non_finite_rows(x: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isfinite(x).all(axis=1))) if x.size else 0


def _require_finite(x: np.ndarray, what: str, name: str) -> None:
    """ValueError naming the set when rows of the 2-D ``x`` hold NaN or inf."""
    bad = _non_finite_rows(x)
    if bad:
        raise ValueError(f"{name}: {bad} of {x.shape[0]} {what} are NaN or inf ({_NON_FINITE_HINT})")


def _as_1d(x, n: int, name: str, dtype=np.float64) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per image), got {a.shape}")
    return a


def _chunks(t_start: np.ndarray, n: int, size: int) -> np.ndarray:
    """Chunk boundaries over sorted images, on template starts, about ``size`` images each."""
    cuts = t_start[np.minimum(np.searchsorted(t_start, np.arange(0, n, max(int(size), 1))), t_start.size - 1)]
    return np.unique(np.concatenate([cuts, [n]]))


def _group_sum(x: np.ndarray, starts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Sums of the (weighted) rows of ``x`` in the contiguous groups beginning at ``starts``: a sparse
    (groups x rows) product, ~30x faster than ``np.add.reduceat`` along axis 0; same sums, in row order."""
    from scipy.sparse import csr_array

    n = x.shape[0]
    data = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    m = csr_array((data, np.arange(n), np.r_[starts, n]), shape=(starts.size, n))
    return np.asarray(m @ x)


def aggregate(
    features,
    template_ids,
    media_ids,
    *,
    qualities=None,
    faceness=None,
    norm_score: bool = True,
    detector_score: bool = False,
    weighting: str = "none",
    quality_threshold: float | None = None,
    chunk_images: int = 1 << 15,
    dtype=np.float32,
    name: str = "IJB",
) -> Templates:
    """Template features from per-image features (module docstring). ``features`` (N, D), any float
    dtype (not copied as a whole); ``template_ids``, ``media_ids`` (N,) integers; ``qualities`` (N,)
    (needed by every ``weighting`` but ``none``, and for ``Templates.quality``); ``faceness`` (N,)
    (needed by ``detector_score``). Sums are float64; the unit templates are returned as ``dtype``.
    ``chunk_images``: images per chunk (whole templates; the result does not depend on it).
    Non-finite embeddings or templates raise a ValueError naming the set ``name`` (module docstring)."""
    f = np.asarray(features)
    if f.ndim != 2 or not np.issubdtype(f.dtype, np.floating):
        raise ValueError(f"features must be a float (N, D) array, got {f.dtype} {f.shape}")
    n, d = f.shape
    if n == 0:
        raise ValueError("aggregate needs at least one image")
    tid = _as_1d(template_ids, n, "template_ids", np.int64)
    mid = _as_1d(media_ids, n, "media_ids", np.int64)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}")
    q = None if qualities is None else _as_1d(qualities, n, "qualities")
    if q is not None and not np.all(np.isfinite(q)):
        raise ValueError("qualities contain NaN or inf")
    if weighting != "none" and q is None:
        raise ValueError(f"weighting={weighting!r} needs the per-image qualities")
    if weighting == "eqface" and np.any(q < 0):
        raise ValueError("weighting='eqface' (QWFA) needs qualities >= 0 (EQFace's are in [0, 1]); try 'crfiqa'")
    if weighting == "qmagface" and np.any(q <= 0):
        raise ValueError("weighting='qmagface' needs qualities > 0 (MagFace magnitudes); try 'crfiqa'")
    if quality_threshold is not None and weighting != "eqface":
        raise ValueError("quality_threshold (EQFace's QWFAF s_th) applies to weighting='eqface' only")

    order = np.lexsort((mid, tid))
    ts, ms = tid[order], mid[order]
    new_t = np.r_[True, ts[1:] != ts[:-1]]
    new_m = new_t | np.r_[True, ms[1:] != ms[:-1]]
    t_start, m_start = np.flatnonzero(new_t), np.flatnonzero(new_m)
    t_of_image = np.cumsum(new_t) - 1  # sorted order
    t_of_media = t_of_image[m_start]
    n_media = np.diff(np.r_[m_start, n])
    n_t = t_start.size

    a = np.ones(n)  # per-image factor, sorted order
    if detector_score:
        if faceness is None:
            raise ValueError("detector_score=True needs the detector's faceness scores")
        a *= _as_1d(faceness, n, "faceness")[order]
    qs = None if q is None else q[order]
    if weighting == "crfiqa":
        lo, hi = qs.min(), qs.max()
        qp = (qs - lo) / (hi - lo) if hi > lo else np.ones(n)
        a *= qp / qp.sum()
    elif weighting == "eqface":
        w = qs.copy()
        if quality_threshold is not None:
            keep = qs >= quality_threshold
            any_keep = np.bincount(t_of_image, weights=keep, minlength=n_t) > 0
            w[~keep & any_keep[t_of_image]] = 0.0
        empty = np.bincount(t_of_image, weights=w, minlength=n_t) <= 0
        w[empty[t_of_image]] = 1.0
        a *= w
    elif weighting == "qmagface":
        a *= qs

    out = np.empty((n_t, d))
    q_media = np.empty(m_start.size) if weighting == "qmagface" else None
    bounds = _chunks(t_start, n, chunk_images)
    n_bad = 0  # non-finite image rows, counted chunk by chunk (the features are never copied whole)
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # a few chunks of whole templates
        x = f[order[lo:hi]].astype(np.float64)
        n_bad += _non_finite_rows(x)
        w = a[lo:hi]
        if not norm_score:
            w = w / np.maximum(np.linalg.norm(x, axis=1), _EPS)
        m0, m1 = np.searchsorted(m_start, [lo, hi])
        g = _group_sum(x, m_start[m0:m1] - lo, w)  # media sums
        del x
        if weighting in ("none", "crfiqa"):
            g /= n_media[m0:m1, None]
        elif weighting == "qmagface":
            qm_sum = np.add.reduceat(qs[lo:hi], m_start[m0:m1] - lo)
            qm = np.add.reduceat(qs[lo:hi] ** 2, m_start[m0:m1] - lo) / qm_sum
            single = n_media[m0:m1] == 1
            scale = np.where(single, 1.0 / qm_sum, qm / np.maximum(np.linalg.norm(g, axis=1), _EPS))
            g *= (scale * qm)[:, None]  # media output f_m, then its template weight q_m
            q_media[m0:m1] = qm
        t0, t1 = t_of_media[m0], t_of_media[m1 - 1] + 1
        out[t0:t1] = _group_sum(g, np.searchsorted(t_of_media[m0:m1], np.arange(t0, t1)))
    if n_bad:
        raise ValueError(f"{name}: {n_bad} of {n} image embeddings are NaN or inf ({_NON_FINITE_HINT})")
    out = l2_normalize(out, axis=1, eps=_EPS)
    _require_finite(out, "template features (after aggregation)", name)
    weight = None
    if weighting == "qmagface":
        weight = np.bincount(t_of_media, q_media**2, n_t) / np.bincount(t_of_media, q_media, n_t)
    quality = np.minimum.reduceat(qs, t_start) if qs is not None else np.full(n_t, np.nan)
    return Templates(ts[t_start], out.astype(dtype, copy=False), quality, weight)


# ---- template-pair scores -----------------------------------------------------------------------
def pair_scores(
    features: np.ndarray,
    rows1,
    rows2,
    *,
    block_rows: int = 4096,
    block_pairs: int = 1 << 16,
    min_density: float = 1 / 32,
) -> np.ndarray:
    """``<features[rows1[p]], features[rows2[p]]>`` per pair, in the features' dtype. When the pairs
    fill at least ``min_density`` of the grid (unique rows1) x (unique rows2), a matrix product of
    ``block_rows`` templates at a time against the other side (BLAS); else gathered rows,
    ``block_pairs`` pairs at a time."""
    feat = np.asarray(features)
    r1, r2 = np.asarray(rows1), np.asarray(rows2)
    if r1.shape != r2.shape or r1.ndim != 1:
        raise ValueError(f"rows1 and rows2 must be 1-D of one length, got {r1.shape} and {r2.shape}")
    p, t = r1.size, feat.shape[0]
    out = np.empty(p, dtype=np.result_type(feat.dtype, np.float32))
    if p == 0:
        return out
    used1, used2 = np.bincount(r1, minlength=t) > 0, np.bincount(r2, minlength=t) > 0
    n1, n2 = int(used1.sum()), int(used2.sum())
    if n1 * n2 * min_density > p:
        for s in range(0, p, block_pairs):
            x = feat[r1[s : s + block_pairs]]
            x *= feat[r2[s : s + block_pairs]]
            out[s : s + block_pairs] = x.sum(axis=1)
        return out
    if n1 < n2:  # rows: the side with more templates, in blocks; columns: the other side, whole
        r1, r2, used1, used2 = r2, r1, used2, used1
    row_ids, col_ids = np.flatnonzero(used1), np.flatnonzero(used2)
    row_rank = (np.cumsum(used1) - 1).astype(np.int64)[r1]
    col_rank = (np.cumsum(used2) - 1)[r2]
    cols = np.ascontiguousarray(feat[col_ids].T)
    block = row_rank // block_rows
    for k in range(int(block.max()) + 1):
        sel = np.flatnonzero(block == k)
        if sel.size:
            s = feat[row_ids[k * block_rows : (k + 1) * block_rows]] @ cols
            out[sel] = s[row_rank[sel] - k * block_rows, col_rank[sel]]
    return out


# ---- ROC ------------------------------------------------------------------------------------------
def _unique_counts(sorted_x: np.ndarray):
    if sorted_x.size == 0:
        return sorted_x, np.zeros(0, np.int64)
    last = np.r_[np.flatnonzero(sorted_x[1:] != sorted_x[:-1]), sorted_x.size - 1]
    return sorted_x[last], np.diff(np.r_[-1, last])


def roc_points(scores, labels):
    """Every distinct score value, descending, with the counts at or above it: ``(thresholds, fps,
    tps)`` (int64), i.e. sklearn's ``_binary_clf_curve``, from one sort per class (no argsort)."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    y = y.astype(bool)
    gu, gc = _unique_counts(np.sort(s[y]))
    iu, ic = _unique_counts(np.sort(s[~y]))
    pos = np.searchsorted(iu, gu)
    shared = (pos < iu.size) & (iu[np.minimum(pos, max(iu.size - 1, 0))] == gu) if iu.size else np.zeros(gu.size, bool)
    new = gu[~shared]
    i_at = np.arange(iu.size) + np.searchsorted(new, iu)  # impostor values' places in the union
    g_at = np.empty(gu.size, np.int64)
    g_at[shared] = i_at[pos[shared]]
    g_at[~shared] = np.arange(new.size) + pos[~shared]
    u = np.empty(iu.size + new.size, dtype=s.dtype)
    u[i_at], u[g_at] = iu, gu
    ci, cg = np.zeros(u.size, np.int64), np.zeros(u.size, np.int64)
    ci[i_at], cg[g_at] = ic, gc
    return u[::-1], np.cumsum(ci[::-1]), np.cumsum(cg[::-1])


def roc_curve(scores, labels, drop_intermediate: bool = True):
    """``(fpr, tpr, thresholds)`` equal to ``sklearn.metrics.roc_curve(labels, scores,
    drop_intermediate=...)`` (labels 1 = genuine), including the leading ``(0, 0, inf)`` point."""
    return _roc_from_points(*roc_points(scores, labels), drop_intermediate)


def _roc_from_points(thr, fps, tps, drop_intermediate: bool = True):
    if fps.size == 0 or fps[-1] == 0 or tps[-1] == 0:
        raise ValueError("the ROC needs at least one genuine and one impostor score")
    if drop_intermediate and fps.size > 2:
        keep = np.flatnonzero(np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True])
        thr, fps, tps = thr[keep], fps[keep], tps[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    thr = np.r_[np.inf, thr.astype(np.float64)]
    return fps / fps[-1], tps / tps[-1], thr


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    d = np.diff(x)
    return float((d * (y[1:] + y[:-1]) / 2.0).sum())


def tar_at_far(scores, labels, fars=FARS, return_curves: bool = False) -> dict:
    """``tar@far<x>`` (insightface's nearest-FPR rule), ``tar_strict@far<x>`` (FPR <= x) and ``roc_auc``
    of the scores (module docstring). ``return_curves``: also ``"curves": {"roc": {"": (fpr, tpr)}}``, the
    ROC at every distinct score thinned for plotting (``fiqa.eval.report.thin_roc``; it keeps the points
    of the ``tar_strict`` values)."""
    thr, fps, tps = roc_points(scores, labels)
    if fps.size == 0 or fps[-1] == 0 or tps[-1] == 0:
        raise ValueError("TAR@FAR needs at least one genuine and one impostor pair")
    n_imp, n_gen = int(fps[-1]), int(tps[-1])
    fpr, tpr, _ = _roc_from_points(thr, fps, tps, drop_intermediate=True)
    fpr_f, tpr_f = fpr[::-1], tpr[::-1]
    full_fpr, full_tpr = np.r_[0, fps] / n_imp, np.r_[0, tps] / n_gen
    out = {}
    for x in fars:
        out[f"tar@{far_key(x)}"] = float(tpr_f[np.argmin(np.abs(fpr_f - x))])
        out[f"tar_strict@{far_key(x)}"] = float(full_tpr[np.searchsorted(full_fpr, x, side="right") - 1])
    out["roc_auc"] = _trapezoid(tpr, fpr)
    if return_curves:
        from fiqa.eval.report import thin_roc

        out["curves"] = {"roc": {"": thin_roc(full_fpr, full_tpr, fars)}}
    return out


# ---- 1:1 ----------------------------------------------------------------------------------------
def _qmagface_params(qmagface) -> dict:
    params = dict(qmagface or {})
    alpha, beta, preset = params.get("alpha"), params.get("beta"), params.get("preset")
    if alpha is not None or beta is not None:
        return {"alpha": alpha, "beta": beta}
    if preset is None:
        raise ValueError("score='qmagface' needs qmagface.preset or qmagface.alpha and qmagface.beta")
    return {"preset": preset}


def verify(
    templates: Templates,
    pairs,
    pair_labels,
    *,
    fars=FARS,
    score: str = "cosine",
    qmagface=None,
    erc_fmrs=(1e-2, 1e-3, 1e-4),
    erc_mode: str = "recompute_nearest",
    return_curves: bool = False,
    name: str = "IJB",
) -> dict:
    """1:1 metrics of template pairs ``pairs`` (P, 2) template ids with ``pair_labels`` (P,) (1 =
    genuine): TAR@FAR (both rules), ``roc_auc``, and the CR-FIQA ERC of the pair quality
    (min of the templates' min image quality) when the templates carry qualities (``erc_fmrs=()``
    skips it). ``score="qmagface"``: QMagFace's score with ``qmagface={"preset"} | {"alpha", "beta"}``
    (needs ``weighting="qmagface"`` templates). ``return_curves``: also ``"curves"`` with the ROC
    (``roc``, labelled by the score) and the ERC (``erc``, one curve per FMR). Non-finite template
    features raise a ValueError naming the set ``name``."""
    pr = np.asarray(pairs)
    if pr.ndim != 2 or pr.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2) template ids, got shape {pr.shape}")
    labels = np.asarray(pair_labels)
    if labels.shape != (pr.shape[0],):
        raise ValueError(f"pair_labels must have shape ({pr.shape[0]},), got {labels.shape}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, got {score!r}")
    _require_finite(templates.features, "template features", name)
    r1 = templates.rows(pr[:, 0], "template pairs (column 1)")
    r2 = templates.rows(pr[:, 1], "template pairs (column 2)")
    s = pair_scores(templates.features, r1, r2)
    kind = "cosine"
    if score == "qmagface":
        if templates.weight is None:
            raise ValueError("score='qmagface' needs templates aggregated with weighting='qmagface'")
        from fiqa.quality import qmagface as qmf

        w = templates.weight
        s = qmf.score(s.astype(np.float64), w[r1], w[r2], **_qmagface_params(qmagface))
        kind = "similarity"
    labels = labels.astype(bool)
    out = tar_at_far(s, labels, fars, return_curves)
    curves = out.pop("curves", None)
    if curves is not None:
        curves["roc"] = {score: curves["roc"][""]}
    if erc_fmrs and not np.isnan(templates.quality).any():
        from fiqa.eval.erc import erc

        pq = np.minimum(templates.quality[r1], templates.quality[r2])
        res = erc(s, labels, pq, erc_mode, tuple(erc_fmrs), score_kind=kind)
        out.update(res.metrics())
        if curves is not None:
            curves["erc"] = res.curves()
    if curves is not None:
        out["curves"] = curves
    return out


# ---- 1:N ----------------------------------------------------------------------------------------
def _mates(gallery_subjects: np.ndarray, probe_subjects: np.ndarray) -> np.ndarray:
    """Gallery index of each probe's subject, -1 when the subject has no gallery template."""
    subj, first, count = np.unique(gallery_subjects, return_index=True, return_counts=True)
    if np.any(count > 1):
        dup = subj[count > 1]
        raise ValueError(
            f"1:N gallery: subject {dup[0]} (and {dup.size - 1} more) has {int(count[count > 1][0])} gallery "
            f"templates; the IJB 1:N protocol needs exactly one per subject"
        )
    pos = np.searchsorted(subj, probe_subjects)
    hit = (pos < subj.size) & (subj[np.minimum(pos, subj.size - 1)] == probe_subjects)
    return np.where(hit, first[np.minimum(pos, subj.size - 1)], -1)


def identify(
    probe_features,
    probe_subjects,
    gallery_features,
    gallery_subjects,
    *,
    gallery_split=None,
    ranks=RANKS,
    fpirs=FPIRS,
    nist_rank: int = 1,
    return_curves: bool = False,
    name: str = "IJB",
) -> dict:
    """1:N metrics (module docstring): ``rank<k>``, ``tpir@fpir<x>`` (insightface) and
    ``tpir_nist@fpir<x>``, on unit template features (``sim = P @ G.T``). ``return_curves``: also
    ``"curves": {"cmc": {"1:N": (ranks, rates)}}`` up to rank ``max(20, max(ranks))`` (at most the gallery size).
    Ties count against the mate; non-finite features raise a ValueError naming the set ``name``."""
    pf, gf = np.asarray(probe_features), np.asarray(gallery_features)
    ps, gs = np.asarray(probe_subjects).astype(np.int64), np.asarray(gallery_subjects).astype(np.int64)
    if pf.ndim != 2 or gf.ndim != 2 or pf.shape[1] != gf.shape[1]:
        raise ValueError(f"probe and gallery features must be (Q, D) and (G, D), got {pf.shape} and {gf.shape}")
    if ps.shape != (pf.shape[0],) or gs.shape != (gf.shape[0],):
        raise ValueError("one subject per probe and per gallery template is needed")
    split = np.zeros(gs.size, np.int64) if gallery_split is None else np.asarray(gallery_split).astype(np.int64)
    if split.shape != gs.shape:
        raise ValueError(f"gallery_split must have shape {gs.shape}, got {split.shape}")
    _require_finite(pf, "1:N probe template features", name)
    _require_finite(gf, "1:N gallery template features", name)
    mate = _mates(gs, ps)
    mated = np.flatnonzero(mate >= 0)
    if mated.size == 0:
        raise ValueError("1:N: no probe has a mate in the gallery (check the subject ids of the 1:N csv files)")
    sim = pf @ gf.T  # (Q, G)
    m = mate[mated]
    mate_sim = sim[mated, m]
    neg = sim[mated]  # a copy: insightface's in-place overwrite of `similarity` is not repeated
    neg[np.arange(mated.size), m] = -np.inf  # the mate's own column out: the non-mates remain
    # Ties count AGAINST the mate: the 0-based rank is #{non-mates with sim >= the mate's}, i.e. the mate
    # is placed after every non-mate it ties with. insightface's ijb_1n.py uses argsort(-similarity),
    # whose order among equal scores is numpy's (the gallery order in practice), so there a tie is won
    # or lost by the mate's gallery index, not by the model. Counting ties for the mate (`>`) gave a
    # collapsed model (every template equal or zero: every score tied) rank1/5/10 = 1.0, NaN features
    # too (NaN never compares greater; refused above). W&B keeps the max of val/*/rank*
    # (fiqa.callbacks.wandb_setup), so one collapsed epoch would show 1.0 for the rest of the run.
    # Against the mate it gets rank-k = 0 for every k below the gallery size. Without ties this is the
    # argsort's rank. Same rule as fiqa.eval.identification.search_scores.
    rank = np.count_nonzero(neg >= mate_sim[:, None], axis=1)
    out = {f"rank{k}": float(np.mean(rank < k)) for k in ranks}
    if return_curves:
        from fiqa.eval.report import cmc_points

        out["curves"] = {"cmc": {"1:N": cmc_points(rank + 1.0, min(max([20, *ranks]), gs.size))}}

    # insightface: th = the k-th largest of all non-mate similarities of the (mated) probes
    neg = neg.ravel()
    n_neg = neg.size - mated.size
    ks = [min(max(math.ceil(mated.size * x), 1), n_neg) for x in fpirs]
    if n_neg:
        neg.partition(sorted({neg.size - k for k in ks}))
    for x, k in zip(fpirs, ks):
        out[f"tpir@fpir{sci_key(x)}"] = float(np.mean(mate_sim > neg[neg.size - k])) if n_neg else float("nan")
    del neg

    # NIST open-set, per gallery split, averaged
    per_split = {x: [] for x in fpirs}
    for s_id in np.unique(split):
        cols = np.flatnonzero(split == s_id)
        sub = sim[:, cols]
        in_split = np.zeros(ps.size, bool)
        in_split[mated] = split[m] == s_id
        mated_s = np.flatnonzero(in_split)
        if mated_s.size == 0:
            continue
        local = np.searchsorted(cols, mate[mated_s])
        ms = sub[mated_s, local]
        rest = sub[mated_s]  # a copy (fancy indexing), the mate's column out
        rest[np.arange(mated_s.size), local] = -np.inf
        rank_s = np.count_nonzero(rest >= ms[:, None], axis=1)  # ties against the mate, as rank<k> above
        nonmated = np.flatnonzero(~in_split)
        if nonmated.size:
            top = sub[nonmated].max(axis=1)
        else:  # closed gallery: leave-mate-out
            top = rest.max(axis=1)
        top = np.sort(top)[::-1]
        for x in fpirs:
            allowed = int(math.floor(x * top.size + 1e-9))
            th = top[allowed] if allowed < top.size else -np.inf
            per_split[x].append(float(np.mean((rank_s < nist_rank) & (ms > th))))
    for x in fpirs:
        out[f"tpir_nist@fpir{sci_key(x)}"] = float(np.mean(per_split[x])) if per_split[x] else float("nan")
    return out


# ---- the whole protocol ---------------------------------------------------------------------------
def evaluate(
    embeddings,
    qualities,
    template_ids,
    media_ids,
    pairs=None,
    pair_labels=None,
    faceness=None,
    gallery_templates=None,
    gallery_subjects=None,
    gallery_split=None,
    probe_templates=None,
    probe_subjects=None,
    *,
    norm_score: bool = True,
    detector_score: bool = True,
    weighting: str = "none",
    quality_threshold: float | None = None,
    score: str = "cosine",
    qmagface=None,
    fars=FARS,
    erc_fmrs=(1e-2, 1e-3, 1e-4),
    erc_mode: str = "recompute_nearest",
    ranks=RANKS,
    fpirs=FPIRS,
    nist_rank: int = 1,
    return_curves: bool = False,
    name: str = "IJB",
) -> dict:
    """Aggregate, then the 1:1 metrics (when ``pairs`` are given) and the 1:N metrics (when the
    gallery and probe maps are given). ``embeddings`` (N, D) flip-fused raw; ``qualities`` (N,).
    ``return_curves``: also ``"curves"``: ``{"roc": ..., "erc": ..., "cmc": ...}`` of the parts run.
    ``name``: the set's name in the errors (e.g. non-finite embeddings)."""
    emb = np.asarray(embeddings)
    tid = np.asarray(template_ids)
    if emb.ndim != 2 or emb.shape[0] != tid.shape[0]:
        raise ValueError(
            f"IJB needs every image of the set embedded: {emb.shape[0] if emb.ndim else 0} embeddings for "
            f"{tid.shape[0]} images (limit_val_batches / fast_dev_run cover part of the set only)"
        )
    q = None if qualities is None else np.asarray(qualities, np.float64)
    if q is not None and not np.all(np.isfinite(q)):
        if weighting != "none":
            raise ValueError("qualities contain NaN or inf")
        q = None
    tpl = aggregate(
        emb,
        tid,
        media_ids,
        qualities=q,
        faceness=faceness,
        norm_score=norm_score,
        detector_score=detector_score,
        weighting=weighting,
        quality_threshold=quality_threshold,
        name=name,
    )
    out, curves = {}, {}
    if pairs is not None:
        if pair_labels is None:
            raise ValueError("pairs given without pair_labels")
        out.update(
            verify(
                tpl,
                pairs,
                pair_labels,
                fars=fars,
                score=score,
                qmagface=qmagface,
                erc_fmrs=erc_fmrs,
                erc_mode=erc_mode,
                return_curves=return_curves,
                name=name,
            )
        )
        curves.update(out.pop("curves", {}))
    if gallery_templates is not None and probe_templates is not None:
        g_rows = tpl.rows(gallery_templates, "1:N gallery")
        p_rows = tpl.rows(probe_templates, "1:N probes")
        out.update(
            identify(
                tpl.features[p_rows],
                probe_subjects,
                tpl.features[g_rows],
                gallery_subjects,
                gallery_split=gallery_split,
                ranks=ranks,
                fpirs=fpirs,
                nist_rank=nist_rank,
                return_curves=return_curves,
                name=name,
            )
        )
        curves.update(out.pop("curves", {}))
    if return_curves:
        out["curves"] = curves
    return out
