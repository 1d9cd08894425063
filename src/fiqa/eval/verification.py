"""InsightFace's 10-fold pair-verification protocol (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

Pure numpy. No torch, no files, no globals. The behaviour follows
``arcface_torch/eval/verification.py``:

- flip fusion: ``emb = l2_normalize(e + e_flip)``, the sum of the *raw* embeddings;
- pair ``p`` is rows ``2p`` and ``2p+1``. The distance is the squared L2 distance of the unit
  embeddings, in [0, 4];
- a pair is predicted "same" iff ``dist < threshold``;
- ``KFold(nfolds, shuffle=False)``: contiguous folds, so for LFW (6000 pairs) fold 0 is pairs
  0..599, the official split;
- accuracy: per fold, the threshold is the *first* argmax of the train-fold accuracy over
  ``np.arange(0, 4, 0.01)``. The fold's accuracy is the test-fold accuracy at that threshold;
- VAL@FAR over ``np.arange(0, 4, 0.001)``. The original's ``interp1d(kind='slinear')`` crashes on
  repeated FAR values on modern SciPy; it is replaced by a documented deterministic rule that
  equals it wherever it works (see ``calculate_val``).

The loops over thresholds are vectorised (sorted distances + ``searchsorted``). The counts are
the same integers as the original's and go through the same float division, so accuracies and
argmax picks match the loop bit for bit.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COSINE_ROC_THRESHOLDS",
    "COSINE_VAL_THRESHOLDS",
    "DISTANCES",
    "ROC_THRESHOLDS",
    "VAL_THRESHOLDS",
    "calculate_roc",
    "calculate_val",
    "evaluate",
    "evaluate_similarity",
    "roc_from_distances",
    "val_from_distances",
    "far_key",
    "fuse_flip",
    "kfold_splits",
    "l2_normalize",
    "pair_distances",
    "sci_key",
]

#: Thresholds on the squared L2 distance used for accuracy (400 values), as in insightface.
ROC_THRESHOLDS = np.arange(0, 4, 0.01)
#: Thresholds on the squared L2 distance used for VAL@FAR (4000 values), as in insightface.
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
ROC_THRESHOLDS.flags.writeable = False
VAL_THRESHOLDS.flags.writeable = False
#: The official XQLFW protocol: cosine distance 1 - cos in [0, 2], thresholds ``np.arange(0, 2, 0.001)``.
COSINE_ROC_THRESHOLDS = np.arange(0, 2, 0.001)
#: VAL@FAR on the cosine distance: insightface's VAL grid halved, so it takes the same decisions.
COSINE_VAL_THRESHOLDS = VAL_THRESHOLDS / 2
COSINE_ROC_THRESHOLDS.flags.writeable = False
COSINE_VAL_THRESHOLDS.flags.writeable = False
DISTANCES = ("sqeuclidean", "cosine")


def sci_key(x: float) -> str:
    """Compact scientific notation for metric names: 1e-3 -> "1e-3", 0.01 -> "1e-2",
    2.5e-4 -> "2.5e-4"."""
    mantissa, exponent = f"{float(x):e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def far_key(far: float) -> str:
    """The metric-name part of a FAR: ``far_key(1e-3) == "far1e-3"``."""
    return "far" + sci_key(far)


def l2_normalize(x: np.ndarray, axis: int = 1, eps: float = 1e-12) -> np.ndarray:
    """``x / max(||x||_2, eps)`` along ``axis`` (a zero vector stays zero)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def fuse_flip(emb: np.ndarray, emb_flip: np.ndarray) -> np.ndarray:
    """InsightFace's flip fusion: ``l2_normalize(emb + emb_flip)`` on the RAW embeddings.

    The raw sum (not the sum of unit vectors) is what arcface_torch does; the image with the
    larger embedding norm weighs more.
    """
    emb = np.asarray(emb)
    emb_flip = np.asarray(emb_flip)
    if emb.shape != emb_flip.shape:
        raise ValueError(f"fuse_flip: shapes differ, {emb.shape} vs {emb_flip.shape}")
    return l2_normalize(emb + emb_flip, axis=1)


