"""A val set's protocols run on its gathered outputs (:func:`evaluate_set`: what every validation,
``task=eval``, ``task=compare`` and ``task=benchmark`` calls), and the quality-aware pair score a set may ask
for (``val.<set>.score=qmagface``). Pure numpy."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import numpy as np

from fiqa.eval.qmagface_score import score as qmagface_score
from fiqa.eval.verification import l2_normalize

__all__ = ["evaluate_set", "pair_similarity_of", "qmagface_pair_scores"]


def _warn(msg: str) -> None:
    """A rank-0 warning (fiqa.utils.logging, imported here only: ``fiqa.eval`` stays free of torch)."""
    from fiqa.utils.logging import get_logger

    get_logger(__name__).warning(msg)


def pair_similarity_of(name: str, spec: Mapping, embeddings: np.ndarray, qualities: np.ndarray) -> np.ndarray | None:
    """:meth:`FaceModule.pair_similarity` for the view ``spec`` of val set ``name`` (``fiqa.tasks.build.build_val``)."""
    kind = spec.get("score", "cosine")
    if kind in (None, "cosine"):
        return None
    if kind != "qmagface":
        raise ValueError(f"val.{name}.score={kind!r} is not valid; choose one of ['cosine', 'qmagface']")
    params = dict(spec.get("qmagface") or {})
    alpha, beta, preset = params.get("alpha"), params.get("beta"), params.get("preset")
    return qmagface_pair_scores(embeddings, qualities, alpha, beta, None if alpha is not None else preset)


def qmagface_pair_scores(embeddings, qualities, alpha=None, beta=None, preset=None) -> np.ndarray:
    """QMagFace's score of the pairs (rows 2p, 2p+1): cosine of the unit embeddings fused with min quality."""
    e = l2_normalize(np.asarray(embeddings, np.float64))
    q = np.asarray(qualities, np.float64)
    cos = np.sum(e[0::2] * e[1::2], axis=1)
    return qmagface_score(cos, q[0::2], q[1::2], alpha, beta, preset=preset)


def evaluate_set(
    name: str,
    res: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    protocols: Mapping[str, Callable],
    pair_similarity: Callable | None = None,
    curves: dict | None = None,
) -> dict:
    """Run a val set's protocols on its gathered outputs. When the outputs do not cover the whole
    set (``limit_val_batches``, ``fast_dev_run``), only complete pairs are evaluated, with a warning.
    With a ``curves`` dict, the protocols that take ``return_curves`` are asked for their curves, which
    are merged into it (``{kind: {label: (x, y)}}``, ``fiqa.eval.protocols``); the metrics stay floats.
    A protocol that takes ``set_name`` is given ``name``. A protocol's ValueError (a partial set, NaN
    embeddings, ...) skips it with a warning: its metrics are not logged."""
    indices, emb, q = res["indices"], res["embeddings"], res["qualities"]
    n_total = (
        int(targets["n_images"])
        if "n_images" in targets
        else len(targets["degradation"])
        if "degradation" in targets
        else (2 * len(targets["issame"]) if "issame" in targets else len(indices))
    )
    t = dict(targets)
    if len(indices) != n_total or (len(indices) and indices[-1] != n_total - 1):
        full_emb = np.full((n_total, emb.shape[1]), np.nan, np.float32)
        full_q = np.full(n_total, np.nan, np.float32)
        full_emb[indices], full_q[indices] = emb, q
        if "issame" in t:
            ok = ~np.isnan(full_q).reshape(-1, 2).any(1)
            keep = np.repeat(ok, 2)
            t["issame"] = t["issame"][ok]
        else:
            keep = ~np.isnan(full_q)
        if "degradation" in t:
            t["degradation"] = t["degradation"][keep]
        emb, q = full_emb[keep], full_q[keep]
        _warn(
            f"val/{name}: {len(indices)} of {n_total} images embedded (limit_val_batches or "
            f"fast_dev_run): metrics on the {len(q)} complete ones only"
        )
    if pair_similarity is not None and "issame" in t:
        sim = pair_similarity(emb, q)
        if sim is not None:
            t["pair_similarity"] = sim
    metrics = {}
    for key, protocol in protocols.items():
        extra = {"return_curves": True} if curves is not None and _takes(protocol, "return_curves") else {}
        if _takes(protocol, "set_name"):  # named in its errors (e.g. NaN embeddings of a diverged model)
            extra["set_name"] = name
        try:
            out = dict(protocol(embeddings=emb, qualities=q, **t, **extra))
        except ValueError as err:  # e.g. too few pairs for 10 folds in a fast_dev_run
            _warn(f"val/{name}: protocol {key!r} skipped: {err}")
            continue
        for kind, c in (out.pop("curves", None) or {}).items():
            curves.setdefault(kind, {}).update(c)
        metrics.update(out)
    return metrics


def _takes(fn: Callable, arg: str) -> bool:
    try:
        return arg in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False
