"""fiqa.eval.verification against hand-worked numbers and an independent transcription of
insightface's loop."""

import numpy as np
import pytest
from sklearn.model_selection import KFold

from fiqa.eval import verification as V

# ---------------------------------------------------------------------------------------------
# helpers


def _pairs_with_distances(d):
    """emb1 = 0 and emb2 = sqrt(d) in 1-D, so that sum((e1-e2)**2) is d up to one ulp. The
    distances below all sit well between threshold grid points, so one ulp never matters."""
    d = np.asarray(d, dtype=np.float64)
    return np.zeros((d.size, 1)), np.sqrt(d)[:, None]


def _unit_pairs_with_distances(d):
    """(2P, 2) unit embeddings whose pair p has squared L2 distance d[p]: rows (1, 0) and
    (cos a, sin a) with 2 - 2 cos a = d."""
    d = np.asarray(d, dtype=np.float64)
    a = np.arccos(1.0 - d / 2.0)
    emb = np.zeros((2 * d.size, 2))
    emb[0::2, 0] = 1.0
    emb[1::2, 0] = np.cos(a)
    emb[1::2, 1] = np.sin(a)
    return emb


def _reference_roc(thresholds, emb1, emb2, issame, nfolds):
    """A direct numpy transcription of insightface's calculate_roc / calculate_accuracy loops
    (threshold loop, KFold, first argmax), written independently of the module."""

    def accuracy(threshold, dist, actual_issame):
        predict_issame = np.less(dist, threshold)
        tp = np.sum(np.logical_and(predict_issame, actual_issame))
        fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
        tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
        fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
        tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
        fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
        acc = float(tp + tn) / dist.size
        return tpr, fpr, acc

    n_pairs = len(issame)
    n_thr = len(thresholds)
    tprs = np.zeros((nfolds, n_thr))
    fprs = np.zeros((nfolds, n_thr))
    acc = np.zeros(nfolds)
    best = np.zeros(nfolds)
    dist = np.sum(np.square(np.subtract(emb1, emb2)), 1)
    for f, (train, test) in enumerate(KFold(n_splits=nfolds, shuffle=False).split(np.arange(n_pairs))):
        acc_train = np.zeros(n_thr)
        for i, t in enumerate(thresholds):
            _, _, acc_train[i] = accuracy(t, dist[train], issame[train])
        b = np.argmax(acc_train)
        for i, t in enumerate(thresholds):
            tprs[f, i], fprs[f, i], _ = accuracy(t, dist[test], issame[test])
        _, _, acc[f] = accuracy(thresholds[b], dist[test], issame[test])
        best[f] = thresholds[b]
    return np.mean(tprs, 0), np.mean(fprs, 0), acc, best


def _random_pairs(seed, n_pairs, dim=16, noise=1.2):
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    a = rng.standard_normal((n_pairs, dim))
    b = np.where(issame[:, None], a + noise * rng.standard_normal((n_pairs, dim)), rng.standard_normal((n_pairs, dim)))
    return V.l2_normalize(a), V.l2_normalize(b), issame


# ---------------------------------------------------------------------------------------------
# basics


def test_key_helpers():
    assert V.far_key(1e-3) == "far1e-3"
    assert V.far_key(0.01) == "far1e-2"
    assert V.far_key(1e-4) == "far1e-4"
    assert V.far_key(2.5e-4) == "far2.5e-4"
    assert V.sci_key(0.1) == "1e-1"


def test_threshold_grids():
    assert V.ROC_THRESHOLDS.size == 400 and V.VAL_THRESHOLDS.size == 4000
    np.testing.assert_array_equal(V.ROC_THRESHOLDS, np.arange(0, 4, 0.01))