def pair_distances(emb1: np.ndarray, emb2: np.ndarray, distance: str = "sqeuclidean") -> np.ndarray:
    """Distance per row of two arrays of unit embeddings.

    - ``sqeuclidean`` (insightface): ``sum((e1-e2)**2, axis=1)``, in [0, 4];
    - ``cosine`` (the XQLFW protocol, ``sklearn paired_distances(.., 'cosine')``): ``1 - cos``, in [0, 2].
      For unit vectors this is half the squared distance, which is how scikit-learn computes it.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {list(DISTANCES)}, got {distance!r}")
    d = np.sum(np.square(np.subtract(emb1, emb2)), axis=1)
    return 0.5 * d if distance == "cosine" else d


def kfold_splits(n: int, nfolds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) index arrays of the protocol: ``KFold(nfolds, shuffle=False)``.

    The folds are contiguous blocks. The first ``n % nfolds`` folds have one extra pair. With
    ``nfolds == 1``, train = test = all pairs, as insightface's ``LFold`` does.
    """
    if nfolds < 1:
        raise ValueError(f"nfolds must be >= 1, got {nfolds}")
    if n < nfolds:
        raise ValueError(f"{n} pairs cannot be split into {nfolds} folds (need at least {nfolds} pairs)")
    indices = np.arange(n)
    if nfolds == 1:
        return [(indices, indices)]
    # Imported here: sklearn.model_selection takes about a second to import, and importing
    # fiqa.eval should stay light.
    from sklearn.model_selection import KFold

    return list(KFold(n_splits=nfolds, shuffle=False).split(indices))


def _check_pairs(emb1, emb2, issame, nfolds: int):
    emb1 = np.asarray(emb1)
    emb2 = np.asarray(emb2)
    issame = np.asarray(issame)
    if emb1.ndim != 2 or emb1.shape != emb2.shape:
        raise ValueError(f"emb1 and emb2 must be 2-D arrays of the same shape, got {emb1.shape} and {emb2.shape}")
    if issame.ndim != 1 or issame.shape[0] != emb1.shape[0]:
        raise ValueError(f"issame must have one entry per pair: {emb1.shape[0]} pairs, issame has shape {issame.shape}")
    if not (np.all(np.isfinite(emb1)) and np.all(np.isfinite(emb2))):
        raise ValueError("embeddings contain NaN or inf")
    if emb1.shape[0] < nfolds:
        raise ValueError(f"{emb1.shape[0]} pairs cannot be split into {nfolds} folds (need at least {nfolds} pairs)")
    return emb1, emb2, issame.astype(bool)


