"""QMagFace score and fit (reference §5): hand-worked numbers, the published presets, the fit against
a plain loop transcription of the paper's procedure, and a planted quality-dependent score shift."""

import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LinearRegression
from sklearn.metrics import roc_curve

from fiqa.quality import qmagface
from fiqa.quality.qmagface import PRESETS, fit, fit_scores, generate_pairs, get_preset, pair_scores, roc_points, score

# ------------------------------------------------------------------------------------------ score


def test_score_by_hand():
    a, b = 0.077428, 0.125926
    # s=0.3: beta*s - alpha = 0.0377778 - 0.077428 = -0.0396502; q = min(25, 30) = 25 -> -0.991255 + 0.3
    assert score(0.3, 25.0, 30.0, a, b) == pytest.approx(-0.0396502 * 25 + 0.3, abs=1e-6)
    assert score(0.3, 25.0, 30.0, a, b) == pytest.approx(-0.691255, abs=1e-6)
    # s=0.8: beta*s - alpha = 0.0233128 > 0 -> omega = 0, the score is s
    assert score(0.8, 25.0, 30.0, a, b) == 0.8
    # the zero crossing s = alpha / beta = 0.614868 leaves s unchanged
    assert score(a / b, 20.0, 40.0, a, b) == pytest.approx(a / b, abs=1e-12)
    # a typical impostor (s=0.1, q=25): (0.0125926 - 0.077428) * 25 + 0.1 = -1.520885 (§5.5: about -1.5)
    assert score(0.1, 25.0, 26.0, a, b) == pytest.approx(-1.520885, abs=1e-6)


def test_score_vectorised_and_broadcast():
    s = np.array([[0.1, 0.5], [0.7, -0.2]])
    q1 = np.array([[20.0, 30.0], [10.0, 40.0]])
    out = score(s, q1, 25.0, alpha=0.1, beta=0.2)
    expect = np.array(
        [
            [min(0, 0.2 * 0.1 - 0.1) * 20 + 0.1, min(0, 0.2 * 0.5 - 0.1) * 25 + 0.5],
            [min(0, 0.2 * 0.7 - 0.1) * 10 + 0.7, min(0, 0.2 * -0.2 - 0.1) * 25 - 0.2],
        ]
    )
    assert isinstance(out, np.ndarray) and out.shape == (2, 2)
    np.testing.assert_allclose(out, expect, atol=1e-12)
    assert isinstance(score(0.5, 20, 30, 0.1, 0.2), float)


def test_presets_are_the_published_constants():
    assert PRESETS == {
        "magface18": (0.092861, 0.135311),
        "magface50": (0.065984, 0.103799),
        "magface100": (0.077428, 0.125926),
    }
    # zero crossings alpha / beta (reference §5.1): 0.686, 0.636, 0.615
    crossings = [round(a / b, 3) for a, b in PRESETS.values()]
    assert crossings == [0.686, 0.636, 0.615]
    assert get_preset("MagFace-100") == get_preset("magface_100") == (0.077428, 0.125926)
    assert score(0.3, 25, 30, preset="magface100") == score(0.3, 25, 30, 0.077428, 0.125926)
    assert score(0.3, 25, 30, preset="magface18") == pytest.approx((0.135311 * 0.3 - 0.092861) * 25 + 0.3)


def test_score_errors():
    with pytest.raises(ValueError, match="magface100"):
        get_preset("magface101")
    with pytest.raises(ValueError, match="magface100.*magface18.*magface50"):
        score(0.3, 25, 30, preset="arcface")
    with pytest.raises(ValueError, match="alpha and beta"):
        score(0.3, 25, 30)
    with pytest.raises(ValueError, match="not both"):
        score(0.3, 25, 30, 0.1, 0.2, preset="magface50")


# ------------------------------------------------------------------------------------------ fit vs a transcription


