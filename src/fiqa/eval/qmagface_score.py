"""QMagFace's quality-aware comparison score and its published constants (reference
``methods_crfiqa_serfiq_magface_qmagface.md`` §5.1); the fit of ``alpha, beta`` is :func:`fiqa.quality.qmagface.fit`.
Pure numpy. Score, for a pair with cosine ``s`` and magnitudes ``q1, q2``:
``min(0, beta * s - alpha) * min(q1, q2) + s``."""

from __future__ import annotations

import numpy as np

__all__ = ["PRESETS", "get_preset", "score"]

# (alpha, beta) of the paper, Q:experiments/robustness_analysis.py (and Q:README.md for MagFace-100).
PRESETS: dict[str, tuple[float, float]] = {
    "magface18": (0.092861, 0.135311),
    "magface50": (0.065984, 0.103799),
    "magface100": (0.077428, 0.125926),
}


def get_preset(name: str) -> tuple[float, float]:
    """``(alpha, beta)`` published for a MagFace model; ``"MagFace-100"``, ``"magface_100"`` work too."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in PRESETS:
        raise ValueError(f"unknown QMagFace preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]


def score(s, q1, q2, alpha: float | None = None, beta: float | None = None, *, preset: str | None = None):
    """QMagFace comparison score ``min(0, beta*s - alpha) * min(q1, q2) + s`` (element-wise, broadcast).

    ``s``: cosine similarity of the pair; ``q1, q2``: the raw embedding magnitudes ``||f||``. Give
    ``alpha`` and ``beta``, or ``preset`` (a key of :data:`PRESETS`). Returns a float for scalar
    inputs, else an array.
    """
    if preset is not None:
        if alpha is not None or beta is not None:
            raise ValueError("give either preset or alpha and beta, not both")
        alpha, beta = get_preset(preset)
    elif alpha is None or beta is None:
        raise ValueError(f"give alpha and beta, or preset= one of {sorted(PRESETS)}")
    s = np.asarray(s, dtype=np.float64)
    q = np.minimum(np.asarray(q1, dtype=np.float64), np.asarray(q2, dtype=np.float64))
    omega = np.minimum(0.0, beta * s - alpha)
    out = omega * q + s
    return float(out) if out.ndim == 0 else out
