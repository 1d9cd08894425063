"""fiqa.eval.erc / fiqa.eval.edc against hand-worked numbers and against plain-loop transcriptions of
the original protocols, written here from their descriptions (shared/reference/data_and_eval.md §5):

- CR-FIQA ``ERC/erc.py`` + ``ERC/roc.py get_eer_threshold`` (per-rate loop, nearest FMR, strict <);
- MagFace ``eval/eval_quality/eval_quality.py`` (index chain (n-1)//10 ..., FNMR = mean(G >= thr));
- dasec ``edc.py`` (threshold fixed once, discard at quality changes, stepwise pAUC minus best);
- SER-FIQ's image-level protocol (reject images, then all pairs among the kept ones), brute force.

The loops use a stable quality order (the originals use quicksort: only tie order can differ), and
give NaN where the originals would divide by zero (no kept genuine or impostor pair).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc

from fiqa.eval import edc as EDC
from fiqa.eval import erc as E
from fiqa.eval import erc_segments as S

RATES = np.arange(0, 0.98, 0.05)
FMRS = (1e-2, 1e-3, 1e-4)
SRC = Path(__file__).resolve().parents[2] / "src"


# ---- transcriptions (plain loops) -----------------------------------------------------------------
def crfiqa_thresholds(pos, neg, ops):
    """roc.get_eer_threshold(pos, neg, ds_scores=True): distance thresholds at the nearest FMR."""
    merged = sorted([(-g, 1) for g in pos] + [(-i, 0) for i in neg], key=lambda t: t[0])  # stable
    values, fm, impostors_before = [], [], 0
    for v, lab in merged:
        if not values or v != values[-1]:  # a new threshold t: impostors >= t = all but those before
            values.append(v)
            fm.append(len(neg) - impostors_before)
        impostors_before += lab == 0
    fmr = np.array(fm, dtype=np.float64) / len(neg)
    out = []
    for op in ops:
        best = 0
        for j in range(1, len(values)):
            if abs(fmr[j] - op) < abs(fmr[best] - op):
                best = j
        out.append(-values[best])
    return out


def crfiqa_erc(d, same, pq, rates=RATES, ops=FMRS):
    order = np.argsort(pq, kind="stable")
    fnmr = np.full((len(rates), len(ops)), np.nan)
    thr = np.full((len(rates), len(ops)), np.nan)
    for r, rate in enumerate(rates):
        keep = order[int(rate * len(d)) :]
        pos = sorted(d[k] for k in keep if same[k])
        neg = sorted(d[k] for k in keep if not same[k])
        if not pos or not neg:
            continue
        for f, t in enumerate(crfiqa_thresholds(pos, neg, ops)):
            thr[r, f] = t
            fnmr[r, f] = 1 - len([g for g in pos if g < t]) / len(pos)
    return fnmr, thr


def magface_erc(d, same, pq, rates=RATES, ops=FMRS):
    steps = [round(-math.log10(op)) for op in ops]
    order = np.argsort(pq, kind="stable")
    fnmr = np.full((len(rates), len(ops)), np.nan)
    for r, rate in enumerate(rates):
        keep = order[int(rate * len(d)) :]
        pos = np.sort(d[keep][same[keep]])
        neg = np.sort(d[keep][~same[keep]])
        idx, step, at = len(neg) - 1, 0, {}
        while idx >= 0:
            thresh = neg[idx]
            accepted = sum(1 for g in pos if g < thresh)
            at[step] = 1.0 * (len(pos) - accepted) / len(pos) if len(pos) else np.nan
            if idx == 0:
                break
            idx, step = int(idx / 10), step + 1
        for f, k in enumerate(steps):
            fnmr[r, f] = at.get(k, np.nan)
    return fnmr


def dasec_edc(sim, pq, threshold=None, starting_error=None, error="fnmr"):
    order = np.argsort(pq)
    sim, pq = np.asarray(sim)[order], np.asarray(pq)[order]
    if threshold is None:
        threshold = np.quantile(sim, starting_error if error == "fnmr" else 1 - starting_error)
    n = len(sim)
    wrong = [(s < threshold) if error == "fnmr" else (s >= threshold) for s in sim]
    left = [0] * n
    running = 0
    for k in range(n - 1, -1, -1):
        running += int(wrong[k])
        left[k] = running
    discard = [0] + [k for k in range(1, n) if pq[k] != pq[k - 1]]
    x = [k / n for k in discard]
    y = [left[k] / (n - k) for k in discard]
    if x[-1] != 1:
        x.append(1)
        y.append(0)
    return x, y, threshold, discard


def dasec_pauc(x, y, limit):
    if limit == 0:
        return 0
    area = 0
    for i in range(len(x)):
        if i == len(x) - 1 or x[i + 1] >= limit:
            area += y[i] * (limit - x[i])
            break
        area += y[i] * (x[i + 1] - x[i])
    e0 = y[0]
    best = e0**2 / 2
    if limit < e0:
        best -= (e0 - limit) ** 2 / 2
    return area - best


def loop_fmr_threshold(imp_sim, fmr):
    """The largest impostor similarity t with #{imp >= t} <= floor(fmr * n) (next float if none)."""
    values = sorted(imp_sim)
    k = math.floor(fmr * len(values) + 1e-9)
    for idx, t in enumerate(values):  # ascending: the first value whose count from it upwards fits
        if (idx == 0 or values[idx - 1] != t) and len(values) - idx <= k:
            return t
    return float(np.nextafter(values[-1], np.inf))