def _count_below(dist: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For every threshold t, the number of distances with ``dist < t`` (integer counts)."""
    return np.searchsorted(np.sort(dist), thresholds, side="left")


def _rates(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray):
    """tp, fp, n_same, n_diff per threshold, for ``predict same iff dist < t``."""
    pos = dist[issame]
    neg = dist[~issame]
    return _count_below(pos, thresholds), _count_below(neg, thresholds), pos.size, neg.size


def calculate_roc(thresholds, emb1, emb2, issame, nfolds: int = 10, distance: str = "sqeuclidean"):
    """The k-fold accuracy of insightface's ``calculate_roc``.

    Returns ``(tpr[T], fpr[T], accuracy[nfolds], best_thresholds[nfolds])``:

    - ``dist = sum((emb1 - emb2)**2, axis=1)`` (or half of it, ``distance="cosine"``); a pair is
      predicted "same" iff ``dist < t``;
    - per fold (``KFold(nfolds, shuffle=False)``):
      - ``best`` is the first argmax over ``thresholds`` of the train-fold accuracy
        ``(tp + tn) / n``;
      - ``accuracy[fold]`` is the test-fold accuracy at ``thresholds[best]``, and
        ``best_thresholds[fold] = thresholds[best]``;
    - ``tpr``/``fpr`` are the test-fold rates at every threshold, averaged over folds. A rate
      whose denominator is zero (no positives, or no negatives, in a test fold) counts as 0, as in
      insightface.
    """
    emb1, emb2, issame = _check_pairs(emb1, emb2, issame, nfolds)
    return roc_from_distances(thresholds, pair_distances(emb1, emb2, distance), issame, nfolds)


def roc_from_distances(thresholds, dist, issame, nfolds: int = 10):
    """:func:`calculate_roc` on precomputed per-pair distances (``same iff dist < t``)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    dist, issame = np.asarray(dist, dtype=np.float64), np.asarray(issame, dtype=bool)
    n_thr = thresholds.size
    tprs = np.zeros((nfolds, n_thr))
    fprs = np.zeros((nfolds, n_thr))
    accuracy = np.zeros(nfolds)
    best_thresholds = np.zeros(nfolds)
    for fold, (train, test) in enumerate(kfold_splits(dist.size, nfolds)):
        tp, fp, n_same, n_diff = _rates(dist[train], issame[train], thresholds)
        tn = n_diff - fp
        acc_train = (tp + tn) / train.size
        best = int(np.argmax(acc_train))  # the first maximum, as np.argmax in the original
        best_thresholds[fold] = thresholds[best]

        tp, fp, n_same, n_diff = _rates(dist[test], issame[test], thresholds)
        tprs[fold] = tp / n_same if n_same else 0.0
        fprs[fold] = fp / n_diff if n_diff else 0.0
        accuracy[fold] = (tp[best] + (n_diff - fp[best])) / test.size
    return tprs.mean(axis=0), fprs.mean(axis=0), accuracy, best_thresholds


def _threshold_at_far(far_train: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """The distance threshold for ``far_target`` from a train-fold FAR curve.

    ``far_train[i]`` is the train FAR at ``thresholds[i]`` (increasing), so it is non-decreasing,
    a step function with flat runs. The rule:

    - ``max(far_train) < far_target``: 0, as in the original;
    - ``far_target`` attained exactly: the LARGEST threshold whose train FAR equals it;
    - otherwise, let ``i`` be the last index with ``far_train[i] < far_target`` (the largest
      threshold of the run below the target); ``i + 1`` is then the smallest threshold of the run
      above it. Interpolate linearly between ``(far_train[i], thresholds[i])`` and
      ``(far_train[i+1], thresholds[i+1])``.

    On a strictly increasing FAR curve this is exactly ``interp1d(kind='slinear')``.
    """
    # Why this rule: interp1d(far_train, thresholds, kind='slinear') builds a degree-1 B-spline
    # with a knot at every (FAR, threshold) sample. SciPy versions before the duplicate check
    # evaluated it on the stably sorted curve, which gives exactly the rule above. Modern SciPy
    # raises "Expect x to not have duplicates" instead, and the FAR curve nearly always repeats.
    # The result lies within the grid step where the train FAR crosses the target, not across a
    # whole flat run. On an exact hit, all thresholds of the flat run give the same train FAR,
    # and the largest one accepts the most genuine pairs.
    if far_train.max() < far_target:
        return 0.0
    hit = np.flatnonzero(far_train == far_target)
    if hit.size:
        return float(thresholds[hit[-1]])
    i = int(np.searchsorted(far_train, far_target, side="left")) - 1
    if i < 0:
        raise ValueError(
            f"far_target={far_target:g} is below the train FAR at the first threshold "
            f"({far_train[0]:g}); start the thresholds lower (insightface starts at 0)"
        )
    f0, f1 = far_train[i], far_train[i + 1]
    t0, t1 = thresholds[i], thresholds[i + 1]
    # Written as the degree-1 B-spline's convex combination of the two thresholds.
    return float((t0 * (f1 - far_target) + t1 * (far_target - f0)) / (f1 - f0))


def calculate_val(
    thresholds, emb1, emb2, issame, far_target: float = 1e-3, nfolds: int = 10, distance: str = "sqeuclidean"
):
    """VAL@FAR of insightface's ``calculate_val``, with a deterministic threshold rule.

    Returns ``(val_mean, val_std, far_mean)`` over the folds, with ``np.std`` (ddof=0).

    Per fold (``KFold(nfolds, shuffle=False)``):

    1. ``far_train[t]`` = the fraction of train-fold impostor pairs with ``dist < t``, for every
       ``t`` in ``thresholds``. It is 0 when the train fold has no impostor.
    2. The threshold. The original's ``interp1d(far_train, thresholds, kind='slinear')(far_target)``
       crashes on modern SciPy whenever ``far_train`` repeats a value. It is replaced by this
       deterministic rule, identical to it wherever ``far_train`` is strictly increasing:
       - if ``max(far_train) < far_target``: 0, as in the original;
       - if some thresholds give exactly ``far_train == far_target``: the LARGEST of them;
       - otherwise, take the last threshold with ``far_train < far_target`` and the next
         threshold in the grid, where ``far_train > far_target``. Interpolate linearly in FAR
         between these two (threshold, FAR) points. So within a flat run of FAR, the lower
         end point is the run's largest threshold, and the upper end point is the smallest
         threshold of the next run.
    3. On the test fold, with ``accept iff dist < thr``:
       - ``val = TA / n_same``;
       - ``far = FA / n_diff``.
       A zero denominator gives 0 here; the original raised ZeroDivisionError.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be a non-empty, strictly increasing 1-D array")
    if not 0.0 < far_target <= 1.0:
        raise ValueError(f"far_target must be in (0, 1], got {far_target}")
    emb1, emb2, issame = _check_pairs(emb1, emb2, issame, nfolds)
    return val_from_distances(thresholds, pair_distances(emb1, emb2, distance), issame, far_target, nfolds)


def val_from_distances(thresholds, dist, issame, far_target: float = 1e-3, nfolds: int = 10):
    """:func:`calculate_val` on precomputed per-pair distances."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    dist, issame = np.asarray(dist, dtype=np.float64), np.asarray(issame, dtype=bool)
    val = np.zeros(nfolds)
    far = np.zeros(nfolds)
    for fold, (train, test) in enumerate(kfold_splits(dist.size, nfolds)):
        neg_train = dist[train][~issame[train]]
        if neg_train.size:
            far_train = _count_below(neg_train, thresholds) / neg_train.size
        else:
            far_train = np.zeros(thresholds.size)
        thr = _threshold_at_far(far_train, thresholds, far_target)

        d, same = dist[test], issame[test]
        n_same = int(same.sum())
        n_diff = same.size - n_same
        accept = d < thr
        val[fold] = np.sum(accept & same) / n_same if n_same else 0.0
        far[fold] = np.sum(accept & ~same) / n_diff if n_diff else 0.0
    return float(np.mean(val)), float(np.std(val)), float(np.mean(far))


def evaluate(
    embeddings, issame, nfolds: int = 10, far_target: float = 1e-3, distance: str = "sqeuclidean"
) -> dict[str, float]:
    """InsightFace's ``evaluate`` on fused, L2-normalised embeddings.

    ``embeddings`` is (2P, D); pair ``p`` is rows ``2p`` and ``2p+1``. ``issame`` is (P,).

    Returns plain floats:
    - ``acc``: the mean of the fold accuracies;
    - ``acc_std``: their ``np.std`` (ddof=0);
    - ``best_threshold``: the mean of the per-fold thresholds;
    - ``val@far1e-3``: the key follows ``far_key(far_target)``;
    - ``val_std``;
    - ``far``: the mean test-fold FAR at the VAL threshold.

    Thresholds: ``np.arange(0, 4, 0.01)`` for accuracy and ``np.arange(0, 4, 0.001)`` for VAL.
    ``distance="cosine"`` is the official XQLFW protocol: ``1 - cos`` with ``np.arange(0, 2, 0.001)``
    for accuracy (and the VAL grid halved).
    Raises ValueError on an odd or non-2-D ``embeddings``, a wrong ``issame`` length,
    NaN/inf values, or fewer than ``nfolds`` pairs.
    """
    embeddings = np.asarray(embeddings)
    issame = np.asarray(issame)
    if embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise ValueError(f"embeddings must be (2P, D) with pairs in consecutive rows, got shape {embeddings.shape}")
    n_pairs = embeddings.shape[0] // 2
    if issame.ndim != 1 or issame.shape[0] != n_pairs:
        raise ValueError(f"issame must have P={n_pairs} entries (one per pair of rows), got shape {issame.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or inf")
    if n_pairs < nfolds:
        raise ValueError(f"{n_pairs} pairs cannot be split into {nfolds} folds (need at least {nfolds} pairs)")
    emb1, emb2 = embeddings[0::2], embeddings[1::2]
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {list(DISTANCES)}, got {distance!r}")
    roc_thr, val_thr = (
        (COSINE_ROC_THRESHOLDS, COSINE_VAL_THRESHOLDS) if distance == "cosine" else (ROC_THRESHOLDS, VAL_THRESHOLDS)
    )
    _, _, accuracy, best_thresholds = calculate_roc(roc_thr, emb1, emb2, issame, nfolds, distance)
    val, val_std, far = calculate_val(val_thr, emb1, emb2, issame, far_target, nfolds, distance)
    return {
        "acc": float(np.mean(accuracy)),
        "acc_std": float(np.std(accuracy)),
        "best_threshold": float(np.mean(best_thresholds)),
        f"val@{far_key(far_target)}": val,
        "val_std": val_std,
        "far": far,
    }


def evaluate_similarity(
    similarity, issame, nfolds: int = 10, far_target: float = 1e-3, distance: str = "sqeuclidean"
) -> dict[str, float]:
    """:func:`evaluate` on a per-pair similarity score (higher = same), e.g. QMagFace's fused score.

    The score becomes the distance the protocol thresholds: ``2 - 2 s`` for ``sqeuclidean`` and
    ``1 - s`` for ``cosine``. For ``s`` = the cosine of unit embeddings these are the protocol's own
    distances, so the same grids and folds apply; a fused score may leave [-1, 1], and pairs beyond
    the grid are then never (or always) accepted."""
    s = np.asarray(similarity, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if s.ndim != 1 or s.shape != issame.shape:
        raise ValueError(f"similarity and issame must be 1-D of equal length, got {s.shape} and {issame.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("similarity contains NaN or inf")
    if s.size < nfolds:
        raise ValueError(f"{s.size} pairs cannot be split into {nfolds} folds (need at least {nfolds} pairs)")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {list(DISTANCES)}, got {distance!r}")
    cosine = distance == "cosine"
    dist = (1.0 - s) if cosine else (2.0 - 2.0 * s)
    roc_thr, val_thr = (COSINE_ROC_THRESHOLDS, COSINE_VAL_THRESHOLDS) if cosine else (ROC_THRESHOLDS, VAL_THRESHOLDS)
    _, _, accuracy, best_thresholds = roc_from_distances(roc_thr, dist, issame, nfolds)
    val, val_std, far = val_from_distances(val_thr, dist, issame, far_target, nfolds)
    return {
        "acc": float(np.mean(accuracy)),
        "acc_std": float(np.std(accuracy)),
        "best_threshold": float(np.mean(best_thresholds)),
        f"val@{far_key(far_target)}": val,
        "val_std": val_std,
        "far": far,
    }
