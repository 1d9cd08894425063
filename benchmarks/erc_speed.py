"""ERC speed: ``fiqa.eval.erc.erc`` vs straightforward loops that re-sort at every reject rate.

    python benchmarks/erc_speed.py [--pairs 1000000] [--repeats 3] [--images 5000] [--seed 0] [--no-literal]

On ``--pairs`` synthetic pairs (half genuine; float32 cosines, so scores tie as a model's do; a
quality that tracks the genuine score), 3 FMRs (1e-2, 1e-3, 1e-4) and the 20 reject rates
``np.arange(0, 0.98, 0.05)``, per mode, against per-rate loops written here (one stable argsort of the
qualities, then at every rate the kept pairs gathered and re-sorted):

* ``recompute_nearest`` (CR-FIQA ``erc.py`` + ``roc.get_eer_threshold``):
  - ``numpy loop, CR-FIQA's structure``: the kept genuine and impostor distances sorted, stacked as
    similarities, a stable argsort of the stack (genuine first on ties), ``np.unique``, the FMR at every
    distinct value, the nearest FMR, ``g < thr``;
  - ``numpy loop, plain``: the kept impostors sorted, ``np.unique`` of the kept distances as the
    candidate thresholds, their FMR by ``searchsorted``, the nearest (ties: the largest threshold), the
    genuine errors counted;
  - ``CR-FIQA-literal loop``: CR-FIQA's own python ``sorted`` of (score, label) tuples and list
    comprehensions (one run; ``--no-literal`` skips it, ~20 s at 1M pairs);
* ``recompute_index`` (MagFace): the kept impostors sorted, the index ``(n-1)//10**k``, the genuine errors
  counted;
* ``fixed`` (ISO EDC): the threshold once per FMR on all impostors; at every rate the genuine qualities
  sorted, the cut rounded down to a quality change, the errors counted over the genuine pairs left.

Every loop must give the same FNMR, thresholds and AUC as ``fiqa`` (``np.array_equal``: identical
numbers); the table shows the best of ``--repeats`` wall times (the loops: half as many) and the
speed-up. ``--images N`` also times ``image_erc`` on N images (512-d, all N(N-1)/2 pairs in blocks)
once. Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from operator import itemgetter

import numpy as np

from fiqa.eval import erc as E
from fiqa.eval.quality_metrics import fmr_threshold

FMRS = (1e-2, 1e-3, 1e-4)
RATES = np.arange(0, 0.98, 0.05)


def plain_nearest(d, same, q):
    order = np.argsort(q, kind="stable")
    fnmr, thr = np.full((RATES.size, 3), np.nan), np.full((RATES.size, 3), np.nan)
    for r, rate in enumerate(RATES):
        keep = order[int(rate * d.size) :]
        dk, sk = d[keep], same[keep]
        g, i = dk[sk], np.sort(dk[~sk])
        if g.size == 0 or i.size == 0:
            continue
        t = np.unique(dk)  # candidate thresholds: every kept distance
        fmr = np.searchsorted(i, t, "right") / i.size
        for f, op in enumerate(FMRS):
            err = np.abs(fmr - op)
            thr[r, f] = t[np.flatnonzero(err == err.min())[-1]]  # ties: the largest threshold
            fnmr[r, f] = 1 - np.count_nonzero(g < thr[r, f]) / g.size
    return fnmr, thr


def loop_nearest(d, same, q):
    order = np.argsort(q, kind="stable")
    fnmr, thr = np.full((RATES.size, 3), np.nan), np.full((RATES.size, 3), np.nan)
    for r, rate in enumerate(RATES):
        keep = order[int(rate * d.size) :]
        g, i = np.sort(d[keep][same[keep]]), np.sort(d[keep][~same[keep]])
        if g.size == 0 or i.size == 0:
            continue
        s = np.concatenate([-g, -i])  # roc.py: similarity = -distance, genuine first on ties
        lab = np.concatenate([np.ones(g.size), np.zeros(i.size)])
        o = np.argsort(s, kind="stable")
        s, lab = s[o], lab[o]
        t, u = np.unique(s, return_index=True)
        fm = i.size - (u - (np.cumsum(lab)[u] - lab[u]))
        fmr = fm / i.size
        for f, op in enumerate(FMRS):
            thr[r, f] = -t[np.argmin(np.abs(fmr - op))]
            fnmr[r, f] = 1 - np.searchsorted(g, thr[r, f], "left") / g.size
    return fnmr, thr


def literal_nearest(d, same, q):
    """CR-FIQA's own structure: python ``sorted`` of (score, label) tuples and a list comprehension."""
    order = np.argsort(q, kind="stable")
    fnmr, thr = np.full((RATES.size, 3), np.nan), np.full((RATES.size, 3), np.nan)
    for r, rate in enumerate(RATES):
        keep = order[int(rate * d.size) :]
        g, i = np.sort(d[keep][same[keep]]), np.sort(d[keep][~same[keep]])
        scores = np.array(sorted(list(zip(-g, [1] * g.size)) + list(zip(-i, [0] * i.size)), key=itemgetter(0)))
        t, u = np.unique(scores[:, 0], return_index=True)
        fm = i.size - (u - (np.cumsum(scores[:, 1])[u] - scores[u][:, 1]))
        fmr = fm / i.size
        for f, op in enumerate(FMRS):
            thr[r, f] = -t[np.argmin(abs(fmr - op))]
            fnmr[r, f] = 1 - len([x for x in g if x < thr[r, f]]) / len(g)
    return fnmr, thr


