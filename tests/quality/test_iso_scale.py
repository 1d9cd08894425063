"""ISO/IEC 29794-5 scale (OFIQ's sigmoid mapping): hand-worked values, C-style rounding, clamping,
the "cannot be assessed" -1, the inverse variant, OFIQ's own expected results, and the quantile fit."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from fiqa.quality.iso_scale import OFIQ_UNIFIED, IsoScale, c_round, fit_sigmoid, sigmoid_map

# ------------------------------------------------------------------------------------------ mapping


def test_ofiq_unified_constants():
    assert OFIQ_UNIFIED == {"x0": 23.0, "w": 2.6, "h": 100.0, "a": 0.0, "s": 1.0}


def test_unified_by_hand():
    # 100 / (1 + exp(-(24.329985 - 23) / 2.6)) = 100 / (1 + exp(-0.511533)) = 100 / 1.599576 = 62.5166 -> 63
    assert 100 / (1 + math.exp(-(24.329985 - 23) / 2.6)) == pytest.approx(62.5166, abs=1e-3)
    assert sigmoid_map(24.329985, **OFIQ_UNIFIED) == 63
    # 100 / (1 + exp(-(24.70 - 23) / 2.6)) = 100 / (1 + exp(-0.653846)) = 100 / 1.520042 = 65.7877 -> 66
    assert 100 / (1 + math.exp(-(24.70 - 23) / 2.6)) == pytest.approx(65.7877, abs=1e-3)
    assert sigmoid_map(24.70, **OFIQ_UNIFIED) == 66
    # x = x0 -> exactly 50; unrounded values pass through
    assert sigmoid_map(23.0, **OFIQ_UNIFIED) == 50
    assert sigmoid_map(24.70, **OFIQ_UNIFIED, round=False) == pytest.approx(65.78766605, abs=1e-8)


def test_returns_float64_array_of_input_shape():
    out = sigmoid_map(np.array([[20.0, 23.0], [26.0, 30.0]], dtype=np.float32), **OFIQ_UNIFIED)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (2, 2)
    assert np.array_equal(out, np.round(out))
    assert sigmoid_map([1.0, 2.0], 0.0, 1.0).shape == (2,)
    assert sigmoid_map(1.0, 0.0, 1.0).shape == ()


def test_halves_round_away_from_zero():
    # a = 0.005, s = 0, h = 100: Q = 0.5 exactly -> 1 (numpy / Python round would give 0)
    assert 100 * 0.005 == 0.5
    assert sigmoid_map(7.0, x0=0.0, w=1.0, h=100.0, a=0.005, s=0.0) == 1
    assert np.round(0.5) == 0 and round(0.5) == 0
    # x = x0 -> sigmoid = 1/2 exactly; h = 101: Q = 50.5 -> 51; h = 105: 52.5 -> 53 (banker's: 50 and 52)
    assert sigmoid_map(3.0, x0=3.0, w=0.7, h=101.0) == 51
    assert sigmoid_map(3.0, x0=3.0, w=0.7, h=105.0) == 53
    # just below a half stays down (floor(q + 0.5) would wrongly give 1 for the largest double below 0.5)
    assert c_round(0.49999999999999994) == 0
    assert sigmoid_map(0.0, x0=0.0, w=1.0, h=0.49999999999999994, a=1.0, s=0.0) == 0


def test_negative_halves_round_away_from_zero_before_clamp():
    # std::round(-2.5) = -3, std::round(-0.5) = -1 (numpy: -2, -0)
    assert np.array_equal(c_round([-2.5, -0.5, -1.5, -0.4, 2.5, 1.5]), [-3.0, -1.0, -2.0, -0.0, 3.0, 2.0])
    # Q = 100 * (-0.005) = -0.5 -> round -> -1 -> clamp -> 0 (no -0.0 left over either)
    out = sigmoid_map(0.0, x0=0.0, w=1.0, h=100.0, a=-0.005, s=0.0)
    assert out == 0 and not np.signbit(out)
    assert not np.signbit(sigmoid_map(0.0, x0=0.0, w=1.0, h=100.0, a=-0.004, s=0.0))
    # unrounded: the clamp still applies
    assert sigmoid_map(0.0, x0=0.0, w=1.0, h=100.0, a=-0.005, s=0.0, round=False) == 0


def test_clamping():
    # h = 120 (OFIQ's UnderExposurePrevention): a large x gives 120 before the clamp
    assert sigmoid_map(1e6, x0=0.0, w=1.0, h=120.0) == 100
    assert sigmoid_map(1e6, x0=0.0, w=1.0, h=120.0, round=False) == 100
    # Sharpness-like a = -14: small x gives -14 before the clamp
    assert sigmoid_map(-1e6, x0=-20.0, w=15.0, h=1.0, a=-14.0, s=115.0) == 0
    # extreme x overflow exp without warnings and still map to the limits
    with np.errstate(all="raise"):
        assert np.array_equal(sigmoid_map([-1e308, 1e308], **OFIQ_UNIFIED), [0.0, 100.0])


def test_non_finite_cannot_be_assessed():
    out = sigmoid_map([np.nan, np.inf, -np.inf, 24.329985], **OFIQ_UNIFIED)
    assert np.array_equal(out, [-1.0, -1.0, -1.0, 63.0])
    assert sigmoid_map(np.nan, **OFIQ_UNIFIED, round=False) == -1


def test_inverse_variant():
    # a = 1, s = -1: Q = h * (1 - sigmoid): smaller is better
    # MouthClosed (x0 0.2, w 0.06): x = 0.002466 -> 100 * (1 - 1/(1 + exp(0.197534/0.06))) = 96.42 -> 96 (b-01)
    assert sigmoid_map(0.002466, x0=0.2, w=0.06, h=100.0, a=1.0, s=-1.0) == 96
    x = np.linspace(-5, 5, 11)
    direct = sigmoid_map(x, x0=0.0, w=2.0, round=False)
    inverse = sigmoid_map(x, x0=0.0, w=2.0, a=1.0, s=-1.0, round=False)
    assert np.allclose(direct + inverse, 100.0, atol=1e-12)
    assert np.all(np.diff(inverse) < 0)
    # HeadSize: h = 200, a = 1, s = -1, x0 = 0, w = 0.05 on |0.224851 - 0.45| -> 2 (b-01)
    assert sigmoid_map(abs(0.224851 - 0.45), x0=0.0, w=0.05, h=200.0, a=1.0, s=-1.0) == 2


def test_bad_parameters():
    with pytest.raises(ValueError, match="'w'.*non-zero"):
        sigmoid_map(1.0, x0=0.0, w=0.0)
    with pytest.raises(ValueError, match="'x0'.*finite"):
        sigmoid_map(1.0, x0=np.nan, w=1.0)
    with pytest.raises(TypeError, match="'h'"):
        sigmoid_map(1.0, x0=0.0, w=1.0, h="100")


# OFIQ's own conformance numbers: every UnifiedQualityScore (raw, scalar) pair of the 28 conformance images in
# BSI-OFIQ/OFIQ-Project data/tests/expected_results/expected_results.csv at commit a16a990e (OFIQ 1.0.3).
OFIQ_UQS_EXPECTED = [
    ("b-01", 24.329985, 63),
    ("b-02", 24.698753, 66),
    ("b-03", 16.142765, 7),
    ("b-04", 18.811047, 17),
    ("b-05", 17.191828, 10),
    ("b-06", 14.262262, 3),
    ("b-07", 21.134285, 33),
    ("b-08", 18.325424, 14),
    ("b-09", 24.752863, 66),
    ("c-01", 26.449306, 79),
    ("c-02", 14.149646, 3),
    ("c-03", 13.334490, 2),
    ("c-04", 17.668522, 11),
    ("c-05", 17.155811, 10),
    ("c-06", 23.296429, 53),
    ("c-07", 26.875198, 82),
    ("c-08", 22.899508, 49),
    ("c-09", 18.188141, 14),
    ("c-10", 27.733389, 86),
    ("r-01", 26.390884, 79),
    ("r-02", 25.763580, 74),
    ("r-03", 26.416000, 79),
    ("r-04", 20.354622, 27),
    ("r-05", 18.509974, 15),
    ("r-06", 25.199898, 70),
    ("r-07", 23.497959, 55),
    ("r-08", 16.549667, 8),
    ("r-09", 27.223253, 84),
]


def test_reproduces_ofiq_expected_results_exactly():
    assert len(OFIQ_UQS_EXPECTED) == 28
    raw = np.array([r for _, r, _ in OFIQ_UQS_EXPECTED])
    expected = np.array([q for _, _, q in OFIQ_UQS_EXPECTED], dtype=np.float64)
    got = sigmoid_map(raw, **OFIQ_UNIFIED)
    bad = [(n, r, q, g) for (n, r, q), g in zip(OFIQ_UQS_EXPECTED, got) if g != q]
    assert not bad, f"(image, raw, expected, got): {bad}"
    assert np.array_equal(got, expected)
    assert np.array_equal(IsoScale.from_dict(OFIQ_UNIFIED).map(raw), expected)


def test_other_ofiq_sigmoid_measures_of_b01():
    # b-01-smile.png in the same CSV: configurable-sigmoid measures with their OFIQ parameters
    cases = [
        (0.070220, dict(x0=0.02, w=0.01), 99),  # EyesOpen
        (493.556527, dict(x0=70.0, w=20.0), 100),  # InterEyeDistance
        (2.022937, dict(x0=1.8, w=0.1), 90),  # MarginBelowOfTheFaceImage
        (0.049163, dict(x0=0.92, w=0.05, h=120.0, a=0.832, s=-1.0), 100),  # UnderExposurePrevention
        (44.0, dict(x0=-20.0, w=15.0, h=1.0, a=-14.0, s=115.0), 99),  # Sharpness
        (-10990.883789, dict(x0=-5000.0, w=5000.0), 23),  # ExpressionNeutrality
    ]
    for x, p, q in cases:
        assert sigmoid_map(x, **p) == q, (x, p, q)


# ------------------------------------------------------------------------------------------ fit


def test_fit_sigmoid_recovers_targets_on_linspace():
    q = np.linspace(3.0, 41.0, 1001)
    fit = fit_sigmoid(q)
    assert set(fit) == {"x0", "w", "h", "a", "s", "rule", "n", "reference"}
    assert fit["h"] == 100.0 and fit["a"] == 0.0 and fit["s"] == 1.0
    assert fit["rule"] == "quantiles 0.1/0.9 -> 10/90" and fit["n"] == 1001 and fit["reference"] is None
    # symmetric pair: w = (q90 - q10) / (2 ln 9), x0 = median
    q10, q50, q90 = np.quantile(q, [0.1, 0.5, 0.9])
    assert fit["w"] == pytest.approx((q90 - q10) / (2 * math.log(9)), rel=1e-12)
    assert fit["x0"] == pytest.approx(q50, abs=1e-9)
    p = {k: fit[k] for k in ("x0", "w", "h", "a", "s")}
    got = sigmoid_map([q10, q50, q90], **p, round=False)
    assert np.allclose(got, [10.0, 50.0, 90.0], atol=1e-9, rtol=0)


def test_fit_sigmoid_general_quantiles_and_non_finite():
    rng = np.random.default_rng(0)
    q = rng.gamma(2.0, 3.0, 5000)  # skewed: the two quantiles map exactly, the median only near 50
    q_with_bad = np.concatenate([q, [np.nan, np.inf, -np.inf]])
    fit = fit_sigmoid(q_with_bad, low=0.05, high=0.75)
    assert fit["n"] == 5000 and fit["rule"] == "quantiles 0.05/0.75 -> 5/75"
    lo, hi = np.quantile(q, [0.05, 0.75])
    got = sigmoid_map([lo, hi], fit["x0"], fit["w"], round=False)
    assert np.allclose(got, [5.0, 75.0], atol=1e-9, rtol=0)
    assert 30 < sigmoid_map(np.median(q), fit["x0"], fit["w"], round=False) < 70


def test_fit_sigmoid_errors():
    with pytest.raises(ValueError, match="constant"):
        fit_sigmoid(np.full(100, 7.0))
    with pytest.raises(ValueError, match="at least 10 finite.*got 9"):
        fit_sigmoid(np.r_[np.arange(9.0), np.nan, np.nan])
    with pytest.raises(ValueError, match="0 < low < high < 1"):
        fit_sigmoid(np.arange(100.0), low=0.9, high=0.1)


# ------------------------------------------------------------------------------------------ IsoScale


def test_iso_scale_roundtrip_and_map():
    sc = IsoScale(x0=23, w=2.6, source="OFIQ 1.0.3 UnifiedQualityScore")
    assert isinstance(sc.x0, float)
    d = sc.to_dict()
    assert d == {"x0": 23.0, "w": 2.6, "h": 100.0, "a": 0.0, "s": 1.0, "source": "OFIQ 1.0.3 UnifiedQualityScore"}
    assert IsoScale.from_dict(d) == sc
    assert sc.map(24.329985) == 63
    assert sc.map(24.70, round=False) == pytest.approx(65.78766605, abs=1e-8)
    fitted = IsoScale.from_dict(fit_sigmoid(np.linspace(0, 1, 50)))
    assert fitted.source.startswith("fit_sigmoid (quantiles 0.1/0.9 -> 10/90, n=50")


def test_iso_scale_from_dict_errors_name_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['x_0'\].*expected keys.*'x0'.*'source'"):
        IsoScale.from_dict({"x_0": 1.0, "w": 2.0})
    with pytest.raises(ValueError, match=r"missing key\(s\) \['w'\].*expected keys"):
        IsoScale.from_dict({"x0": 1.0})
    with pytest.raises(ValueError, match="'w'.*non-zero"):
        IsoScale.from_dict({"x0": 1.0, "w": 0})
    with pytest.raises(TypeError, match="needs a dict"):
        IsoScale.from_dict([1.0, 2.0])


def test_no_torch_import():
    code = "import sys, fiqa.quality.iso_scale; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
