"""The ISO/IEC 29794-5 quality scale: OFIQ's sigmoid mapping of a native score to an integer in [0, 100].

Pure numpy (no torch). OFIQ (the reference implementation, ``BSI-OFIQ/OFIQ-Project`` 1.0.3,
``OFIQlib/modules/measures/Measure.h``) maps every configurable measure's native value ``x`` with::

    sigmoid(x, x0, w) = 1 / (1 + exp((x0 - x) / w))
    Q = h * (a + s * sigmoid(x, x0, w))
    Q = round(Q)                      # only when ``round``; C's std::round: halves away from zero
    Q = clamp(Q, 0, 100)              # rounding comes first, then the clamp

A value that cannot be assessed gets ``-1`` (OFIQ's ``FailureToAssess``); here that is any non-finite ``x``.
The "inverse" (smaller is better) variant is only a parameter choice: ``a = 1, s = -1``.

:data:`OFIQ_UNIFIED` holds OFIQ's UnifiedQualityScore mapping of the MagFace iResNet-50 feature norm.
For a method without a published mapping, :func:`fit_sigmoid` fits ``x0, w`` on a reference set, and an
:class:`IsoScale` (a plain dict in a checkpoint: :meth:`IsoScale.to_dict` / :meth:`IsoScale.from_dict`)
carries the result with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["OFIQ_UNIFIED", "IsoScale", "c_round", "fit_sigmoid", "sigmoid_map"]

# OFIQ data/ofiq_config.jaxn (UnifiedQualityScore.Sigmoid) and the UnifiedQualityScore constructor defaults.
OFIQ_UNIFIED: dict[str, float] = {"x0": 23.0, "w": 2.6, "h": 100.0, "a": 0.0, "s": 1.0}

_PARAM_KEYS = ("x0", "w", "h", "a", "s")


def c_round(q) -> np.ndarray:
    """Round like C's ``std::round``: to the nearest integer, halves away from zero (``0.5 -> 1``,
    ``-2.5 -> -3``), unlike ``numpy.round`` / Python's ``round`` (halves to even).

    Exact for every double: ``q - trunc(q)`` has no rounding error, so ``0.49999999999999994`` stays 0
    (``floor(q + 0.5)`` would give 1)."""
    q = np.asarray(q, dtype=np.float64)
    whole = np.trunc(q)
    frac = q - whole
    return whole + np.where(np.abs(frac) >= 0.5, np.sign(q), 0.0)


def _check_params(x0, w, h, a, s) -> None:
    for name, v in zip(_PARAM_KEYS, (x0, w, h, a, s)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"sigmoid parameter {name!r} must be a real number, got {type(v).__name__} {v!r}")
        if not math.isfinite(float(v)):
            raise ValueError(f"sigmoid parameter {name!r} must be finite, got {v!r}")
    if float(w) == 0.0:
        raise ValueError("sigmoid parameter 'w' (the width) must be non-zero, got 0; OFIQ divides (x0 - x) by w")


def sigmoid_map(x, x0: float, w: float, h: float = 100.0, a: float = 0.0, s: float = 1.0, round: bool = True):
    """OFIQ's quality mapping ``Q = h * (a + s / (1 + exp((x0 - x) / w)))``, rounded half away from zero
    (when ``round``), then clamped to ``[0, 100]``; a non-finite ``x`` gives ``-1`` (cannot be assessed).

    ``x`` is a scalar or an array; the result is a float64 array of the same shape (integral values when
    ``round``)."""
    _check_params(x0, w, h, a, s)
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    xs = np.where(finite, x, 0.0)
    with np.errstate(over="ignore", under="ignore"):  # exp -> inf / 0 gives sigmoid 0 / 1: the right limits
        sig = 1.0 / (1.0 + np.exp((float(x0) - xs) / float(w)))
    q = float(h) * (float(a) + float(s) * sig)
    if round:
        q = c_round(q)
    q = np.clip(q, 0.0, 100.0) + 0.0  # + 0.0 turns a -0.0 (from rounding -0.4) into 0.0
    return np.where(finite, q, -1.0)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def fit_sigmoid(qualities, low: float = 0.10, high: float = 0.90) -> dict:
    """Fit ``x0, w`` (``h = 100, a = 0, s = 1``) for a method without a published mapping.

    Rule (two-quantile solve): on a reference set, the ``low`` and ``high`` quantiles of the native
    scores (``numpy.quantile``, linear interpolation) map exactly to ``100*low`` and ``100*high``::

        w  = (q_high - q_low) / (logit(high) - logit(low))
        x0 = q_high - w * logit(high)

    For the default symmetric pair (``low = 1 - high``) this is ``w = (q_high - q_low) / (2 ln(high/(1-high)))``
    and ``x0 = (q_low + q_high) / 2``: the quantiles' midpoint maps to 50, which is the median for a
    distribution symmetric between the quantiles (in general the median lands near, not exactly on, 50).
    Non-finite values are ignored; at least 10 finite values are needed. ``w > 0``: higher native score,
    higher quality (for a smaller-is-better score use ``-x``, or ``a = 1, s = -1`` on the fitted curve).

    Returns ``{"x0", "w", "h": 100.0, "a": 0.0, "s": 1.0, "rule", "n", "reference": None}`` (``n``: the
    finite values used; ``reference``: a free slot for the caller to name the reference set)."""
    if not (0.0 < float(low) < float(high) < 1.0):
        raise ValueError(f"fit_sigmoid needs 0 < low < high < 1, got low={low!r}, high={high!r}")
    q = np.asarray(qualities, dtype=np.float64).ravel()
    q = q[np.isfinite(q)]
    if q.size < 10:
        raise ValueError(f"fit_sigmoid needs at least 10 finite quality values, got {q.size}")
    q_low, q_high = (float(v) for v in np.quantile(q, [low, high]))
    if not q_high > q_low:
        raise ValueError(
            f"fit_sigmoid: the {low:g} and {high:g} quantiles coincide ({q_low!r}): the quality is constant "
            f"over (at least) the middle {100 * (high - low):g}% of the {q.size} reference values, so no width "
            f"can be fitted"
        )
    w = (q_high - q_low) / (_logit(high) - _logit(low))
    x0 = q_high - w * _logit(high)
    return {
        "x0": float(x0),
        "w": float(w),
        "h": 100.0,
        "a": 0.0,
        "s": 1.0,
        "rule": f"quantiles {low:g}/{high:g} -> {100 * low:g}/{100 * high:g}",
        "n": int(q.size),
        "reference": None,
    }


@dataclass(frozen=True)
class IsoScale:
    """A sigmoid mapping to the ISO/IEC 29794-5 [0, 100] scale, the object that travels with a model
    (stored in a checkpoint as the plain dict :meth:`to_dict`). ``source`` says where the numbers come
    from (``"OFIQ 1.0.3 UnifiedQualityScore"``, ``"fit_sigmoid on <set>"`` ...)."""

    x0: float
    w: float
    h: float = 100.0
    a: float = 0.0
    s: float = 1.0
    source: str = ""

    def __post_init__(self):
        _check_params(self.x0, self.w, self.h, self.a, self.s)
        if not isinstance(self.source, str):
            raise TypeError(f"IsoScale 'source' must be a string, got {type(self.source).__name__} {self.source!r}")
        for k in _PARAM_KEYS:
            object.__setattr__(self, k, float(getattr(self, k)))

    def map(self, x, round: bool = True) -> np.ndarray:
        """:func:`sigmoid_map` with these parameters."""
        return sigmoid_map(x, self.x0, self.w, self.h, self.a, self.s, round=round)

    def to_dict(self) -> dict:
        return {"x0": self.x0, "w": self.w, "h": self.h, "a": self.a, "s": self.s, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> IsoScale:
        """Inverse of :meth:`to_dict`; ``x0`` and ``w`` are required, ``h, a, s, source`` optional. A
        :func:`fit_sigmoid` result works too (its ``rule``, ``n``, ``reference`` become the ``source``)."""
        if not isinstance(d, dict):
            raise TypeError(f"IsoScale.from_dict needs a dict, got {type(d).__name__}")
        expected = (*_PARAM_KEYS, "source")
        fit_keys = ("rule", "n", "reference")
        unknown = sorted(set(d) - set(expected) - set(fit_keys))
        if unknown:
            raise ValueError(f"IsoScale.from_dict: unknown key(s) {unknown}; expected keys: {list(expected)}")
        missing = [k for k in ("x0", "w") if k not in d]
        if missing:
            raise ValueError(f"IsoScale.from_dict: missing key(s) {missing}; expected keys: {list(expected)}")
        kw = {k: d[k] for k in expected if k in d}
        if "source" not in kw and "rule" in d:
            ref = d.get("reference")
            kw["source"] = f"fit_sigmoid ({d['rule']}, n={d.get('n')}" + (f", reference={ref})" if ref else ")")
        return cls(**kw)
