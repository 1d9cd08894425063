"""Error-versus-reject characteristic (ERC) of a quality measure, with AUC and pAUC. Pure numpy.

The ``int(r * N)`` pairs of lowest pair quality (``pair_quality``, min by default) are rejected at
each rate ``r`` of the grid (default ``np.arange(0, 0.98, 0.05)``), and the FNMR of the pairs left
is reported at each FMR (default 1e-2, 1e-3, 1e-4). Threshold modes:

- ``recompute_nearest`` (default; CR-FIQA ``ERC/erc.py`` + ``roc.get_eer_threshold``): on distances
  (``arccos(clip(cos, -1, 1)) / pi`` for cosines), re-estimated on the kept pairs at every rate: of
  the distinct kept distances ``t``, the one whose ``#{impostor <= t} / #impostor`` is nearest to the
  FMR (a tie goes to the larger FMR, then to the largest ``t``); ``FNMR = 1 - #{genuine < t} / #genuine``.
- ``recompute_index`` (MagFace ``eval_quality.py``): ``t`` = the ascending kept impostor distances
  at ``(n_imp - 1) // 10**k`` for FMR ``10**-k``; ``FNMR = #{genuine >= t} / #genuine``; NaN where
  MagFace's loop stops early (``n_imp - 1 < 10**(k-1)``).
- ``fixed`` (ISO/IEC 29794-1 EDC; ``fiqa.eval.edc.fixed_threshold_erc``): the threshold is set once
  on all impostors; then the FNM-EDC of the genuine pairs, discarded only where the quality changes.

``auc``: trapezoid over the grid (CR-FIQA's ``sklearn.metrics.auc``), every mode. ``pauc`` at 0.2 and
0.3: trapezoid up to the limit (recompute modes), or the stepwise pAUC of the exact EDC minus the
theoretical best (``fixed``). ``ERCResult.metrics()``: ``erc_auc_fmr1e-3``, ``erc_pauc0.2_fmr1e-3``,
``erc_fnmr_fmr1e-3_reject0.2`` ... (prefix ``erc`` / ``erc_index`` / ``edc``; ``erc_image[_index]``).
``image_erc`` is SER-FIQ's protocol: reject images, then all pairs among the kept images.

Speed (the machinery is :mod:`fiqa.eval.erc_segments`), with the loop's numbers exactly (tests/eval/test_erc.py,
test_erc_fast.py, benchmarks/erc_speed.py):
no sort per rate, and no sort of all the pairs. Every pair gets its segment (kept at rate ``i`` iff
segment ``> i``) from a histogram of the linearly bucketed qualities (only the few pairs in the buckets
of the cuts are ordered exactly; one sort of the qualities for small inputs or heavy ties). Of the
impostor distances only the low tail that ``max(fmrs)`` can reach is kept (one partition; a cap that
is checked, and widened 8x if ties or the reject order need more); of the genuine distances only those
at or above the smallest impostor distance, where every threshold lies once an impostor count >= 1 is
chosen (the lower ones are counted per segment; a threshold below them, FMR 0, stores them all). Both
are sorted per segment, and every threshold comes from counts over the kept segments, for all rates at
once. 1M pairs, 3 FMRs x 20 rates: about 22 ms of CPU (a per-rate numpy loop: 0.4-1 s).

Differences from the originals: a stable quality order (theirs is quicksort: ties may go in another
order), and NaN where no genuine or no impostor pair is kept (theirs raise or divide by zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fiqa.eval import quality_metrics as qm
from fiqa.eval.edc import fixed_threshold_erc
from fiqa.eval.erc_segments import (
    _by_segment,
    _decimal_exponents,
    _ImagePairs,
    _Parts,
    _SegMap,
    _segments,
    _solve,
    _tail_index,
    _tail_size,
    to_distance,
)
from fiqa.eval.verification import l2_normalize

__all__ = [
    "DEFAULT_FMRS",
    "DEFAULT_REJECT",
    "MODES",
    "PAUC_LIMITS",
    "REDUCTIONS",
    "ERCResult",
    "erc",
    "erc_images",
    "erc_pairs",
    "image_erc",
    "pair_quality",
    "to_distance",
]

DEFAULT_REJECT = np.arange(0, 0.98, 0.05)
DEFAULT_REJECT.flags.writeable = False
DEFAULT_FMRS = (1e-2, 1e-3, 1e-4)
PAUC_LIMITS = (0.2, 0.3)
MODES = ("recompute_nearest", "recompute_index", "fixed")
#: How each mode sets the FNMR threshold, in words (on the ERC plots, docs/evaluation.md "Two FNMRs"):
#: the same "FMR 1e-2, nothing rejected" is a different threshold in each, so a different FNMR.
THRESHOLD_RULES = {
    "recompute_nearest": "threshold re-set on the kept pairs at each rate, FMR nearest the target (CR-FIQA)",
    "recompute_index": "threshold re-set on the kept pairs at each rate, impostor index (n-1)//10^k (MagFace)",
    "fixed": "threshold fixed once on all pairs, FMR <= target (ISO/IEC 29794-1 EDC)",
}
#: ERCResult.prefix -> its mode
PREFIX_MODES = {"erc": "recompute_nearest", "erc_index": "recompute_index", "edc": "fixed",
                "erc_image": "recompute_nearest", "erc_image_index": "recompute_index"}  # fmt: skip
REDUCTIONS, pair_quality = qm.REDUCTIONS, qm.pair_quality  # one implementation; exported here too
_FNMR_AT = (0.0, 0.1, 0.2, 0.3)
_TOL = 1e-9  # a grid value within this of 0.3 is 0.3 (np.arange gives 0.30000000000000004)


@dataclass(frozen=True)
class ERCResult:
    """One ERC. ``fnmr``/``threshold`` are (R, F) over ``reject`` (R,) x ``fmrs`` (F,); the
    thresholds are distances (``recompute_*``: match iff ``d < t``; ``fixed``: match iff ``d <= t``).
    ``n_kept`` (R,): pairs kept (``fixed``: genuine pairs kept). ``auc`` (F,); ``pauc`` {limit: (F,)}.
    ``edc``: the exact EDC per FMR (``fixed`` only, None where the FMR is not resolvable)."""

    mode: str
    reject: np.ndarray
    fmrs: np.ndarray
    fnmr: np.ndarray
    threshold: np.ndarray
    n_kept: np.ndarray
    auc: np.ndarray
    pauc: dict
    prefix: str = "erc"
    edc: list = field(default=None, repr=False)

    def metrics(self, prefix: str | None = None, fnmr_at=None) -> dict[str, float]:
        """Flat ``{f"{prefix}_auc_fmr1e-3": ..., f"{prefix}_pauc0.2_fmr1e-3": ...,
        f"{prefix}_fnmr_fmr1e-3_reject0.2": ...}``. ``fnmr_at``: reject rates on the grid (default:
        those of 0, 0.1, 0.2, 0.3 that are on it)."""
        p = self.prefix if prefix is None else prefix
        if fnmr_at is None:
            fnmr_at = [r for r in _FNMR_AT if np.any(np.abs(self.reject - r) <= _TOL)]
        out = {}
        for f, fmr in enumerate(self.fmrs):
            key = qm.fmr_key(float(fmr))
            out[f"{p}_auc_{key}"] = float(self.auc[f])
            for limit, v in self.pauc.items():
                out[f"{p}_pauc{limit:g}_{key}"] = float(v[f])
            for r in fnmr_at:
                hit = np.flatnonzero(np.abs(self.reject - r) <= _TOL)
                if hit.size == 0:
                    raise ValueError(f"reject rate {r} is not on the grid {self.reject.tolist()}")
                out[f"{p}_fnmr_{key}_reject{r:g}"] = float(self.fnmr[hit[0], f])
        return out

    def curves(self, prefix: str | None = None) -> dict[str, tuple]:
        """``{f"{prefix} {fmr_key}": (reject, fnmr)}``, one curve per FMR, for ``fiqa.eval.report.plot_erc``."""
        p = self.prefix if prefix is None else prefix
        return {f"{p} {qm.fmr_key(float(fmr))}": (self.reject, self.fnmr[:, f]) for f, fmr in enumerate(self.fmrs)}


# ---- inputs -----------------------------------------------------------------------------------
def _check_grid(reject, fmrs, mode: str):
    r = DEFAULT_REJECT if reject is None else np.asarray(reject, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all((r >= 0) & (r < 1)) or np.any(np.diff(r) < 0):
        raise ValueError(f"reject must be a non-empty, non-decreasing 1-D grid in [0, 1), got {reject}")
    f = np.asarray([float(x) for x in fmrs], dtype=np.float64)
    if f.ndim != 1 or f.size == 0 or not np.all((f > 0) & (f < 1)):
        raise ValueError(f"fmrs must be a non-empty list of rates in (0, 1), got {fmrs}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if mode == "recompute_index":
        _decimal_exponents(f)
    return r, f


# ---- curves -> numbers ------------------------------------------------------------------------
def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0)) if x.size > 1 else 0.0


def _pauc_trapezoid(y: np.ndarray, x: np.ndarray, limit: float) -> float:
    """Trapezoid of the grid curve up to ``limit`` (linear interpolation at the limit); NaN off the grid."""
    if limit > x[-1] + _TOL or limit < x[0] - _TOL:
        return float("nan")
    m = int(np.searchsorted(x, limit + _TOL, side="right"))
    xs, ys = x[:m], y[:m]
    if xs[-1] < limit - _TOL:
        xs, ys = np.append(xs, limit), np.append(ys, np.interp(limit, x, y))
    return _trapezoid(ys, xs)


def _result(mode, reject, fmrs, fnmr, thr, n_kept, prefix, edcs=None, limits=PAUC_LIMITS) -> ERCResult:
    auc = np.array([_trapezoid(fnmr[:, f], reject) for f in range(fmrs.size)])
    if edcs is None:
        pauc = {L: np.array([_pauc_trapezoid(fnmr[:, f], reject, L) for f in range(fmrs.size)]) for L in limits}
    else:
        pauc = {L: np.array([np.nan if e is None else e.pauc(L) for e in edcs]) for L in limits}
    return ERCResult(mode, reject, fmrs, fnmr, thr, np.asarray(n_kept), auc, pauc, prefix, edcs)


# ---- public -----------------------------------------------------------------------------------
def erc(
    scores,
    issame,
    pair_q,
    mode: str = "recompute_nearest",
    fmrs=DEFAULT_FMRS,
    reject=None,
    score_kind: str = "cosine",
    higher_quality_is_better: bool = True,
    pauc_limits=PAUC_LIMITS,
) -> ERCResult:
    """The pair-level ERC (module docstring). ``scores`` (P,) of kind ``score_kind`` (``cosine``
    similarities by default, see :func:`to_distance`), ``issame`` (P,), ``pair_q`` (P,) (e.g.
    :func:`pair_quality`; ``higher_quality_is_better=False`` rejects the highest values first)."""
    d = to_distance(scores, score_kind)
    same = np.asarray(issame)
    q = np.asarray(pair_q, dtype=np.float64)
    if d.ndim != 1 or same.shape != d.shape or q.shape != d.shape:
        raise ValueError(f"scores, issame and pair_q must be 1-D of one length, got {d.shape}, {same.shape}, {q.shape}")
    if d.size == 0:
        raise ValueError("erc needs at least one pair")
    if np.isnan(q).any():
        raise ValueError("pair_q contains NaN")
    same = same.astype(bool)
    reject, fmrs = _check_grid(reject, fmrs, mode)
    key = q if higher_quality_is_better else -q
    if mode == "fixed":
        fnmr, thr, n_kept, edcs = fixed_threshold_erc(d, same, key, reject, fmrs)
        return _result(mode, reject, fmrs, fnmr, thr, n_kept, "edc", edcs, pauc_limits)
    n_parts = reject.size
    segs = _SegMap(key, (reject * d.size).astype(np.int64), same)
    imp_at = np.flatnonzero(~same)
    d_imp = d.take(imp_at)
    k0 = _tail_size(fmrs, d_imp.size)
    # Every threshold is at or above the smallest impostor distance when an impostor count >= 1 is chosen:
    # only the genuine distances from there up are stored (sorted); the lower ones are counted per segment.
    floor = float(d_imp.min()) if d_imp.size else np.inf
    gen_parts = {}

    def genuine(lo: float) -> _Parts:
        if lo not in gen_parts:
            at = np.flatnonzero(same & (d >= lo)) if lo > -np.inf else np.flatnonzero(same)
            parts = _by_segment(d.take(at), segs.of(at), n_parts)
            gen_parts[lo] = _Parts(parts, segs.n_gen[1:], np.full(n_parts, np.inf), lo)
        return gen_parts[lo]

    def build(k):  # each retry widens the impostor tail 8x; from the second one on, every genuine is stored
        at, cap = _tail_index(d_imp, k)
        parts = _by_segment(d_imp[at], segs.of(imp_at[at]), n_parts)
        imp = _Parts(parts, segs.n_imp[1:], np.full(n_parts, cap), merged=True)
        return genuine(floor if k < 64 * k0 else -np.inf), imp

    fnmr, thr, n_kept = _solve(mode, build, reject, fmrs, k0)
    prefix = "erc" if mode == "recompute_nearest" else "erc_index"
    return _result(mode, reject, fmrs, fnmr, thr, n_kept, prefix, limits=pauc_limits)


def image_erc(
    embeddings,
    labels,
    image_q,
    mode: str = "recompute_nearest",
    fmrs=DEFAULT_FMRS,
    reject=None,
    score_kind: str = "cosine",
    higher_quality_is_better: bool = True,
    pauc_limits=PAUC_LIMITS,
    block_rows: int | None = None,
) -> ERCResult:
    """SER-FIQ's image-level ERC: reject the ``int(r * N)`` lowest-quality images (stable order), then
    all pairs ``i < j`` among the kept images, genuine iff ``labels[i] == labels[j]``; the threshold
    is re-estimated at every rate (``recompute_nearest`` or ``recompute_index``). Scores are cosines of
    the L2-normalised ``embeddings`` (``score_kind="similarity"`` skips the arccos). Computed in
    blocks of ``block_rows`` rows (default: about 4M pairs per block), keeping only the genuine pairs
    and the low tail of the impostors per segment, so N ~ 10k images fit in a few hundred MB."""
    e = np.asarray(embeddings, dtype=np.float64)
    lab = np.asarray(labels)
    q = np.asarray(image_q, dtype=np.float64)
    if e.ndim != 2 or lab.shape != (e.shape[0],) or q.shape != lab.shape:
        raise ValueError(
            f"embeddings (N, D), labels (N,), image_q (N,) expected, got {e.shape}, {lab.shape}, {q.shape}"
        )
    if e.shape[0] < 2:
        raise ValueError(f"image_erc needs at least 2 images, got {e.shape[0]}")
    if not np.all(np.isfinite(e)) or np.isnan(q).any():
        raise ValueError("embeddings or image_q contain NaN or inf")
    if mode == "fixed":
        raise ValueError("image_erc re-estimates the threshold per rate: mode 'recompute_nearest' or 'recompute_index'")
    if score_kind == "distance":
        raise ValueError("image_erc computes cosines: score_kind 'cosine' or 'similarity'")
    reject, fmrs = _check_grid(reject, fmrs, mode)
    n = e.shape[0]
    e = l2_normalize(e, axis=1)
    seg = _segments(q if higher_quality_is_better else -q, (reject * n).astype(np.int64))
    rows = block_rows or max(1, (1 << 22) // n)
    m = int(np.count_nonzero(seg))
    build = _ImagePairs(e, lab, seg, reject.size, score_kind, rows)
    fnmr, thr, n_kept = _solve(mode, build, reject, fmrs, _tail_size(fmrs, m * (m - 1) // 2))
    prefix = "erc_image" if mode == "recompute_nearest" else "erc_image_index"
    return _result(mode, reject, fmrs, fnmr, thr, n_kept, prefix, limits=pauc_limits)


# ---- protocols (fiqa.eval.protocols calling convention) ------------------------------------------
def erc_pairs(
    embeddings,
    qualities,
    issame,
    pair_similarity=None,
    mode: str = "recompute_nearest",
    fmrs=DEFAULT_FMRS,
    reject=None,
    reduce: str = "min",
    higher_quality_is_better: bool = True,
    prefix: str | None = None,
    return_curves: bool = False,
    **_,
) -> dict:
    """Val protocol: the pair ERC of the model's own quality on a pair set (pairs = rows 2p, 2p+1).
    Cosine of the embeddings (as angular distance), or ``pair_similarity`` (e.g. QMagFace) when given.
    ``return_curves``: also ``"curves": {"erc": ERCResult.curves()}`` (``fiqa.eval.protocols``)."""
    if pair_similarity is not None:
        scores, kind = np.asarray(pair_similarity, np.float64), "similarity"
    else:
        scores, kind = qm.pair_scores(np.asarray(embeddings, np.float64)), "cosine"
    pq = pair_quality(qualities, reduce=reduce)
    res = erc(scores, issame, pq, mode, fmrs, reject, kind, higher_quality_is_better)
    return _with_curves(res, prefix, return_curves)


def _with_curves(res: ERCResult, prefix: str | None, return_curves: bool) -> dict:
    out = res.metrics(prefix)
    if return_curves:
        out["curves"] = {"erc": res.curves(prefix)}
    return out


def erc_images(
    embeddings,
    qualities,
    labels,
    mode: str = "recompute_nearest",
    fmrs=DEFAULT_FMRS,
    reject=None,
    higher_quality_is_better: bool = True,
    prefix: str | None = None,
    return_curves: bool = False,
    **_,
) -> dict:
    """Val protocol: SER-FIQ's image-level ERC on a set with per-image identity ``labels``
    (``return_curves`` as :func:`erc_pairs`)."""
    res = image_erc(embeddings, labels, qualities, mode, fmrs, reject, "cosine", higher_quality_is_better)
    return _with_curves(res, prefix, return_curves)
