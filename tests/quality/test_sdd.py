"""SDD-FIQA pseudo-labels (fiqa.quality.sdd): the 1-D Wasserstein distance against scipy and by hand, the
sampling (distinct positives of the class, distinct negatives outside it) and the labels of a toy set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from fiqa.quality.sdd import _draw_negatives, pseudo_labels, wasserstein_1d, wasserstein_rows


def test_wasserstein_by_hand():
    assert wasserstein_1d([0.0, 1.0], [2.0, 3.0]) == pytest.approx(2.0)  # every unit of mass moves by 2
    assert wasserstein_1d([0.0], [0.0, 1.0]) == pytest.approx(0.5)  # half the mass moves by 1
    # F_u = 1/3, 2/3, 1 from 0.1, 0.2, 0.9; F_v = 1/2, 1 from 0.5, 0.7: |F_u - F_v| is 1/3 on [0.1, 0.2),
    # 2/3 on [0.2, 0.5), 1/6 on [0.5, 0.7), 1/3 on [0.7, 0.9): 1/30 + 1/5 + 1/30 + 1/15 = 1/3
    u, v = [0.1, 0.2, 0.9], [0.5, 0.7]
    hand = 0.1 * (1 / 3) + 0.3 * (2 / 3) + 0.2 * (2 / 3 - 1 / 2) + 0.2 * abs(2 / 3 - 1)
    assert hand == pytest.approx(1 / 3) and wasserstein_1d(u, v) == pytest.approx(hand)
    assert wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v))


def test_wasserstein_matches_scipy_with_ties_and_sizes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        u = np.round(rng.normal(size=rng.integers(1, 40)), 1)  # rounding makes ties
        v = np.round(rng.normal(0.5, 2.0, size=rng.integers(1, 40)), 1)
        assert wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v), abs=1e-12)


def test_wasserstein_rows_with_padding_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (30, 24)), rng.uniform(-1, 1, (30, 24))
    w = np.ones_like(a)
    sizes = rng.integers(1, 25, 30)
    for i, k in enumerate(sizes):
        w[i, k:] = 0.0
        a[i, k:] = rng.uniform(-5, 5, 24 - k)  # padded values must not matter
    got = wasserstein_rows(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(w)).numpy()
    ref = [wasserstein_distance(a[i, :k], b[i]) for i, k in enumerate(sizes)]
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_negatives_are_distinct_and_outside_the_class():
    gen = torch.Generator().manual_seed(0)
    n = 40
    start = torch.tensor([0, 10, 30, 35])
    size = torch.tensor([10, 20, 5, 5])
    neg = _draw_negatives(start, size, n, 18, gen, "cpu")  # 18 of 20 others for the second row: many redraws
    for r in range(4):
        row = neg[r].tolist()
        assert len(set(row)) == 18
        assert all(not (start[r] <= j < start[r] + size[r]) and 0 <= j < n for j in row)


def _toy(seed=0, ids=6, per=5, d=16, noise=0.15):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, d))
    labels = np.repeat(np.arange(ids), per)
    spread = np.full(labels.size, noise)
    spread[::per] = 1.5  # the first image of every identity is far from its class: "low quality"
    emb = centres[labels] + spread[:, None] * rng.normal(size=(labels.size, d))
    return emb, labels


def test_labels_with_every_pair_equal_scipy_on_the_full_distributions():
    """With n_pos >= class size - 1 and n_neg = all other images, the draw is the whole distribution: each
    repetition is then the same, and the label is the min-max [0, 100] of scipy's WD(intra, inter)."""
    emb, labels = _toy()
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = unit @ unit.T
    wd = np.array(
        [
            wasserstein_distance(
                sim[i, (labels == labels[i]) & (np.arange(len(labels)) != i)], sim[i, labels != labels[i]]
            )
            for i in range(len(labels))
        ]
    )
    ref = (wd - wd.min()) / (wd.max() - wd.min()) * 100
    got = pseudo_labels(emb, labels, n_neg=25, n_pos=24, repeats=3, chunk=7, dtype=torch.float64)
    np.testing.assert_allclose(got, ref, atol=1e-9)
    f32 = pseudo_labels(emb.astype(np.float32), labels, n_neg=25, n_pos=24, repeats=1)
    np.testing.assert_allclose(f32, ref, atol=1e-3)  # float32 similarities: ~1e-5 on the [0, 100] scale
    raw = pseudo_labels(emb, labels, n_neg=25, n_pos=24, repeats=1, normalize=False, dtype=torch.float64)
    np.testing.assert_allclose(raw, wd, atol=1e-12)


def test_sampled_labels_rank_the_outliers_low_and_are_reproducible():
    emb, labels = _toy(ids=20, per=10)
    q = pseudo_labels(emb, labels, n_neg=24, n_pos=4, repeats=12, seed=3, chunk=50)
    assert q.shape == (200,) and np.all((q >= 0) & (q <= 100))
    outlier = np.zeros(200, bool)
    outlier[::10] = True
    assert q[outlier].max() < q[~outlier].min()  # higher = better: every far image below every close one
    np.testing.assert_array_equal(q, pseudo_labels(emb, labels, n_neg=24, n_pos=4, repeats=12, seed=3, chunk=50))
    assert not np.array_equal(q, pseudo_labels(emb, labels, n_neg=24, n_pos=4, repeats=12, seed=4, chunk=50))


def test_singleton_identity_has_no_label_and_errors_are_clear():
    emb, labels = _toy(ids=4, per=5)
    labels = labels.copy()
    labels[0] = 99  # an identity of one image
    q = pseudo_labels(emb, labels, n_neg=5, n_pos=3, repeats=2)
    assert np.isnan(q[0]) and np.isfinite(q[1:]).all()
    with pytest.raises(ValueError, match="n_neg"):
        pseudo_labels(emb, labels, n_neg=100)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        pseudo_labels(emb, labels[:3])
