"""SER-FIQ quality from stochastic embeddings (reference ``methods_crfiqa_serfiq_magface_qmagface.md`` §3).

Pure numpy (no torch): :func:`score` turns the T embeddings of one image, taken with dropout active,
into its quality; :func:`normalize` is the optional sigmoid rescale of the official code. The torch
side (running a backbone T times) is :mod:`fiqa.quality.serfiq_torch`.
"""

from __future__ import annotations

import numpy as np

DEFAULT_ALPHA = 130.0  # S:face_image_quality.py get_score, tuned to ArcFace-R100 raw values ~0.86-0.90
DEFAULT_R = 0.88


def score(embeddings) -> float:
    """SER-FIQ quality of one image from its T stochastic embeddings ``(T, D)``, T >= 2.

    Rows are L2-normalised (a zero row stays zero), ``d_ij = ||x_i - x_j||`` for ``i < j`` (the
    strict upper triangle, T(T-1)/2 distances) and ``q = 2 * sigmoid(-mean d) = 2 / (1 + exp(mean d))``,
    in (0, 1]; higher = more robust = better.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"SER-FIQ score needs embeddings of shape (T, D) with T >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("SER-FIQ score: embeddings contain NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1.0, norms)
    i, j = np.triu_indices(x.shape[0], k=1)
    mean = np.linalg.norm(x[i] - x[j], axis=1).mean()
    return float(2.0 / (1.0 + np.exp(mean)))


def normalize(q, alpha: float = DEFAULT_ALPHA, r: float = DEFAULT_R):
    """The official rescale ``1 / (1 + exp(-alpha * (q - r)))`` of raw scores (element-wise).

    The defaults suit ArcFace-R100; the rescale is model-specific and monotone, so it never changes
    a ranking (use raw scores for ERC). Returns a float for a scalar input, else an array.
    """
    z = -float(alpha) * (np.asarray(q, dtype=np.float64) - float(r))
    with np.errstate(over="ignore"):  # exp overflow -> inf -> 0, the correct limit
        out = 1.0 / (1.0 + np.exp(z))
    return float(out) if out.ndim == 0 else out