def fixed_erc(d, same, pq, rates=RATES, ops=FMRS, limits=(0.2, 0.3)):
    sim = -np.asarray(d)
    fnmr = np.full((len(rates), len(ops)), np.nan)
    pauc = {L: np.full(len(ops), np.nan) for L in limits}
    for f, op in enumerate(ops):
        if math.floor(op * np.count_nonzero(~same) + 1e-9) < 1:
            continue
        t = loop_fmr_threshold(sim[~same], op)
        x, y, _, discard = dasec_edc(sim[same], pq[same], threshold=t)
        n = int(np.count_nonzero(same))
        for r, rate in enumerate(rates):
            cap = int(rate * n)
            m = max(j for j, k in enumerate(discard) if k <= cap)
            fnmr[r, f] = y[m]
        for L in limits:
            pauc[L][f] = dasec_pauc(x, y, L)
    return fnmr, pauc


# ---- random inputs --------------------------------------------------------------------------------
def random_pairs(seed, n, ties=False):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.45
    d = np.where(same, rng.beta(2, 5, n), rng.beta(5, 2, n))
    # A quality that means something; far impostors rank high, so the kept impostors' tail moves.
    q = rng.random(n) + 0.3 * (1 - d) * same + 0.3 * d * ~same
    if ties:
        d, q = np.round(d, 2), np.round(q, 1)
    return d, same, q


def assert_same(a, b, atol=1e-9):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b)), (a, b)
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0, atol=atol)


@pytest.fixture(params=[32, 1])
def slack(request, monkeypatch):
    """Default impostor tails, and tails of 1 extra value (forces truncation, caps and retries)."""
    monkeypatch.setattr(S, "_TAIL_SLACK", request.param)
    return request.param


@pytest.fixture
def spy(monkeypatch):
    """Records the tail size of every build and the number of tails cut."""
    seen = {"k": [], "tails": 0}
    solve, tail = E._solve, S._tail

    def spy_solve(mode, build, reject, fmrs, k0):
        def recorded(k):
            seen["k"].append(k)
            return build(k)

        return solve(mode, recorded, reject, fmrs, k0)

    def spy_tail(*args, **kwargs):
        seen["tails"] += 1
        return tail(*args, **kwargs)

    monkeypatch.setattr(E, "_solve", spy_solve)
    monkeypatch.setattr(S, "_tail", spy_tail)
    return seen


# ---- parity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seed,n,ties",
    [(0, 300, False), (1, 1200, False), (2, 800, True), (3, 2500, True), (20, 4000, False), (21, 97, True)],
)
def test_recompute_nearest_matches_crfiqa_loop(seed, n, ties, slack):
    d, same, q = random_pairs(seed, n, ties)
    ref, ref_thr = crfiqa_erc(d, same, q)
    res = E.erc(d, same, q, mode="recompute_nearest", score_kind="distance")
    assert_same(res.fnmr, ref, atol=0)
    assert_same(res.threshold, ref_thr, atol=0)
    if not np.isnan(ref).any():
        assert_same(res.auc, [sk_auc(RATES, ref[:, f]) for f in range(3)])
    kept = np.array([n - int(r * n) for r in RATES])
    np.testing.assert_array_equal(res.n_kept, kept)


