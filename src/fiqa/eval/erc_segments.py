"""The fast machinery behind :mod:`fiqa.eval.erc`: every pair's segment (the reject rates at which it is
kept) from one pass over the qualities, order statistics of the kept distances per segment, and the
threshold rules vectorised over all (rate, FMR) queries at once (the speed notes: ``fiqa.eval.erc``'s
docstring). Private to ``fiqa.eval``; tests pin it through :func:`fiqa.eval.erc.erc` against the per-rate loop.
"""

from __future__ import annotations

import math

import numpy as np

SCORE_KINDS = ("cosine", "similarity", "distance")
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
