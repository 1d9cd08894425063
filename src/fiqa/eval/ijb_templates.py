"""IJB templates: the aggregation of image features into template features (weighting by any method's
quality) and the scores of template pairs. The rules and their sources: :mod:`fiqa.eval.ijb`'s docstring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fiqa.eval.verification import l2_normalize

WEIGHTINGS = ("none", "crfiqa", "eqface", "qmagface")
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