@pytest.mark.parametrize("seed,n,ties", [(4, 500, False), (5, 3000, True), (6, 1500, True)])
def test_recompute_index_matches_magface_loop(seed, n, ties, slack):
    d, same, q = random_pairs(seed, n, ties)
    res = E.erc(d, same, q, mode="recompute_index", score_kind="distance")
    assert_same(res.fnmr, magface_erc(d, same, q), atol=0)


def test_retry_when_ties_outgrow_the_tail(slack, spy):
    # 30 % of the impostors tie at distance 0, below every genuine: FMR 0 is not attainable, the
    # nearest count is the end of that tie (30 %), and the next impostor value lies beyond the
    # ceil(0.01 * n_imp) + slack values first kept per group. The wider retry must give the loop's numbers.
    rng = np.random.default_rng(19)
    d, same, q = random_pairs(19, 4000)
    d = np.where(same | (rng.random(d.size) < 0.7), d, 0.0)
    res = E.erc(d, same, q, score_kind="distance")
    assert len(set(spy["k"])) > 1
    assert_same(res.fnmr, crfiqa_erc(d, same, q)[0], atol=0)
    assert_same(E.erc(d, same, q, mode="recompute_index", score_kind="distance").fnmr, magface_erc(d, same, q), atol=0)


def test_similarity_and_cosine_inputs_and_uncertainty():
    d, same, q = random_pairs(7, 900, ties=True)
    cos = np.cos(d * math.pi)
    # similarity s = -d gives the same ERC as the distance d; cosine goes through arccos/pi.
    a = E.erc(-d, same, q, score_kind="similarity")
    b = E.erc(d, same, q, score_kind="distance")
    assert_same(a.fnmr, b.fnmr, atol=0)
    c = E.erc(cos, same, q)  # default: cosine
    ref, _ = crfiqa_erc(np.arccos(np.clip(cos, -1, 1)) / math.pi, same, q)
    assert_same(c.fnmr, ref, atol=0)
    # An uncertainty (higher = worse) is the negated quality, ties kept in the same stable order.
    u = E.erc(d, same, -q, score_kind="distance", higher_quality_is_better=False)
    assert_same(u.fnmr, b.fnmr, atol=0)


@pytest.mark.parametrize("seed,n,ties", [(8, 3000, False), (9, 5000, True)])
def test_fixed_matches_dasec_edc(seed, n, ties):
    d, same, q = random_pairs(seed, n, ties)
    res = E.erc(d, same, q, mode="fixed", score_kind="distance")
    ref, ref_pauc = fixed_erc(d, same, q)
    assert_same(res.fnmr, ref, atol=0)
    for L in (0.2, 0.3):
        assert_same(res.pauc[L], ref_pauc[L])
    for f in range(3):
        if not np.isnan(ref[:, f]).any():
            assert res.auc[f] == pytest.approx(sk_auc(RATES, ref[:, f]), abs=1e-12)
    assert np.isnan(res.fnmr[:, 2]).all() == (math.floor(1e-4 * np.count_nonzero(~same) + 1e-9) < 1)


@pytest.mark.parametrize("seed,ties", [(10, False), (11, True)])
@pytest.mark.parametrize("error", ["fnmr", "fmr"])
def test_edc_matches_dasec(seed, ties, error):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=700)
    pq = rng.random(700)
    if ties:
        sim, pq = np.round(sim, 1), np.round(pq * 20)
    for kw in ({"starting_error": 0.05}, {"starting_error": 0.3}, {"threshold": 0.1}):
        e = EDC.edc(sim, pq, error=error, **kw)
        x, y, t, discard = dasec_edc(sim, pq, error=error, **kw)
        assert e.threshold == t
        assert_same(e.discard_fractions, x, atol=0)
        assert_same(e.error_fractions, y, atol=0)
        np.testing.assert_array_equal(e.discard_counts, discard)
        for L in (0.0, 0.01, 0.05, 0.2, 0.3, 0.95, 1.0):
            assert e.pauc(L) == pytest.approx(dasec_pauc(x, y, L), abs=1e-12)
    q = EDC.edc(sim, pq, error=error, quantile=0.25)
    assert q.threshold == np.quantile(sim, 0.25)


