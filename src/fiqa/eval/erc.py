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

Speed, with the loop's numbers exactly (tests/eval/test_erc.py, test_erc_fast.py, benchmarks/erc_speed.py):
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

import math
from dataclasses import dataclass, field

import numpy as np

from fiqa.eval import quality_metrics as qm
from fiqa.eval.edc import fixed_threshold_erc
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
SCORE_KINDS = ("cosine", "similarity", "distance")
REDUCTIONS, pair_quality = qm.REDUCTIONS, qm.pair_quality  # one implementation; exported here too
_FNMR_AT = (0.0, 0.1, 0.2, 0.3)
_TOL = 1e-9  # a grid value within this of 0.3 is 0.3 (np.arange gives 0.30000000000000004)
_TAIL_SLACK = 32  # impostors kept beyond max(fmrs) * n_imp, before a retry is needed
_BUCKETS = 1 << 16  # quality buckets of _SegMap (used from 4 * _BUCKETS pairs on)
_MERGED_MAX = 1 << 18  # _Parts storing at most this many values answer from one merged index
_CUT_MEMBERS = 1 << 14  # _SegMap sorts the qualities instead when its cut buckets hold more (and > 1/8)


def to_distance(scores, score_kind: str = "cosine") -> np.ndarray:
    """The comparison distance (lower = more similar) every mode works on: ``cosine`` ->
    ``arccos(clip(s, -1, 1)) / pi`` (CR-FIQA, MagFace); ``similarity`` -> ``-s``; ``distance`` -> ``s``."""
    s = np.asarray(scores, dtype=np.float64)
    if score_kind not in SCORE_KINDS:
        raise ValueError(f"score_kind must be one of {list(SCORE_KINDS)}, got {score_kind!r}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    if score_kind == "cosine":
        return np.arccos(np.clip(s, -1.0, 1.0)) / math.pi
    return -s if score_kind == "similarity" else s


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


def _decimal_exponents(fmrs: np.ndarray) -> np.ndarray:
    k = np.round(-np.log10(fmrs)).astype(np.int64)
    if not np.allclose(10.0 ** (-k.astype(np.float64)), fmrs, rtol=1e-12, atol=0):
        raise ValueError(f"mode='recompute_index' (MagFace's index chain) takes FMRs 10**-k only, got {fmrs.tolist()}")
    return k


def _segments(key: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """``#{i : pos >= cuts[i]}`` per item, with ``pos`` its rank in the stable ascending order of
    ``key``: kept at rate ``i`` iff the segment is ``> i``. One sort of the values, no argsort."""
    n = key.size
    ks = np.sort(key)
    seg = np.zeros(n, np.uint8 if cuts.size < 255 else np.int32)
    for k in cuts:
        if k >= n:
            continue
        if k == 0:
            seg += 1
            continue
        v = ks[k]
        lo, hi = np.searchsorted(ks, v, "left"), np.searchsorted(ks, v, "right")
        if hi - lo == 1:
            seg += key >= v
        else:  # ties straddle the cut: of the equal values, the later ones (by index) stay
            seg += key > v
            seg[np.flatnonzero(key == v)[k - lo :]] += 1
    return seg


# ---- kept-set order statistics ----------------------------------------------------------------
class _Parts:
    """Sorted values of one class per segment; rate ``i`` keeps ``parts[i:]``. Part ``j`` holds every
    value ``<= caps[j]`` of its segment (all of it when the cap is inf) and has ``totals[j]`` in all.
    With a ``floor`` (genuine parts), part ``j`` holds the values ``>= floor`` of its segment instead
    (no cap), and the others are only counted: ``count(v)`` is exact for ``v >= floor``, and
    ``max_below`` / ``last`` see the stored values only."""

    def __init__(self, parts: list, totals, caps, floor: float = -np.inf, merged: bool = False):
        self.parts = parts
        totals = np.asarray(totals, np.int64)
        self.n = np.append(np.cumsum(totals[::-1])[::-1], 0)
        self.cap = np.append(np.minimum.accumulate(np.asarray(caps, np.float64)[::-1])[::-1], np.inf)
        self.floor = float(floor)
        sizes = np.array([p.size for p in parts], np.int64)
        below = totals - sizes if floor > -np.inf else np.zeros_like(totals)
        self.n_below = np.append(np.cumsum(below[::-1])[::-1], 0)  # kept values not stored (below the floor)
        firsts = np.array([p[0] if p.size else np.inf for p in parts])
        lasts = np.array([p[-1] if p.size else -np.inf for p in parts])
        self.first = np.append(np.minimum.accumulate(firsts[::-1])[::-1], np.inf)
        self.last = np.append(np.maximum.accumulate(lasts[::-1])[::-1], -np.inf)
        self._merged = merged and int(sizes.sum()) <= _MERGED_MAX
        if self._merged:  # one sorted array; prefix[i, p] = values of parts >= i among its first p
            values = np.concatenate(parts) if parts else np.empty(0)
            part = np.repeat(np.arange(len(parts)), sizes)
            order = np.argsort(values, kind="stable")
            self._all, part = values[order], part[order]
            kept = part[None, :] >= np.arange(len(parts) + 1)[:, None]
            self._prefix = np.zeros((len(parts) + 1, values.size + 1), np.int32)
            np.cumsum(kept, axis=1, out=self._prefix[:, 1:])
            width = values.size + 1  # rows shifted apart: one sorted array for row-wise searches
            self._flat = (self._prefix + np.arange(len(parts) + 1, dtype=np.int64)[:, None] * width).ravel()
            self._width = width

    def count(self, v, i, side: str) -> np.ndarray:
        out = self.n_below[i].copy() if self.floor > -np.inf else np.zeros(np.shape(v), np.int64)
        if self._merged:
            return out + self._prefix[i, np.searchsorted(self._all, v, side)]
        for j, p in enumerate(self.parts):
            if p.size:
                out += np.where(i <= j, np.searchsorted(p, v, side), 0)
        return out

    def known(self, v, i) -> np.ndarray:
        """Where ``count(v, i, side)`` is exact: ``v`` at or above the floor, or nothing below it kept."""
        return (np.asarray(v) >= self.floor) | (self.n_below[i] == 0)

    def _stored_kth(self, c, i, missing: float) -> np.ndarray:
        """The ``c``-th smallest (1-based) stored kept value (merged index); ``missing`` when none."""
        c = np.asarray(c, np.int64)
        pos = np.searchsorted(self._flat, c + i * self._width, "left") - i * self._width
        ok = (c >= 1) & (pos >= 1) & (pos < self._width)
        if self._all.size == 0:
            return np.full(np.shape(c), missing)
        return np.where(ok, self._all[np.clip(pos - 1, 0, self._all.size - 1)], missing)

    def max_below(self, v, i) -> np.ndarray:
        if self._merged:
            return self._stored_kth(self._prefix[i, np.searchsorted(self._all, v, "left")], i, -np.inf)
        out = np.full(np.shape(v), -np.inf)
        for j, p in enumerate(self.parts):
            if p.size:
                k = np.searchsorted(p, v, "left")
                out = np.where((i <= j) & (k > 0), np.maximum(out, p[np.maximum(k - 1, 0)]), out)
        return out

    def min_above(self, v, i) -> np.ndarray:
        if self._merged:
            return self._stored_kth(self._prefix[i, np.searchsorted(self._all, v, "right")] + 1, i, np.inf)
        out = np.full(np.shape(v), np.inf)
        for j, p in enumerate(self.parts):
            if p.size:
                k = np.searchsorted(p, v, "right")
                out = np.where((i <= j) & (k < p.size), np.minimum(out, p[np.minimum(k, p.size - 1)]), out)
        return out

    def kth(self, c, i) -> np.ndarray:
        """The ``c``-th smallest (1-based) kept value; NaN when fewer are stored (no floor: impostors)."""
        if self._merged:
            return self._stored_kth(c, i, np.nan)
        a = np.sort(np.concatenate(self.parts)) if self.parts else np.empty(0)
        if a.size == 0:
            return np.full(np.shape(c), np.nan)
        lo, hi = np.zeros(np.shape(c), np.int64), np.full(np.shape(c), a.size - 1)
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            ok = (self.count(a[mid], i, "right") >= c) | (lo == hi)
            hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid + 1)
        return np.where(self.count(a[lo], i, "right") >= c, a[lo], np.nan)


class _SegMap:
    """Segments of the pairs (kept at rate ``i`` iff the segment is ``> i``, as :func:`_segments`) and the
    pairs per (segment, class), without sorting the qualities: they are bucketed linearly between their
    min and max (a monotone map, so the buckets follow the stable quality order), one histogram gives
    the bucket of every cut, and only the pairs in the cut buckets are ordered exactly (by quality,
    then index). :meth:`of` gives the segments of a subset. Falls back to :func:`_segments` (one sort)
    for small inputs, infinite qualities, or when the cut buckets hold too many pairs (heavy ties)."""

    def __init__(self, key: np.ndarray, cuts: np.ndarray, same: np.ndarray):
        self.R, self.seg = cuts.size, None
        small = np.uint8 if self.R < 255 else np.int32
        lo, hi = (float(key.min()), float(key.max())) if key.size else (0.0, 0.0)
        if (
            key.size < 4 * _BUCKETS
            or not math.isfinite(hi - lo)  # also: infinite qualities
            or not self._bucket(key, cuts, same, lo, hi, small)
        ):
            self.seg = _segments(key, cuts).astype(small, copy=False)
            counts = np.bincount(self.seg.astype(np.int64) * 2 + same, minlength=2 * (self.R + 1))
            self.n_imp, self.n_gen = counts[0::2], counts[1::2]

    def _bucket(self, key, cuts, same, lo, hi, small) -> bool:
        n, m, size = key.size, _BUCKETS, self.R + 1
        b = np.subtract(key, lo)
        b *= (m - 1) / (hi - lo) if hi > lo else 0.0  # in [0, m - 1]: no clip needed
        b = b.astype(np.int32)
        hist2 = np.bincount(b * 2 + same, minlength=2 * m)  # (bucket, class)
        hist = hist2[0::2] + hist2[1::2]
        cum = np.cumsum(hist)
        valid = (cuts > 0) & (cuts < n)
        ks = cuts[valid]
        beta = np.searchsorted(cum, ks, side="right")  # the bucket of the pair at stable position k
        inner = ks - (cum[beta] - hist[beta])  # pairs of that bucket before position k
        cut_b = np.unique(beta)
        in_cut = np.zeros(m, bool)
        in_cut[cut_b] = True
        mem = np.flatnonzero(in_cut.take(b))
        if mem.size > max(_CUT_MEMBERS, n // 8):
            return False
        # a pair outside the cut buckets is kept by the cuts at 0 and by those whose bucket is below its own
        table = (np.count_nonzero(cuts == 0) + np.searchsorted(np.sort(beta), np.arange(m), "left")).astype(small)
        mb = b[mem]
        order = np.lexsort((mem, key[mem], mb))  # stable quality order inside the cut buckets
        mb_sorted = mb[order]
        mseg = table[mb_sorted]
        starts, ends = np.searchsorted(mb_sorted, beta, "left"), np.searchsorted(mb_sorted, beta, "right")
        for st, en, r in zip(starts, ends, inner):
            mseg[st + r : en] += 1
        self.mem, self.mseg = mem, np.empty_like(mseg)
        self.mseg[order] = mseg
        self.b, self.table, self.in_cut = b, table, in_cut
        w_imp, w_gen = hist2[0::2].astype(np.float64), hist2[1::2].astype(np.float64)
        w_imp[cut_b] = w_gen[cut_b] = 0.0
        members = np.bincount(self.mseg.astype(np.int64) * 2 + same[mem], minlength=2 * size)
        self.n_imp = np.bincount(table, w_imp, size).astype(np.int64) + members[0::2]
        self.n_gen = np.bincount(table, w_gen, size).astype(np.int64) + members[1::2]
        return True

    def of(self, idx: np.ndarray) -> np.ndarray:
        if self.seg is not None:
            return self.seg[idx]
        b = self.b.take(idx)
        s = self.table.take(b)
        cand = np.flatnonzero(self.in_cut.take(b))  # in a cut bucket: the exact segment of that member
        s[cand] = self.mseg[np.searchsorted(self.mem, np.asarray(idx)[cand])]
        return s


def _by_segment(values: np.ndarray, seg: np.ndarray, n_parts: int) -> list:
    """``values`` grouped by segment ``1 .. n_parts`` (part ``j`` = segment ``j + 1``), each sorted."""
    order = np.argsort(seg, kind="stable")  # small integers: a radix sort
    v = values[order]
    off = np.concatenate(([0], np.cumsum(np.bincount(seg, minlength=n_parts + 1))))
    return [np.sort(v[off[j] : off[j + 1]]) for j in range(1, n_parts + 1)]


def _tail(x: np.ndarray, k: int, cut: bool = False, sort: bool = True):
    """The (sorted) values ``<= t`` of ``x``, ``t`` its k-th smallest, and the cap ``t``; all of ``x``
    and an infinite cap when ``x.size <= k``, unless values beyond ``x`` were ``cut`` already."""
    if x.size <= k and not cut:
        return np.sort(x) if sort else x, np.inf
    t = np.partition(x, k - 1)[k - 1]
    x = x[x <= t]
    return np.sort(x) if sort else x, float(t)


def _tail_index(x: np.ndarray, k: int):
    """Positions of the values ``<= t`` of ``x``, ``t`` its k-th smallest, and the cap ``t`` (all, cap inf,
    when ``x.size <= k``)."""
    if x.size <= k:
        return np.arange(x.size), np.inf
    t = np.partition(x, k - 1)[k - 1]
    return np.flatnonzero(x <= t), float(t)


def _tail_size(fmrs: np.ndarray, n_imp: int) -> int:
    """Impostors kept in a tail: 1.5x what the largest FMR needs of all of them (a reject rate that drops
    impostors faster than the tail's keeps them exact), plus a slack; a retry widens it when short."""
    return int(math.ceil(1.5 * float(fmrs.max()) * n_imp)) + _TAIL_SLACK


# ---- threshold rules, vectorised over (rate, fmr) queries ---------------------------------------
def _nearest(gen: _Parts, imp: _Parts, i: np.ndarray, op: np.ndarray):
    """CR-FIQA's nearest-FMR threshold on the kept pairs. Returns (fnmr, thr, exact)."""
    n_i, n_g = imp.n[i], gen.n[i]
    fn = n_i.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        c0 = np.floor(op * fn).astype(np.int64)  # the largest c with c / n_i <= op, as float
        c0 = np.where((c0 + 1) / fn <= op, c0 + 1, c0)
        c0 = np.where((c0 > 0) & (c0 / fn > op), c0 - 1, c0)
    c0 = np.clip(c0, 0, np.maximum(n_i - 1, 0))
    has0 = c0 >= 1
    v0 = imp.kth(np.maximum(c0, 1), i)  # I_(c0)
    e0, s0 = imp.count(v0, i, "right"), imp.count(v0, i, "left")
    first = imp.first[i]
    in_group = has0 & (e0 > c0)  # I_(c0) and I_(c0+1) are tied
    v1 = np.where(has0, np.where(in_group, v0, imp.min_above(v0, i)), first)  # I_(c0+1)
    e1 = imp.count(v1, i, "right")  # nearest attainable count above the target
    low = np.where(has0, np.where(in_group, s0, c0), 0)  # ... and at or below it
    low_ok = (low > 0) | (gen.count(first, i, "left") > 0)  # FMR 0 needs a genuine below all impostors
    with np.errstate(divide="ignore", invalid="ignore"):
        take_high = ~low_ok | (np.abs(e1 / fn - op) <= np.abs(low / fn - op))
    c = np.where(take_high, e1, low)
    nxt = np.where(take_high, imp.min_above(v1, i), np.where(in_group, v0, v1))  # I_(c+1)
    imp_c = np.where(take_high, v1, np.where(in_group, imp.max_below(v0, i), np.where(has0, v0, -np.inf)))
    every = c == n_i
    g_below = gen.max_below(nxt, i)
    thr = np.where(every, np.maximum(gen.last[i], imp.last[i]), np.maximum(imp_c, g_below))
    with np.errstate(divide="ignore", invalid="ignore"):
        fnmr = 1 - gen.count(thr, i, "left") / n_g
    ok = (n_i > 0) & (n_g > 0)
    cap = imp.cap[i]
    exact = ~ok | ((~has0 | (v0 <= cap)) & (v1 <= cap) & np.where(every, np.isinf(cap), nxt <= cap))
    # genuine values below the floor are counted, not stored: the max below a value must be stored, or
    # not matter (beaten by an impostor value at or above the floor)
    floor = gen.floor
    stored_max = np.where(every, (gen.last[i] >= floor) | (imp.last[i] >= floor), (g_below >= floor) | (imp_c >= floor))
    exact &= ~ok | ((low > 0) | gen.known(first, i)) & (stored_max | (gen.n_below[i] == 0)) & gen.known(thr, i)
    return np.where(ok, fnmr, np.nan), np.where(ok, thr, np.nan), exact


def _index(gen: _Parts, imp: _Parts, i: np.ndarray, op: np.ndarray):
    """MagFace's index threshold on the kept pairs. Returns (fnmr, thr, exact)."""
    n_i, n_g = imp.n[i], gen.n[i]
    k = _decimal_exponents(op)
    reach = (n_i >= 1) & ((k == 0) | (n_i - 1 >= 10 ** np.maximum(k - 1, 0)))
    thr = imp.kth(np.maximum(n_i - 1, 0) // 10**k + 1, i)
    with np.errstate(divide="ignore", invalid="ignore"):
        fnmr = (n_g - gen.count(thr, i, "left")) / n_g
    ok = reach & (n_g > 0)
    exact = ~ok | ((thr <= imp.cap[i]) & gen.known(thr, i))
    return np.where(ok, fnmr, np.nan), np.where(ok, thr, np.nan), exact


def _solve(mode, build, reject, fmrs, k0: int):
    """Run the threshold rule; rebuild the impostor tails 8x wider until every answer is exact."""
    rule = _nearest if mode == "recompute_nearest" else _index
    R, F = reject.size, fmrs.size
    i, op = np.repeat(np.arange(R), F), np.tile(fmrs, R)
    k = k0
    while True:
        gen, imp = build(k)
        fnmr, thr, exact = rule(gen, imp, i, op)
        if exact.all():
            return fnmr.reshape(R, F), thr.reshape(R, F), gen.n[:R] + imp.n[:R]
        k *= 8


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


class _ImagePairs:
    """All image pairs as (genuine parts, impostor tails) for a tail size ``k``. Images are ordered by
    segment, so the pairs of a row block ``i < j`` all belong to the row's segment: one scalar cap
    per block prefilters the impostor cosines. Genuine pairs come per identity, once."""

    def __init__(self, e, labels, seg, n_parts, score_kind, rows):
        order = np.argsort(seg, kind="stable")
        self.e, self.seg, self.kind, self.rows, self.P = e[order], seg[order], score_kind, rows, n_parts + 1
        self.lab = np.unique(np.asarray(labels)[order], return_inverse=True)[1].ravel()
        n = self.seg.size
        by_label = np.argsort(self.lab, kind="stable")  # ascending positions inside each identity
        cuts = np.flatnonzero(np.diff(self.lab[by_label])) + 1
        gd, gs = [], []
        for ix in np.split(by_label, cuts):
            if ix.size > 1:
                iu = np.triu_indices(ix.size, 1)
                gd.append(to_distance((self.e[ix] @ self.e[ix].T)[iu], score_kind))
                gs.append(self.seg[ix[iu[0]]])  # the lower position has the lower segment
        gd = np.concatenate(gd) if gd else np.empty(0)
        gs = np.concatenate(gs) if gs else np.empty(0, np.int64)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(gs, minlength=self.P))))
        gd = gd[np.argsort(gs, kind="stable")]
        self.gen = [np.sort(gd[bounds[j] : bounds[j + 1]]) for j in range(1, self.P)]
        self.n_gen = np.diff(bounds)
        pairs = np.bincount(self.seg, weights=n - 1 - np.arange(n), minlength=self.P).astype(np.int64)
        self.n_imp = pairs - self.n_gen
        self.starts = np.searchsorted(self.seg, np.arange(self.P + 1))

    def __call__(self, k: int):
        n = self.seg.size
        tails, caps = [], []
        for j in range(1, self.P):
            buf, size, cap = [], 0, np.inf
            for a in range(self.starts[j], self.starts[j + 1], self.rows):
                b = min(a + self.rows, self.starts[j + 1], n - 1)
                if b <= a:
                    continue
                s = self.e[a:b] @ self.e[a:].T
                imp = self.lab[a:b, None] != self.lab[None, a:]
                imp[:, : b - a] &= np.arange(b - a)[None, :] > np.arange(b - a)[:, None]  # j > i
                s = s[imp]
                # Work on the cosine, with a margin where arccos could tie: values below the cap
                # (or below the k-th largest of the block) are beyond every distance kept.
                margin = 1e-12 if self.kind == "cosine" else 0.0
                if cap < np.inf:
                    s = s[s >= (-cap if margin == 0 else math.cos(min(cap, 1.0) * math.pi) - margin)]
                cut = s.size > k
                if cut:
                    s = s[s >= np.partition(s, s.size - k)[s.size - k] - margin]
                d = to_distance(s, self.kind)
                buf.append(d[d <= cap])
                size += buf[-1].size
                if cut or size > 2 * k:  # compact: keep every value <= the k-th smallest
                    x, cap = _tail(np.concatenate(buf), k, cut, sort=False)
                    buf, size = [x], x.size
            t, c = _tail(np.concatenate(buf) if buf else np.empty(0), k)
            tails.append(t)
            caps.append(min(c, cap))
        gen = _Parts(self.gen, self.n_gen[1:], np.full(self.P - 1, np.inf))
        return gen, _Parts(tails, self.n_imp[1:], caps, merged=True)


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