def transcribed_pairs(labels, seed, limit=10, n=5):
    """The paper's pair generation as nested loops, with the documented seeded draws."""
    rng = np.random.default_rng(seed)
    genuine, impostor = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        others = np.flatnonzero(labels != label)
        chosen = rng.choice(members, limit, replace=False) if members.size > limit else members
        k = chosen.size
        if k < 2:
            continue
        draws = rng.integers(0, others.size, size=(k * (k - 1) // 2, 2, n))
        p = 0
        for i in range(k):
            for j in range(i + 1, k):
                genuine.append((chosen[i], chosen[j]))
                for m in range(n):
                    impostor.append((chosen[i], others[draws[p, 0, m]]))
                    impostor.append((chosen[j], others[draws[p, 1, m]]))
                p += 1
    return np.array(genuine + impostor), np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]


def transcribed_fit(embeddings, pairs, y):
    """QMagFace.train as the reference describes it: sklearn's roc_curve and LinearRegression, loops."""
    norms = np.array([math.sqrt(float(v @ v)) for v in embeddings])
    unit = embeddings / norms[:, None]
    s = np.array([float(unit[a] @ unit[b]) for a, b in pairs])
    q = np.array([min(norms[a], norms[b]) for a, b in pairs])
    fmrs = np.logspace(np.log10(1e-5), np.log10(1e-2), num=50)
    max_omega = 0.5 / np.max(q)
    omegas = np.linspace(-max_omega, max_omega, num=20)
    thrs, fnmrs = np.zeros((20, 50)), np.zeros((20, 50))
    for i, omega in enumerate(omegas):
        fpr, tpr, thr = roc_curve(y, expit(omega * q + s))
        for j, fmr in enumerate(fmrs):
            below = 1 - tpr[fpr < fmr]
            k = np.argmin(below)
            fnmrs[i, j], thrs[i, j] = below[k], thr[k]
    ts, omega_opt = np.zeros(50), np.zeros(50)
    for j in range(50):
        i = np.argmin(fnmrs[:, j])
        ts[j], omega_opt[j] = thrs[i, j], omegas[i]
    line = LinearRegression().fit(ts.reshape(-1, 1), omega_opt)
    return -line.intercept_, line.coef_[0]


def random_identities(seed, n_ids=60, dim=32):
    """Identities with 1..14 images (so some have > limit, some < 2), magnitudes 10..40 and noisier
    directions for smaller magnitudes, so genuine pairs score higher and quality matters."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 15, size=n_ids)
    labels = np.repeat(rng.permutation(n_ids) * 7 + 3, counts)  # unsorted, non-contiguous label values
    labels = labels[rng.permutation(labels.size)]
    centres = rng.normal(size=(labels.max() + 1, dim))
    mag = rng.uniform(10, 40, size=labels.size)
    noise = rng.normal(size=(labels.size, dim)) * (2.0 / mag)[:, None]
    emb = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True) + noise
    return emb / np.linalg.norm(emb, axis=1, keepdims=True) * mag[:, None], labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_match_the_transcription(seed):
    _, labels = random_identities(100 + seed)
    pairs, matches = generate_pairs(labels, seed=seed)
    ref_pairs, ref_y = transcribed_pairs(labels, seed)
    assert len(pairs) == len(ref_pairs)
    n_gen = int(ref_y.sum())
    assert matches.sum() == n_gen and matches[:n_gen].all()
    np.testing.assert_array_equal(pairs[:n_gen], ref_pairs[:n_gen])  # genuine pairs: same order
    sort = lambda p: p[np.lexsort(p.T[::-1])]  # noqa: E731  impostors: same multiset
    np.testing.assert_array_equal(sort(pairs[n_gen:]), sort(ref_pairs[n_gen:]))
    assert (labels[pairs[:, 0]] == labels[pairs[:, 1]]).tolist() == matches.tolist()
    counts = {lab: (labels == lab).sum() for lab in np.unique(labels)}
    assert n_gen == sum(min(c, 10) * (min(c, 10) - 1) // 2 for c in counts.values())
    assert len(pairs) == 11 * n_gen


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fit_equals_the_transcription(seed):
    emb, labels = random_identities(200 + seed)
    alpha, beta = fit(emb, labels, seed=seed)
    pairs, y = transcribed_pairs(labels, seed)
    ref_alpha, ref_beta = transcribed_fit(emb, pairs, y)
    assert alpha == pytest.approx(ref_alpha, rel=1e-9, abs=1e-12)
    assert beta == pytest.approx(ref_beta, rel=1e-9, abs=1e-12)


def test_fit_with_given_pairs_and_qualities():
    emb, labels = random_identities(300)
    pairs, _ = transcribed_pairs(labels, 5)
    y = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    assert fit(emb, labels, pairs=pairs) == pytest.approx(transcribed_fit(emb, pairs, y), rel=1e-9)
    # explicit qualities equal to the magnitudes change nothing
    norms = np.linalg.norm(emb, axis=1)
    assert fit(emb, labels, norms, pairs=pairs) == pytest.approx(fit(emb, labels, pairs=pairs), rel=1e-12)


def test_fit_is_seeded():
    emb, labels = random_identities(400)
    assert fit(emb, labels, seed=7) == fit(emb, labels, seed=7)
    assert fit(emb, labels, seed=7) != fit(emb, labels, seed=8)


def test_roc_points_is_sklearns_roc_curve():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(3, 50))
        y = rng.random(n) < 0.4
        y[:2] = [True, False]
        scores = np.round(rng.random(n), 1)  # many ties and collinear points
        for mine, theirs in zip(roc_points(y, scores), roc_curve(y, scores)):
            np.testing.assert_array_equal(mine, theirs)


def test_pair_scores():
    emb = np.array([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    s, q = pair_scores(emb, [[0, 1], [1, 2], [0, 2]])
    np.testing.assert_allclose(s, [0.8, 0.0, -0.6], atol=1e-15)
    np.testing.assert_allclose(q, [2.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------ planted relationship


def planted(seed=0, n_gen=20_000, n_imp=200_000):
    """Every pair's cosine is shifted up by gamma * q (q = pair quality); gamma is a grid point."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(10.0, 40.0, size=n_gen + n_imp)
    omegas = np.linspace(-0.5 / q.max(), 0.5 / q.max(), 20)  # the grid the fit will use
    base = np.r_[rng.normal(0.25, 0.08, n_gen), rng.normal(0.0, 0.06, n_imp)]
    y = np.r_[np.ones(n_gen, bool), np.zeros(n_imp, bool)]
    return base - omegas[2] * q, q, y, omegas


def test_fit_recovers_a_planted_quality_shift():
    """Removing the shift (omega = -gamma) is the best fusion at every FMR (the base scores do not
    depend on q), so the fit must find omega = -gamma everywhere: alpha = gamma, beta = 0. At FMRs
    >= 1e-3 the 200k impostors make this exact."""
    s, q, y, omegas = planted()
    res = fit_scores(s, q, y, fmr_min=1e-3)
    np.testing.assert_allclose(res.omegas, omegas)
    assert (res.best_omega == omegas[2]).all()
    assert res.alpha == pytest.approx(-omegas[2], abs=1e-12)
    assert res.beta == pytest.approx(0.0, abs=1e-12)
    # the fused score beats the plain cosine at FMR 1e-3
    fpr, tpr, _ = roc_points(y, s)
    assert res.fnmr[2, 0] < 0.5 * (1 - tpr[fpr < 1e-3].max())


def test_fit_recovers_the_planted_shift_with_the_default_fmrs():
    """Down to FMR 1e-5 (2 impostors) sampling noise moves some picks to a neighbour of -gamma; the
    fitted line stays within one grid step of -gamma at every chosen operating point."""
    s, q, y, omegas = planted()
    res = fit_scores(s, q, y)
    assert np.mean(res.best_omega == omegas[2]) >= 0.8
    fitted = res.beta * res.best_threshold - res.alpha
    assert np.abs(fitted - omegas[2]).max() <= omegas[1] - omegas[0]


# ------------------------------------------------------------------------------------------ errors


def test_fit_errors():
    emb = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(ValueError, match="two identities"):
        fit(emb, np.zeros(6))
    with pytest.raises(ValueError, match="two or more images"):
        fit(emb, np.arange(6))
    with pytest.raises(ValueError, match="one entry per embedding"):
        fit(emb, np.zeros(5))
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        fit(emb, np.r_[0, 0, 0, 1, 1, 1], pairs=np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="one value per embedding"):
        fit(emb, np.r_[0, 0, 0, 1, 1, 1], np.ones(4))
    with pytest.raises(ValueError, match="genuine and impostor"):
        fit_scores([0.1, 0.2], [1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="max\\(q\\) > 0"):
        fit_scores([0.1, 0.2], [0.0, 0.0], [True, False])
    with pytest.raises(ValueError, match="one length"):
        fit_scores([0.1, 0.2], [1.0], [True, False])
    with pytest.raises(ValueError, match="fmr_min"):
        fit_scores([0.1, 0.2], [1.0, 1.0], [True, False], fmr_min=0.1, fmr_max=0.01)


def test_fit_error_when_no_genuine_pair_is_accepted():
    # one impostor above both genuine pairs at every omega: below FMR 1 only the (0, 0, inf) point is left
    with pytest.raises(ValueError, match="too few"):
        fit_scores([0.9, 0.1, 0.2], [1.0, 1.0, 1.0], [False, True, True])


def test_degenerate_line_follows_least_squares():
    # perfectly separated: every omega reaches FNMR 0, the first omega wins everywhere, so every FMR
    # picks the same threshold; sklearn's LinearRegression then gives slope 0, intercept mean(omega)
    s, q, y = [0.9, 0.8, 0.1, 0.0], [10.0, 20.0, 30.0, 40.0], [True, True, False, False]
    with pytest.warns(RuntimeWarning, match="same threshold"):
        res = fit_scores(s, q, y)
    line = LinearRegression().fit(res.best_threshold.reshape(-1, 1), res.best_omega)
    assert res.beta == pytest.approx(line.coef_[0], abs=1e-15) == 0.0
    assert res.alpha == pytest.approx(-line.intercept_) == pytest.approx(0.5 / 40)


@pytest.mark.parametrize("name", ["qmagface", "serfiq"])
def test_module_is_torch_free(name):
    """Load the module file alone (not through the package) in a fresh interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(qmagface.__file__).with_name(f"{name}.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(path)!r})\n"
        "sys.modules['m'] = module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