# ---- hand-worked ----------------------------------------------------------------------------------
# Genuine distances 0.1 0.2 0.3 0.5, impostors 0.4 0.6 0.7 0.8; pair qualities below.
HAND_D = np.array([0.1, 0.2, 0.3, 0.5, 0.4, 0.6, 0.7, 0.8])
HAND_SAME = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
HAND_Q = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.3, 0.5])


def test_recompute_nearest_by_hand():
    res = E.erc(HAND_D, HAND_SAME, HAND_Q, fmrs=[0.25, 0.5, 0.1, 0.125], reject=[0.0, 0.5], score_kind="distance")
    # r = 0: FMR(t) over t = 0.1 .. 0.8 is 0 0 0 .25 .25 .5 .75 1.
    #   0.25 -> t in {0.4, 0.5}, the largest: 0.5; the genuine at 0.5 is not < 0.5 -> FNMR 1/4.
    #   0.5 -> t = 0.6 -> FNMR 0.   0.1 -> FMR 0 is nearer (0.1 < 0.15): t = 0.3 -> FNMR 2/4.
    #   0.125 -> FMR 0 and 0.25 tie at 0.125: the larger FMR wins -> t = 0.5 -> FNMR 1/4.
    # r = 0.5: the 4 lowest qualities go (0.1 0.2 0.3 0.5): kept genuine 0.1 0.3 0.5, impostor 0.6.
    #   0.25 -> FMR 0 (|0-.25| < |1-.25|): t = 0.5 -> FNMR 1/3; 0.5 -> tie 0 vs 1 -> FMR 1: t = 0.6 -> 0;
    #   0.1 -> FMR 0 -> 1/3; 0.125 -> FMR 0 -> 1/3.
    np.testing.assert_allclose(res.fnmr, [[0.25, 0.0, 0.5, 0.25], [1 / 3, 0.0, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(res.threshold, [[0.5, 0.6, 0.3, 0.5], [0.5, 0.6, 0.5, 0.5]])
    np.testing.assert_array_equal(res.n_kept, [8, 4])
    # AUC: trapezoid over [0, 0.5]; pAUC 0.2: interpolated at 0.2 on the segment
    assert res.auc[0] == pytest.approx(0.5 * (0.25 + 1 / 3) / 2)
    y02 = 0.25 + (1 / 3 - 0.25) * 0.4
    assert res.pauc[0.2][0] == pytest.approx(0.2 * (0.25 + y02) / 2)


def test_recompute_index_by_hand():
    res = E.erc(
        HAND_D, HAND_SAME, HAND_Q, mode="recompute_index", fmrs=[0.1, 0.01], reject=[0.0], score_kind="distance"
    )
    # 4 impostors: index (4-1)//10 = 0 -> t = 0.4; genuine >= 0.4: only 0.5 -> 1/4. FMR 1e-2 is
    # never reached by MagFace's loop (the index hits 0 at 1e-1) -> NaN.
    assert res.fnmr[0, 0] == 0.25 and res.threshold[0, 0] == 0.4
    assert np.isnan(res.fnmr[0, 1])


def test_fixed_by_hand():
    res = E.erc(HAND_D, HAND_SAME, HAND_Q, mode="fixed", fmrs=[0.25], reject=[0.0, 0.25, 0.5], score_kind="distance")
    # Threshold on the 4 impostor similarities -0.4 -0.6 -0.7 -0.8 at FMR 0.25: k = 1 -> t = -0.4, so
    # a genuine pair fails iff d > 0.4: only 0.5 (quality 0.7). Genuine by quality: 0.1 0.7(x) 0.8 0.9.
    # EDC: discard 0 1 2 3 -> errors 1/4, 1/3, 0/2, 0/1, then (1, 0).
    e = res.edc[0]
    np.testing.assert_allclose(e.discard_fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(e.error_fractions, [0.25, 1 / 3, 0, 0, 0])
    np.testing.assert_allclose(res.fnmr[:, 0], [0.25, 1 / 3, 0.0])
    assert res.threshold[0, 0] == 0.4
    np.testing.assert_array_equal(res.n_kept, [4, 3, 2])
    # pAUC 0.2 = 0.25 * 0.2 - best (0.25**2/2 - 0.05**2/2 = 0.03) = 0.02;
    # pAUC 0.3 = 0.25 * 0.25 + 1/3 * 0.05 - 0.25**2/2.
    assert res.pauc[0.2][0] == pytest.approx(0.02)
    assert res.pauc[0.3][0] == pytest.approx(0.0625 + 0.05 / 3 - 0.03125)
    assert e.pauc(0.3, subtract_best=False) == pytest.approx(0.0625 + 0.05 / 3)


def test_fixed_discards_equal_qualities_together():
    # 4 genuine pairs of equal quality and one better: a cap of 2 (r=0.5 of 5) cannot split the
    # tie, so nothing is discarded until r=0.8 (cap 4).
    d = np.array([0.9, 0.1, 0.1, 0.1, 0.1] + [0.95] * 10)
    same = np.array([True] * 5 + [False] * 10)
    q = np.array([0.5, 0.2, 0.2, 0.2, 0.2] + [0.5] * 10)
    res = E.erc(d, same, q, mode="fixed", fmrs=[0.1], reject=[0.0, 0.5, 0.8], score_kind="distance")
    # t: 10 impostor similarities all -0.95, k = 1 < 10 ties -> next float above: accepts no impostor;
    # genuine similarity -0.9 >= t, -0.1 >= t: no error at all.
    np.testing.assert_allclose(res.fnmr[:, 0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(res.n_kept, [5, 5, 1])


# ---- image level ----------------------------------------------------------------------------------
def image_brute_force(e, labels, q, rates, ops, kind="cosine", mode="recompute_nearest"):
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    order = np.argsort(q, kind="stable")
    fnmr = np.full((len(rates), len(ops)), np.nan)
    for r, rate in enumerate(rates):
        kept = np.sort(order[int(rate * len(q)) :])
        d, same = [], []
        for a in range(len(kept)):
            for b in range(a + 1, len(kept)):
                cos = float(np.dot(e[kept[a]], e[kept[b]]))
                d.append(math.acos(min(max(cos, -1.0), 1.0)) / math.pi if kind == "cosine" else -cos)
                same.append(labels[kept[a]] == labels[kept[b]])
        d, same = np.array(d), np.array(same, bool)
        everything = np.zeros(len(d))  # all kept: reject nothing more
        if mode == "recompute_nearest":
            fnmr[r] = crfiqa_erc(d, same, everything, rates=[0.0], ops=ops)[0][0]
        else:
            fnmr[r] = magface_erc(d, same, everything, rates=[0.0], ops=ops)[0]
    return fnmr


def identities(seed, n, ids, d, exact):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, ids, n)
    if exact:  # entries +-1/4 in 16-d: unit norm, and every cosine is an exact multiple of 1/8 (many ties)
        proto = rng.choice([-0.25, 0.25], size=(ids, 16))
        e = proto[labels] * np.where(rng.random((n, 16)) < 0.3, -1, 1)
    else:
        e = rng.normal(size=(ids, d))[labels] + 0.9 * rng.normal(size=(n, d))
    q = np.round(rng.random(n), 1) if exact else rng.random(n)
    return e, labels, q


@pytest.mark.parametrize("seed,n,exact", [(12, 70, False), (13, 90, True)])
@pytest.mark.parametrize("mode", ["recompute_nearest", "recompute_index"])
def test_image_erc_matches_brute_force(seed, n, exact, mode, slack, spy):
    e, labels, q = identities(seed, n, 8, 12, exact)
    rates = np.arange(0, 0.9, 0.1)
    ops = (0.05, 0.01, 0.002) if mode == "recompute_nearest" else (1e-1, 1e-2, 1e-3)
    ref = image_brute_force(e, labels, q, rates, ops, mode=mode)
    for rows in (7, None):
        res = E.image_erc(e, labels, q, mode=mode, fmrs=ops, reject=rates, block_rows=rows)
        assert_same(res.fnmr, ref, atol=0)
    if slack == 1 and mode == "recompute_nearest":  # tails were also cut while the blocks streamed in
        assert spy["tails"] > len(spy["k"]) * len(rates)
    kept = np.array([n - int(r * n) for r in rates])
    np.testing.assert_array_equal(res.n_kept, kept * (kept - 1) // 2)
    assert res.prefix == ("erc_image" if mode == "recompute_nearest" else "erc_image_index")


def test_image_erc_similarity_kind():
    e, labels, q = identities(14, 60, 6, 8, False)
    res = E.image_erc(e, labels, q, fmrs=(0.05, 0.01), reject=[0.0, 0.3], score_kind="similarity", block_rows=5)
    ref = image_brute_force(e, labels, q, [0.0, 0.3], (0.05, 0.01), kind="similarity")
    assert_same(res.fnmr, ref, atol=0)


# ---- API ------------------------------------------------------------------------------------------
def test_pair_quality_reductions():
    a, b = np.array([0.2, 0.9, 0.5]), np.array([0.4, 0.3, 0.5])
    np.testing.assert_allclose(E.pair_quality(a, b), [0.2, 0.3, 0.5])
    np.testing.assert_allclose(E.pair_quality(a, b, "mean"), [0.3, 0.6, 0.5])
    np.testing.assert_allclose(E.pair_quality(a, b, "product"), [0.08, 0.27, 0.25])
    np.testing.assert_allclose(E.pair_quality(a, b, "max"), [0.4, 0.9, 0.5])
    interleaved = np.stack([a, b], axis=1).ravel()  # rows 2p, 2p+1
    np.testing.assert_allclose(E.pair_quality(interleaved, reduce="product"), [0.08, 0.27, 0.25])
    with pytest.raises(ValueError, match="reduce"):
        E.pair_quality(a, b, "median")
    with pytest.raises(ValueError, match="even"):
        E.pair_quality(a)
    with pytest.raises(ValueError, match="same length"):
        E.pair_quality(a, b[:2])


def test_to_distance():
    s = np.array([1.0, 0.0, -1.0, 1.0 + 1e-12])
    np.testing.assert_allclose(E.to_distance(s), [0.0, 0.5, 1.0, 0.0])  # clipped like CR-FIQA
    np.testing.assert_array_equal(E.to_distance(s, "similarity"), -s)
    np.testing.assert_array_equal(E.to_distance(s, "distance"), s)
    with pytest.raises(ValueError, match="score_kind"):
        E.to_distance(s, "angle")


def test_metrics_keys():
    d, same, q = random_pairs(15, 3000)
    res = E.erc(d, same, q, score_kind="distance")
    m = res.metrics()
    assert m["erc_auc_fmr1e-3"] == res.auc[1]
    assert m["erc_pauc0.2_fmr1e-3"] == res.pauc[0.2][1]
    assert m["erc_pauc0.3_fmr1e-2"] == res.pauc[0.3][0]
    assert m["erc_fnmr_fmr1e-4_reject0.3"] == res.fnmr[6, 2]  # grid value 0.30000000000000004
    assert m["erc_fnmr_fmr1e-3_reject0"] == res.fnmr[0, 1]
    assert len(m) == 3 * (1 + 2 + 4) and all(isinstance(v, float) for v in m.values())
    assert set(res.metrics("x", fnmr_at=[0.5])) >= {"x_fnmr_fmr1e-2_reject0.5", "x_auc_fmr1e-2"}
    with pytest.raises(ValueError, match="not on the grid"):
        res.metrics(fnmr_at=[0.33])
    assert "edc_pauc0.2_fmr1e-2" in E.erc(d, same, q, mode="fixed", score_kind="distance").metrics()
    assert "erc_index_auc_fmr1e-2" in E.erc(d, same, q, mode="recompute_index", score_kind="distance").metrics()


def test_protocols():
    rng = np.random.default_rng(16)
    emb = rng.normal(size=(400, 8))
    issame = rng.random(200) < 0.5
    emb[1::2][issame] = emb[0::2][issame] + 0.3 * rng.normal(size=(int(issame.sum()), 8))
    qual = rng.random(400)
    out = E.erc_pairs(embeddings=emb, qualities=qual, issame=issame, degradation=None)
    cos = np.sum(emb[0::2] * emb[1::2], 1) / np.linalg.norm(emb[0::2], axis=1) / np.linalg.norm(emb[1::2], axis=1)
    ref = E.erc(cos, issame, np.minimum(qual[0::2], qual[1::2])).metrics()
    assert out.keys() == ref.keys()
    assert_same(list(out.values()), list(ref.values()))
    fused = cos + 0.1
    out = E.erc_pairs(emb, qual, issame, pair_similarity=fused, mode="fixed", fmrs=[0.1])
    assert (
        out
        == E.erc(fused, issame, np.minimum(qual[0::2], qual[1::2]), "fixed", [0.1], score_kind="similarity").metrics()
    )
    labels = rng.integers(0, 20, 400)
    img = E.erc_images(emb, qual, labels=labels, fmrs=[0.01], reject=[0, 0.1, 0.2, 0.3])
    assert set(img) == {"erc_image_auc_fmr1e-2", "erc_image_pauc0.2_fmr1e-2", "erc_image_pauc0.3_fmr1e-2"} | {
        f"erc_image_fnmr_fmr1e-2_reject{r}" for r in ("0", "0.1", "0.2", "0.3")
    }


def test_pauc_off_the_grid_is_nan():
    d, same, q = random_pairs(22, 600)
    res = E.erc(d, same, q, reject=[0.1, 0.2, 0.25], pauc_limits=(0.05, 0.2, 0.3), score_kind="distance")
    assert np.isnan(res.pauc[0.05]).all() and np.isnan(res.pauc[0.3]).all()
    np.testing.assert_allclose(res.pauc[0.2], 0.1 * (res.fnmr[0] + res.fnmr[1]) / 2)


def test_empty_classes_give_nan():
    d = np.array([0.1, 0.2, 0.3, 0.9])
    same = np.array([True, True, True, False])
    q = np.array([0.1, 0.2, 0.3, 0.0])  # the only impostor goes first
    res = E.erc(d, same, q, fmrs=[0.1], reject=[0.0, 0.25], score_kind="distance")
    assert not np.isnan(res.fnmr[0, 0]) and np.isnan(res.fnmr[1, 0])
    assert np.isnan(res.auc[0])


def test_input_validation():
    d, same, q = random_pairs(17, 100)
    with pytest.raises(ValueError, match="mode"):
        E.erc(d, same, q, mode="recompute")
    with pytest.raises(ValueError, match="one length"):
        E.erc(d, same[:-1], q)
    with pytest.raises(ValueError, match="NaN"):
        E.erc(np.where(np.arange(100) == 3, np.nan, d), same, q)
    with pytest.raises(ValueError, match="pair_q contains NaN"):
        E.erc(d, same, np.full(100, np.nan))
    with pytest.raises(ValueError, match="reject"):
        E.erc(d, same, q, reject=[0.0, 0.5, 0.2])
    with pytest.raises(ValueError, match="reject"):
        E.erc(d, same, q, reject=[0.0, 1.0])
    with pytest.raises(ValueError, match="fmrs"):
        E.erc(d, same, q, fmrs=[0.0])
    with pytest.raises(ValueError, match="10\\*\\*-k"):
        E.erc(d, same, q, mode="recompute_index", fmrs=[2e-3])
    with pytest.raises(ValueError, match="at least one pair"):
        E.erc([], [], [])
    with pytest.raises(ValueError, match="genuine"):
        E.erc(d, np.zeros(100, bool), q, mode="fixed")
    e, labels, qi = identities(18, 20, 4, 4, False)
    with pytest.raises(ValueError, match="recompute"):
        E.image_erc(e, labels, qi, mode="fixed")
    with pytest.raises(ValueError, match=r"labels \(N,\)"):
        E.image_erc(e, labels[:-1], qi)
    with pytest.raises(ValueError, match="score_kind"):
        E.image_erc(e, labels, qi, score_kind="distance")
    with pytest.raises(ValueError, match="exactly one"):
        EDC.edc(d, q, threshold=0.1, starting_error=0.05)
    with pytest.raises(ValueError, match="error"):
        EDC.edc(d, q, error="eer", threshold=0.1)
    with pytest.raises(ValueError, match="limit"):
        EDC.edc(d, q, threshold=0.1).pauc(1.5)


def test_numpy_only():
    """Importing and running fiqa.eval.erc / edc never imports torch, even when torch is importable."""
    code = """
        import sys, importlib.abc
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from fiqa.eval import erc, edc
        rng = np.random.default_rng(0)
        same = rng.random(500) < 0.5
        for mode in erc.MODES:
            erc.erc(rng.random(500), same, rng.random(500), mode=mode, fmrs=[0.01])
        erc.image_erc(rng.normal(size=(30, 4)), rng.integers(0, 3, 30), rng.random(30), fmrs=[0.1])
        edc.edc(rng.random(50), rng.random(50), starting_error=0.05)
        assert "torch" not in sys.modules
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