def loop_index(d, same, q):
    order = np.argsort(q, kind="stable")
    fnmr, thr = np.full((RATES.size, 3), np.nan), np.full((RATES.size, 3), np.nan)
    for r, rate in enumerate(RATES):
        keep = order[int(rate * d.size) :]
        dk, sk = d[keep], same[keep]
        g, i = dk[sk], np.sort(dk[~sk])
        for f, op in enumerate(FMRS):
            k = round(-math.log10(op))
            if g.size and i.size and i.size - 1 >= 10 ** (k - 1):
                thr[r, f] = i[(i.size - 1) // 10**k]
                fnmr[r, f] = (g.size - np.count_nonzero(g < thr[r, f])) / g.size
    return fnmr, thr


def loop_fixed(d, same, q):
    sim_i, sim_g, q_g = -d[~same], -d[same], q[same]
    ts = [fmr_threshold(sim_i, op) for op in FMRS]  # fixed once, before any discard
    fnmr, thr = np.full((RATES.size, 3), np.nan), np.full((RATES.size, 3), np.nan)
    for r, rate in enumerate(RATES):
        qs = np.sort(q_g)
        v = qs[int(rate * q_g.size)]  # discard everything below the quality at the cut
        kept = q_g >= v
        n_kept, s_kept = np.count_nonzero(kept), sim_g[kept]
        for f, t in enumerate(ts):
            fnmr[r, f], thr[r, f] = np.count_nonzero(s_kept < t) / n_kept, -t
    return fnmr, thr


def best_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def data(n, seed):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    cos = np.where(same, rng.normal(0.55, 0.18, n), rng.normal(0.02, 0.09, n)).clip(-1, 1).astype(np.float32)
    q = (rng.normal(0.0, 1.0, n) + 2.0 * same * cos).astype(np.float32)  # float32 qualities tie too
    return E.to_distance(cos.astype(np.float64)), same, q.astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=5000, help="also time image_erc on this many images (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-literal", action="store_true", help="skip the CR-FIQA-literal loop (~20 s at 1M pairs)")
    args = ap.parse_args()

    d, same, q = data(args.pairs, args.seed)
    print(
        f"# ERC speed: {args.pairs:,} pairs, 3 FMRs x {RATES.size} reject rates; numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, best of {args.repeats}\n"
    )
    print("| mode | baseline | baseline (s) | fiqa.eval.erc (s) | speed-up | identical |")
    print("|---|---|---:|---:|---:|---|")
    loops = [
        ("recompute_nearest", "numpy loop, CR-FIQA's structure", loop_nearest),
        ("recompute_nearest", "numpy loop, plain", plain_nearest),
        ("recompute_index", "numpy loop", loop_index),
        ("fixed", "numpy loop", loop_fixed),
    ]
    if not args.no_literal:
        loops.insert(2, ("recompute_nearest", "CR-FIQA-literal loop", literal_nearest))
    fast = {}
    for mode, name, loop in loops:
        reps = 1 if loop is literal_nearest else max(1, args.repeats // 2)
        t_loop, (fnmr, thr) = best_time(lambda loop=loop: loop(d, same, q), reps)
        if mode not in fast:
            fast[mode] = best_time(lambda mode=mode: E.erc(d, same, q, mode=mode, score_kind="distance"), args.repeats)
        t_fast, res = fast[mode]
        auc = np.array([float(np.sum(np.diff(RATES) * (y[1:] + y[:-1]) / 2)) for y in fnmr.T])
        same_numbers = (
            np.array_equal(fnmr, res.fnmr, equal_nan=True)
            and np.array_equal(thr, res.threshold, equal_nan=True)
            and np.array_equal(auc, res.auc, equal_nan=True)
        )
        print(
            f"| {mode} | {name} | {t_loop:.2f} | {t_fast:.3f} | {t_loop / t_fast:.0f}x | "
            f"{'yes' if same_numbers else 'NO'} |"
        )

    if args.images:
        rng = np.random.default_rng(args.seed)
        ids = rng.integers(0, args.images // 10, args.images)
        emb = rng.normal(size=(args.images // 10, 512))[ids] + 1.6 * rng.normal(size=(args.images, 512))
        t0 = time.perf_counter()
        res = E.image_erc(emb, ids, rng.random(args.images))
        n_pairs = args.images * (args.images - 1) // 2
        print(
            f"\nimage_erc: {args.images:,} images ({n_pairs:,} pairs, 512-d), 3 FMRs x 20 rates: "
            f"{time.perf_counter() - t0:.1f} s; FNMR@1e-3 at 0 / 20 % rejected: "
            f"{res.fnmr[0, 1]:.4f} / {res.fnmr[4, 1]:.4f}"
        )


if __name__ == "__main__":
    main()