def test_l2_normalize_and_fuse_flip():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(V.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    # Raw sum then L2: (3,4)+(1,0) = (4,4) -> (1,1)/sqrt(2). Summing the unit vectors instead
    # would give (1.6,0.8)/|.| -- a different direction, so this pins insightface's rule.
    emb = np.array([[3.0, 4.0]])
    flip = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(V.fuse_flip(emb, flip), [[2**-0.5, 2**-0.5]])
    with pytest.raises(ValueError):
        V.fuse_flip(np.zeros((2, 3)), np.zeros((3, 3)))


def test_lfw_fold_layout():
    folds = V.kfold_splits(6000, 10)
    assert len(folds) == 10
    train0, test0 = folds[0]
    np.testing.assert_array_equal(test0, np.arange(600))
    np.testing.assert_array_equal(train0, np.arange(600, 6000))
    np.testing.assert_array_equal(folds[9][1], np.arange(5400, 6000))
    # Uneven sizes: the first n % k folds get one extra pair (sklearn's KFold).
    assert [len(te) for _, te in V.kfold_splits(23, 10)] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    # nfolds=1 is insightface's LFold: train = test = everything.
    ((tr, te),) = V.kfold_splits(5, 1)
    np.testing.assert_array_equal(tr, te)


def test_lfw_fold_layout_through_calculate_roc():
    # 6000 pairs, all perfectly separated except that in pairs 0..599 (fold 0) the genuine
    # distances are shifted to 1.2055 with impostors at 1.5055. Fold 0 is the only fold whose
    # test accuracy drops: its training folds (pairs 600..5999) choose threshold 0.51, which
    # rejects the shifted genuine pairs -> acc 0.5. If fold 0 were any other block, a different
    # fold would drop.
    n = 6000
    issame = np.tile([True, False], n // 2)
    d = np.where(issame, 0.5055, 1.5055)
    d[:600][issame[:600]] = 1.2055
    e1, e2 = _pairs_with_distances(d)
    _, _, acc, best = V.calculate_roc(V.ROC_THRESHOLDS, e1, e2, issame, nfolds=10)
    np.testing.assert_allclose(acc, [0.5] + [1.0] * 9)
    np.testing.assert_allclose(best[0], 0.51)


# ---------------------------------------------------------------------------------------------
# calculate_roc by hand


def test_calculate_roc_by_hand_two_folds():
    # Fold A = pairs 0..9, fold B = pairs 10..19 (KFold(2), contiguous). Distances sit at
    # x.xx5 so no grid threshold (multiples of 0.01) ties with them.
    #   A: genuine 0.505 0.515 0.525 0.535 0.545 | impostor 1.505 1.515 1.525 1.535 1.545
    #   B: genuine 0.105 0.205 0.705 0.805 0.905 | impostor 0.305 1.105 1.205 1.305 1.405
    # Train on A (fold 1): accuracy is 1.0 for t in (0.545, 1.505]; first grid max: t = 0.55.
    #   Test on B at 0.55: genuine < 0.55 -> 2 (0.105, 0.205); impostor >= 0.55 -> 4 -> 6/10.
    # Train on B (fold 0): acc(t) = (#gen < t + #imp >= t)/10:
    #   (0.105,0.205]:6  (0.205,0.305]:7  (0.305,0.705]:6  (0.705,0.805]:7  (0.805,0.905]:8
    #   (0.905,1.105]:9  (1.105,1.205]:8 ... max 0.9, first grid point t = 0.91.
    #   Test on A at 0.91: all 10 right -> 1.0.
    gen_a = [0.505, 0.515, 0.525, 0.535, 0.545]
    imp_a = [1.505, 1.515, 1.525, 1.535, 1.545]
    gen_b = [0.105, 0.205, 0.705, 0.805, 0.905]
    imp_b = [0.305, 1.105, 1.205, 1.305, 1.405]
    # interleave within each fold (order inside a fold does not matter, but should not be trivial)
    d = np.array(
        [gen_a[0], imp_a[0], imp_a[1], gen_a[1], gen_a[2], imp_a[2], imp_a[3], gen_a[3], gen_a[4], imp_a[4]]
        + [imp_b[0], gen_b[0], gen_b[1], imp_b[1], gen_b[2], imp_b[2], gen_b[3], imp_b[3], gen_b[4], imp_b[4]]
    )
    issame = np.array([1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    e1, e2 = _pairs_with_distances(d)
    tpr, fpr, acc, best = V.calculate_roc(V.ROC_THRESHOLDS, e1, e2, issame, nfolds=2)
    np.testing.assert_allclose(acc, [1.0, 0.6])
    np.testing.assert_allclose(best, [0.91, 0.55])
    # TPR/FPR are test-fold rates averaged over folds. At t = 0.55 (index 55):
    #   test A: tpr 5/5, fpr 0/5; test B: tpr 2/5, fpr 1/5 (0.305) -> mean tpr 0.7, fpr 0.1.
    assert tpr[55] == pytest.approx(0.7) and fpr[55] == pytest.approx(0.1)
    assert tpr[0] == 0.0 and fpr[0] == 0.0  # dist < 0 never holds

    # The same data through evaluate(): (2P, D) unit embeddings.
    out = V.evaluate(_unit_pairs_with_distances(d), issame, nfolds=2)
    assert out["acc"] == pytest.approx(0.8)
    assert out["acc_std"] == pytest.approx(0.2)  # np.std([1.0, 0.6]), ddof=0
    assert out["best_threshold"] == pytest.approx((0.91 + 0.55) / 2)


def test_first_argmax_wins_on_ties():
    # 10 folds x 2 pairs: genuine 0.2055, impostor 0.8055 in every fold. Every train fold is
    # perfectly separated by any t in (0.2055, 0.8055]: the first max is t = 0.21.
    issame = np.tile([True, False], 10)
    d = np.where(issame, 0.2055, 0.8055)
    e1, e2 = _pairs_with_distances(d)
    _, _, acc, best = V.calculate_roc(V.ROC_THRESHOLDS, e1, e2, issame, nfolds=10)
    np.testing.assert_allclose(acc, 1.0)
    np.testing.assert_allclose(best, 0.21)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n_pairs,nfolds", [(600, 10), (605, 10), (97, 3)])
def test_calculate_roc_matches_insightface_loop(seed, n_pairs, nfolds):
    e1, e2, issame = _random_pairs(seed, n_pairs)
    ref_tpr, ref_fpr, ref_acc, ref_best = _reference_roc(V.ROC_THRESHOLDS, e1, e2, issame, nfolds)
    tpr, fpr, acc, best = V.calculate_roc(V.ROC_THRESHOLDS, e1, e2, issame, nfolds)
    np.testing.assert_array_equal(acc, ref_acc)
    np.testing.assert_array_equal(best, ref_best)
    np.testing.assert_array_equal(tpr, ref_tpr)
    np.testing.assert_array_equal(fpr, ref_fpr)
    assert 0.5 < acc.mean() < 1.0  # a non-trivial problem


def test_tpr_is_zero_without_positives():
    # A test fold with no genuine pair: tpr counts as 0 there, as in insightface.
    issame = np.array([True, True, False, False])
    e1, e2 = _pairs_with_distances([0.1055, 0.2055, 1.0055, 1.1055])
    tpr, _, _, _ = V.calculate_roc(V.ROC_THRESHOLDS, e1, e2, issame, nfolds=2)
    # t = 3.99 accepts all: fold 0 tpr 2/2 = 1, fold 1 has no positive -> 0; mean 0.5.
    assert tpr[-1] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# calculate_val

# Hand case for VAL with thresholds t_i = i/10 (i = 0..9) and nfolds = 2.
#   Fold A = pairs 0..6: impostor 0.15 0.35 0.55 0.75 | genuine 0.25 0.45 0.63
#   Fold B = pairs 7..13: impostor 0.05 0.65 0.85 0.95 | genuine 0.15 0.33 0.45
# FAR on train B (fold 0), t = 0, .1, ..., .9: [0, .25, .25, .25, .25, .25, .25, .5, .5, .75]
# FAR on train A (fold 1):                      [0, 0, .25, .25, .5, .5, .75, .75, 1, 1]
# Both repeat values: the original interp1d(kind='slinear') raises on modern SciPy.
_THR10 = np.arange(10) / 10
_IMP_A, _GEN_A = [0.15, 0.35, 0.55, 0.75], [0.25, 0.45, 0.63]
_IMP_B, _GEN_B = [0.05, 0.65, 0.85, 0.95], [0.15, 0.33, 0.45]
_FAR_B = np.array([0, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 0.75])
_FAR_A = np.array([0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1])


def _val_case():
    d = np.array(_IMP_A + _GEN_A + _IMP_B + _GEN_B)
    issame = np.array([0, 0, 0, 0, 1, 1, 1] * 2, dtype=bool)
    return _pairs_with_distances(d) + (issame,)


def test_val_train_far_curves_are_as_worked_out():
    e1, e2, issame = _val_case()
    d = V.pair_distances(e1, e2)
    for (train, _), expected in zip(V.kfold_splits(14, 2), [_FAR_B, _FAR_A]):
        neg = d[train][~issame[train]]
        far = np.array([np.mean(neg < t) for t in _THR10])
        np.testing.assert_allclose(far, expected)


def test_threshold_at_far_rule_by_hand():
    f = V._threshold_at_far
    # Target 0.3 between runs: last t with FAR < 0.3, next grid t, linear in FAR.
    #   FAR_B: (0.25 @ 0.6) -> (0.5 @ 0.7): 0.6 + (0.05/0.25) * 0.1 = 0.62
    #   FAR_A: (0.25 @ 0.3) -> (0.5 @ 0.4): 0.3 + 0.2 * 0.1 = 0.32
    assert f(_FAR_B, _THR10, 0.3) == pytest.approx(0.62)
    assert f(_FAR_A, _THR10, 0.3) == pytest.approx(0.32)
    # Exact hit: the largest threshold with that FAR (0.25 on B is attained at 0.1 ... 0.6).
    assert f(_FAR_B, _THR10, 0.25) == pytest.approx(0.6)
    assert f(_FAR_A, _THR10, 0.25) == pytest.approx(0.3)
    assert f(_FAR_A, _THR10, 1.0) == pytest.approx(0.9)
    # max FAR below the target -> 0, as in the original.
    assert f(_FAR_B, _THR10, 0.9) == 0.0


def test_threshold_at_far_equals_interp1d_when_far_strictly_increases():
    from scipy.interpolate import interp1d

    thr = np.linspace(0, 2, 50)
    far = np.sort(np.random.default_rng(0).random(50))
    far[0] = 0.0
    assert np.all(np.diff(far) > 0)
    for target in [1e-3, 0.05, 0.3, 0.77, far[10]]:
        expected = float(interp1d(far, thr, kind="slinear")(target))
        assert V._threshold_at_far(far, thr, target) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_calculate_val_by_hand_repeated_far():
    e1, e2, issame = _val_case()
    # far_target 0.3. Fold 0: train B -> thr 0.62. Test A: genuine < 0.62: 0.25, 0.45 (not 0.63)
    #   -> val 2/3; impostors < 0.62: 0.15 0.35 0.55 -> far 3/4.
    # Fold 1: train A -> thr 0.32. Test B: genuine 0.15 (not 0.33, 0.45) -> val 1/3;
    #   impostor 0.05 -> far 1/4.
    # (The alternative rule "largest threshold per distinct FAR, then interpolate" would give
    #  0.64 and 0.34 and accept the genuine 0.63 and 0.33: val 1 and 2/3.)
    val, val_std, far = V.calculate_val(_THR10, e1, e2, issame, far_target=0.3, nfolds=2)
    assert val == pytest.approx(0.5)
    assert val_std == pytest.approx(1 / 6)
    assert far == pytest.approx(0.5)


def test_calculate_val_thr_zero_branch():
    e1, e2, issame = _val_case()
    # far_target 0.9. Fold 0: max FAR_B = 0.75 < 0.9 -> thr 0 -> val 0, far 0.
    # Fold 1: FAR_A (0.75 @ 0.7) -> (1 @ 0.8): thr = 0.7 + (0.15/0.25)*0.1 = 0.76.
    #   Test B: genuine all < 0.76 -> val 1; impostors 0.05, 0.65 -> far 2/4.
    val, val_std, far = V.calculate_val(_THR10, e1, e2, issame, far_target=0.9, nfolds=2)
    assert val == pytest.approx(0.5)
    assert val_std == pytest.approx(0.5)
    assert far == pytest.approx(0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_random_does_not_crash_and_is_consistent(seed):
    e1, e2, issame = _random_pairs(seed, 600)
    emb = np.empty((1200, e1.shape[1]))
    emb[0::2], emb[1::2] = e1, e2
    out = V.evaluate(emb, issame)
    assert set(out) == {"acc", "acc_std", "best_threshold", "val@far1e-3", "val_std", "far"}
    assert all(type(v) is float for v in out.values())
    _, _, acc, best = _reference_roc(V.ROC_THRESHOLDS, e1, e2, issame, 10)
    assert out["acc"] == float(np.mean(acc))
    assert out["acc_std"] == float(np.std(acc))
    assert out["best_threshold"] == float(np.mean(best))
    assert 0.0 <= out["val@far1e-3"] <= 1.0 and 0.0 <= out["far"] <= 1.0
    # The far key follows far_target.
    assert "val@far1e-2" in V.evaluate(emb, issame, far_target=1e-2)


def test_evaluate_separable_val():
    # 10 folds of (genuine 0.5055, impostor 1.5055). Train FAR is 0 up to t = 1.505 and 1 from
    # t = 1.506: thr = 1.505 + 0.001 * 0.001 = 1.505001 accepts every genuine and no impostor.
    issame = np.tile([True, False], 50)
    emb = _unit_pairs_with_distances(np.where(issame, 0.5055, 1.5055))
    out = V.evaluate(emb, issame)
    assert out["acc"] == 1.0 and out["acc_std"] == 0.0
    assert out["best_threshold"] == pytest.approx(0.51)
    assert out["val@far1e-3"] == 1.0 and out["val_std"] == 0.0 and out["far"] == 0.0


def test_evaluate_errors():
    emb = np.random.default_rng(0).standard_normal((20, 4))
    issame = np.ones(10, dtype=bool)
    with pytest.raises(ValueError, match="folds"):
        V.evaluate(emb[:18], issame[:9], nfolds=10)
    with pytest.raises(ValueError, match="issame"):
        V.evaluate(emb, issame[:9])
    with pytest.raises(ValueError, match="2P"):
        V.evaluate(emb[:19], issame)
    bad = emb.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        V.evaluate(bad, issame)
    with pytest.raises(ValueError):
        V.calculate_roc(V.ROC_THRESHOLDS, emb[:5], emb[5:9], issame[:5], nfolds=2)


# ---------------------------------------------------------------------------------------------
# XQLFW: cosine distance, thresholds arange(0, 2, 0.001)


def _reference_xqlfw(e1, e2, issame, nfolds=10):
    """The XQLFW protocol transcribed independently: sklearn's paired cosine distance, the
    threshold grid np.arange(0, 2, 0.001), KFold(10, shuffle=False), the train-best threshold per
    fold, the test-fold accuracy, the mean over folds."""
    from sklearn.metrics.pairwise import paired_distances

    dist = paired_distances(e1, e2, metric="cosine")
    thresholds = np.arange(0, 2, 0.001)
    accs = []
    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(issame))):
        train_acc = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        t = thresholds[int(np.argmax(train_acc))]
        accs.append(np.mean((dist[test] < t) == issame[test]))
    return np.asarray(accs)


@pytest.mark.parametrize("seed", [0, 1])
def test_xqlfw_cosine_protocol_matches_transcription(seed):
    e1, e2, issame = _random_pairs(seed, 600, noise=1.0)
    ref = _reference_xqlfw(e1, e2, issame)
    _, _, acc, _ = V.calculate_roc(V.COSINE_ROC_THRESHOLDS, e1, e2, issame, 10, distance="cosine")
    np.testing.assert_allclose(acc, ref, atol=1e-12)
    emb = np.empty((1200, e1.shape[1]))
    emb[0::2], emb[1::2] = e1, e2
    out = V.evaluate(emb, issame, distance="cosine")
    assert out["acc"] == pytest.approx(ref.mean(), abs=1e-12)
    # Halving the distance and the VAL grid changes no decision: VAL@FAR equals the squared-L2 one.
    assert out["val@far1e-3"] == pytest.approx(V.evaluate(emb, issame)["val@far1e-3"], abs=1e-12)


def test_cosine_distance_is_sklearns():
    from sklearn.metrics.pairwise import paired_distances

    e1, e2, _ = _random_pairs(5, 50)
    np.testing.assert_allclose(
        V.pair_distances(e1, e2, "cosine"), paired_distances(e1, e2, metric="cosine"), atol=1e-15
    )
    with pytest.raises(ValueError, match="distance must be one of"):
        V.pair_distances(e1, e2, "l1")
