"""The fast paths of ``fiqa.eval.erc.erc`` against the plain-loop transcriptions of tests/eval/test_erc.py:
the bucketed segment map (used from 4 * ``_BUCKETS`` pairs on; shrunk here so that small inputs take it),
its fallback to one sort when the cut buckets are crowded (ties), and the genuine floor (genuine
distances below the smallest impostor counted, not stored) with its retry when FMR 0 is chosen."""

from __future__ import annotations

import numpy as np
import pytest

from fiqa.eval import erc as E
from fiqa.eval import erc_segments as S
from tests.eval.test_erc import assert_same, crfiqa_erc, magface_erc, random_pairs

CUTS = E.DEFAULT_REJECT


@pytest.fixture
def small_buckets(monkeypatch):
    monkeypatch.setattr(S, "_BUCKETS", 64)  # bucket path from 256 pairs on
    monkeypatch.setattr(S, "_CUT_MEMBERS", 1 << 14)


@pytest.mark.parametrize("seed,n,ties", [(30, 3000, False), (31, 5000, True), (32, 700, False)])
def test_bucketed_segments_equal_the_sorted_ones(seed, n, ties, small_buckets):
    d, same, q = random_pairs(seed, n, ties)
    cuts = (CUTS * n).astype(np.int64)
    m = S._SegMap(q, cuts, same)
    assert m.seg is None  # the bucket path was taken
    ref = S._segments(q, cuts)
    np.testing.assert_array_equal(m.of(np.arange(n)), ref)
    sub = np.flatnonzero(same)[::3]
    np.testing.assert_array_equal(m.of(sub), ref[sub])
    counts = np.bincount(ref.astype(np.int64) * 2 + same, minlength=2 * (CUTS.size + 1))
    np.testing.assert_array_equal(m.n_imp, counts[0::2])
    np.testing.assert_array_equal(m.n_gen, counts[1::2])


def test_segments_by_hand(small_buckets):
    # 300 pairs, quality = index (stable position = index), cuts at 0, 100, 150: a pair is kept at the
    # first rate always, at the second iff its position >= 100, at the third iff >= 150. Two ties straddle
    # cuts, and a tie goes in index order: pairs 99, 100, 101 at quality 99.5 (positions 99, 100, 101:
    # pair 99 goes at the second cut, 100 and 101 stay), and pairs 149, 150, 160 at 149.5 (positions 149,
    # 150, 151: pair 149 goes at the third cut, 150 and 160 stay; pairs 151..159 move up one place).
    q = np.arange(300, dtype=np.float64)
    q[[99, 100, 101]] = 99.5
    q[[149, 150, 160]] = 149.5
    same = np.arange(300) % 3 == 0
    m = S._SegMap(q, np.array([0, 100, 150]), same)
    assert m.seg is None
    got = m.of(np.array([99, 100, 101, 149, 150, 160, 151, 0, 299]))
    np.testing.assert_array_equal(got, [1, 2, 2, 2, 3, 3, 3, 1, 3])
    seg = m.of(np.arange(300))
    assert np.count_nonzero(seg == 1) == 100 and np.count_nonzero(seg == 2) == 50 and np.count_nonzero(seg == 3) == 150
    # pairs per (segment, class): genuine = every third index
    gen = np.arange(300) % 3 == 0
    assert m.n_gen.tolist() == [0] + [int(np.count_nonzero(gen & (seg == s))) for s in (1, 2, 3)]
    assert m.n_imp.tolist() == [0] + [int(np.count_nonzero(~gen & (seg == s))) for s in (1, 2, 3)]


def test_crowded_cut_buckets_fall_back_to_one_sort(monkeypatch):
    monkeypatch.setattr(S, "_BUCKETS", 64)
    monkeypatch.setattr(S, "_CUT_MEMBERS", 16)
    d, same, q = random_pairs(33, 4000, ties=True)  # qualities rounded to 0.1: few, big buckets
    m = S._SegMap(q, (CUTS * 4000).astype(np.int64), same)
    assert m.seg is not None
    np.testing.assert_array_equal(m.of(np.arange(4000)), S._segments(q, (CUTS * 4000).astype(np.int64)))


@pytest.mark.parametrize("seed,n,ties", [(34, 3000, False), (35, 4000, True), (36, 2500, False)])
@pytest.mark.parametrize("slack", [32, 1])
def test_erc_on_the_bucket_path_matches_the_loops(seed, n, ties, slack, small_buckets, monkeypatch):
    monkeypatch.setattr(S, "_TAIL_SLACK", slack)
    d, same, q = random_pairs(seed, n, ties)
    res = E.erc(d, same, q, score_kind="distance")
    ref, ref_thr = crfiqa_erc(d, same, q)
    assert_same(res.fnmr, ref, atol=0)
    assert_same(res.threshold, ref_thr, atol=0)
    assert_same(E.erc(d, same, q, mode="recompute_index", score_kind="distance").fnmr, magface_erc(d, same, q), atol=0)


def test_fmr_zero_stores_the_genuine_distances_below_the_floor(monkeypatch):
    """A threshold below every kept impostor (FMR 0 nearer than 1 / n_imp, with a genuine pair below the
    smallest impostor) is the largest genuine distance under it, which the floor does not store: the
    rule must see it is not exact and rebuild with every genuine distance."""
    seen = []
    nearest = S._nearest

    def spy(gen, imp, i, op):
        out = nearest(gen, imp, i, op)
        seen.append((gen.floor, bool(out[2].all())))
        return out

    monkeypatch.setattr(S, "_nearest", spy)
    d, same, q = random_pairs(37, 1500)
    res = E.erc(d, same, q, fmrs=(1e-4, 1e-2), score_kind="distance")
    assert seen[0][0] > -np.inf and not seen[0][1]  # the floor first, not exact
    assert seen[-1] == (-np.inf, True)  # then every genuine distance: exact
    ref, ref_thr = crfiqa_erc(d, same, q, ops=(1e-4, 1e-2))
    assert_same(res.fnmr, ref, atol=0)
    assert_same(res.threshold, ref_thr, atol=0)
    # the threshold at FMR 1e-4 is below the smallest impostor distance at rate 0 (FMR 0)
    assert res.threshold[0, 0] < d[~same].min()
