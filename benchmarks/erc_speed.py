"""ERC speed: ``fiqa.eval.erc.erc`` vs a straightforward loop that re-sorts at every reject rate.

    python benchmarks/erc_speed.py [--pairs 1000000] [--repeats 3] [--images 5000] [--seed 0]

On ``--pairs`` synthetic pairs (half genuine; float32 cosines, so scores tie as a model's do; a
quality that tracks the genuine score), 3 FMRs (1e-2, 1e-3, 1e-4) and the 20 reject rates
``np.arange(0, 0.98, 0.05)``, per mode:

* ``numpy loop``: what the original scripts do, vectorised with numpy but re-sorting at every rate.
  ``recompute_nearest`` = CR-FIQA ``erc.py`` + ``roc.get_eer_threshold`` (stable sort of the stacked
  kept scores, ``np.unique``, nearest FMR, ``g < thr``); ``recompute_index`` = MagFace's index
  ``(n-1)//10**k`` into the sorted kept impostors; ``fixed`` = the ISO threshold once per FMR, then at
  every rate a stable sort of the genuine qualities, a cut rounded down to a quality change, and the
  errors counted over the genuine pairs left.
* ``CR-FIQA-literal loop`` (``recompute_nearest`` only): the same with CR-FIQA's own python ``sorted``
  of (score, label) tuples and list comprehensions (one run; ``--no-literal`` skips it).
* ``fiqa``: ``fiqa.eval.erc.erc`` (one sort of the qualities, grouped counts, no per-rate sort).

Both must give identical FNMR, thresholds and AUC (checked with ``np.array_equal``); the table shows
the best of ``--repeats`` wall times and the speed-up. ``--images N`` also times ``image_erc`` on N
images (512-d, all N(N-1)/2 pairs in blocks) once. Always exits 0; never part of the tests.
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
        g, i = np.sort(d[keep][same[keep]]), np.sort(d[keep][~same[keep]])
        for f, op in enumerate(FMRS):
            k = round(-math.log10(op))
            if g.size and i.size and i.size - 1 >= 10 ** (k - 1):
                thr[r, f] = i[(i.size - 1) // 10**k]
                fnmr[r, f] = (g.size - np.searchsorted(g, thr[r, f], "left")) / g.size
    return fnmr, thr


def loop_fixed(d, same, q):
    sim_i, sim_g, q_g = -d[~same], -d[same], q[same]
    fnmr, thr = np.full((RATES.size, 3), np.nan), np.full((RATES.size, 3), np.nan)
    for f, op in enumerate(FMRS):
        t = fmr_threshold(sim_i, op)
        for r, rate in enumerate(RATES):
            qs = q_g[np.argsort(q_g, kind="stable")]
            v = qs[int(rate * q_g.size)]  # discard everything below the quality at the cut
            kept = q_g >= v
            fnmr[r, f], thr[r, f] = np.count_nonzero(sim_g[kept] < t) / np.count_nonzero(kept), -t
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
    print("| mode | loop (s) | fiqa.eval.erc (s) | speed-up | identical |")
    print("|---|---:|---:|---:|---|")
    loops = [("recompute_nearest", loop_nearest), ("recompute_index", loop_index), ("fixed", loop_fixed)]
    if not args.no_literal:
        loops.insert(1, ("recompute_nearest", literal_nearest))
    for mode, loop in loops:
        reps = 1 if loop is literal_nearest else max(1, args.repeats // 2)
        t_loop, (fnmr, thr) = best_time(lambda loop=loop: loop(d, same, q), reps)
        t_fast, res = best_time(lambda mode=mode: E.erc(d, same, q, mode=mode, score_kind="distance"), args.repeats)
        auc = np.array([float(np.sum(np.diff(RATES) * (y[1:] + y[:-1]) / 2)) for y in fnmr.T])
        same_numbers = (
            np.array_equal(fnmr, res.fnmr, equal_nan=True)
            and np.array_equal(thr, res.threshold, equal_nan=True)
            and np.array_equal(auc, res.auc, equal_nan=True)
        )
        name = f"{mode} vs {'CR-FIQA-literal loop' if loop is literal_nearest else 'numpy loop'}"
        print(f"| {name} | {t_loop:.2f} | {t_fast:.3f} | {t_loop / t_fast:.0f}x | {'yes' if same_numbers else 'NO'} |")

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
