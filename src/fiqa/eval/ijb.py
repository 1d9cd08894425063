"""IJB-B / IJB-C: template aggregation (:mod:`fiqa.eval.ijb_templates`), 1:1 verification (here, with the
ROC) and 1:N identification (:mod:`fiqa.eval.ijb_identify`); the whole protocol is :func:`evaluate`. Pure numpy.

Facts from ``shared/reference/data_and_eval.md`` §3 (insightface ``ijb_11.py`` / ``ijb_1n.py``,
arcface_torch ``eval_ijbc.py``, AdaFace ``validation_mixed``) and the methods references.

**Aggregation** (:func:`aggregate`), per image ``f_i`` = the flip-fused raw embedding ``e(x) + e(flip x)``:

- ``norm_score=True`` keeps ``f_i`` (insightface's ``use_norm_score``); ``False`` uses ``f_i / ||f_i||``;
- ``detector_score=True`` multiplies by the detector's faceness (insightface's ``use_detector_score``);
- ``weighting``, with the per-image quality ``q_i`` of any method (higher = better):

  * ``none``: ``g_m = mean_{i in m} f_i`` per media, ``t_T = l2(sum_m g_m)`` (insightface, arcface_torch, AdaFace);
  * ``crfiqa`` (CR-FIQA ``eval_ijbc_qs.py``): ``q' = (q - min q) / (max q - min q)`` over all images of the set,
    ``f_i *= q'_i / sum q'``, then the ``none`` pooling. ``max q == min q`` gives ``q' = 1`` (the original
    divides by zero). A template whose images all have ``q' = 0`` gets a zero vector, hence score 0 with
    every template (sklearn's ``normalize`` keeps zero rows, as here);
  * ``eqface`` (EQFace QWFA): the EQFace code has no IJB or QWFA code (methods reference §3.5: the numbers
    come from the paper only), so the documented nearest is implemented: the quality-weighted mean of the
    template's images, ``t_T = l2(sum_i q_i f_i / sum_i q_i)``, with no media step (the paper aggregates a
    template or a video as one set of images). ``quality_threshold=s_th`` gives QWFAF: images with
    ``q_i < s_th`` get weight 0, unless no image of the template reaches ``s_th`` (then all are kept: our
    choice). Qualities must be ``>= 0``; a template whose weights sum to 0 falls back to the plain mean;
  * ``qmagface`` (QMagFace ``combine_weighted_f_q``, methods reference §5.3): per media with more than one
    image ``f = sum q_i f_i``, ``q = sum q_i^2 / sum q_i``, output ``f / ||f|| * q`` (a single-image media
    is left as ``(f_i, q_i)``); then the same over the media of the template, giving ``(t_T, q_T)``.
    ``q_T`` is the template's quality for QMagFace's score ``min(0, beta s - alpha) min(q_T1, q_T2) + s``
    (the original recovers it as ``feat[:, 0] / normalized_feat[:, 0]``; ``q_T`` is kept exactly here).
    With ``q_i = ||f_i||`` (MagFace magnitudes) and ``norm_score=True`` this is QMagFace's rule. Qualities
    must be ``> 0``.

Templates are L2-normalised (a zero vector stays zero). The template quality used for the ERC is the
minimum image quality of the template (CR-FIQA ``IJB-C Evaluation``); a pair's quality is the minimum of
its two templates'. The images are processed in chunks of whole templates, sorted by (template, media),
with sparse group sums: no Python loop over templates, and float64 sums.

**1:1** (:func:`verify`): template-pair cosines, computed as blocks of template-by-template products
(``A[rows] @ B.T``) when the pairs cover enough of the grid of their templates (IJB-B/C: about 23 %),
else as gathered row products in blocks; no Python loop over pairs. ROC exactly as
``sklearn.metrics.roc_curve(labels, scores)`` (``drop_intermediate=True``), built from two sorts
(:func:`roc_curve`). TAR@FAR for FAR in 1e-6 ... 1e-1:

- ``tar@far<x>``: insightface's ``write_result``: ``flipud`` both arrays, ``argmin |fpr - x|`` (the first
  in flipped order on ties, i.e. the largest TPR): the *nearest* FPR, which may exceed ``x``;
- ``tar_strict@far<x>``: the largest TPR over all thresholds with ``FPR <= x`` (every distinct score
  value, not only the ROC's corners);
- ``roc_auc``: trapezoid of the ROC (``sklearn.metrics.auc``).

**1:N** (:func:`identify`): gallery = all listed gallery templates (IJB-C G1 + G2, IJB-B S1 + S2), probes
from the ``*_1N_probe_mixed.csv``; ``sim = P @ G.T`` of the unit templates. Every subject must have one
gallery template (insightface raises otherwise, so does this). Probes whose subject has no gallery
template are non-mated searches: they count only in the NIST variant.

- ``rank<k>``: fraction of mated probes whose mate is among the top ``k``. The (0-based) rank is the
  number of non-mate gallery templates scoring *at least* the mate's similarity: **a tie counts against
  the mate**. insightface ranks by ``argsort(-sim)``, whose order among equal scores is numpy's (the
  gallery order in practice), so a tie is decided by where the mate sits in the gallery, not by the
  model. The pessimistic rule is deterministic and gives a collapsed model (all templates equal, or
  zero: every score ties) rank-k = 0 for every k below the gallery size, never 1.0 (which W&B, keeping
  the max of ``rank*``, would show for the rest of the run). Without ties it is the argsort's rank. The
  same rule as :func:`fiqa.eval.identification.search_scores`;
- ``tpir@fpir<x>`` (insightface ``ijb_1n.py``, non-standard): ``k = ceil(n_probe x)``, ``th`` = the k-th
  largest of all non-mate similarities of the mated probes (every score but the mate's),
  ``TPIR = mean(mate_sim > th)``. Computed on a copy (insightface overwrites ``similarity`` in place);
- ``tpir_nist@fpir<x>`` (NIST open-set, our definition): per gallery split ``s`` (G1, G2: ``gallery_split``),
  the mated searches are the probes whose mate is in ``s``, the non-mated searches the others; the
  threshold ``T`` is the ``(m+1)``-th largest of the non-mated searches' top scores with
  ``m = floor(x n_nonmated)`` (so that ``#{top > T} <= x n_nonmated``: FPIR <= x); TPIR = fraction of
  mated searches whose mate is at rank ``<= nist_rank`` (default 1; ties against the mate, as above)
  with a score ``> T``; the reported value
  is the mean over the splits (the IJB-C convention of averaging G1 and G2). A split without non-mated
  searches (a single closed gallery) uses leave-mate-out: each mated search, with its mate removed, is also
  a non-mated search.

Both thresholded rates compare ``mate_sim > threshold`` strictly (insightface's own rule), so a mate
tied with the threshold also fails: a collapsed model scores 0 there too.

**Finite features.** Image embeddings, aggregated templates and the features given to :func:`verify` /
:func:`identify` must be finite; otherwise a ValueError names the set (``name``, the val set's name when
called through :func:`fiqa.eval.protocols.ijb`) and says how many rows are NaN or inf. NaN compares as
"not greater" and would silently rank a diverged model's mate first. A zero embedding is finite and
stays a zero template (score 0 with every template, e.g. CR-FIQA's weighting with ``q' = 0``): a model
that collapsed to zero gets every score tied, hence rank-k = 0 below the gallery size, not an error; a
zero feature that a caller divided by its zero norm (NaN) is the error above.
"""

from __future__ import annotations

import numpy as np

from fiqa.eval.ijb_identify import FPIRS, RANKS, identify
from fiqa.eval.ijb_templates import WEIGHTINGS, Templates, _require_finite, aggregate, pair_scores, template_rows
from fiqa.eval.verification import far_key

__all__ = [
    "FARS",
    "FPIRS",
    "RANKS",
    "WEIGHTINGS",
    "Templates",
    "aggregate",
    "evaluate",
    "identify",
    "pair_scores",
    "roc_curve",
    "roc_points",
    "tar_at_far",
    "template_rows",
    "verify",
]

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
SCORES = ("cosine", "qmagface")


# ---- ROC ------------------------------------------------------------------------------------------
def _unique_counts(sorted_x: np.ndarray):
    if sorted_x.size == 0:
        return sorted_x, np.zeros(0, np.int64)
    last = np.r_[np.flatnonzero(sorted_x[1:] != sorted_x[:-1]), sorted_x.size - 1]
    return sorted_x[last], np.diff(np.r_[-1, last])


def roc_points(scores, labels):
    """Every distinct score value, descending, with the counts at or above it: ``(thresholds, fps,
    tps)`` (int64), i.e. sklearn's ``_binary_clf_curve``, from one sort per class (no argsort)."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    y = y.astype(bool)
    gu, gc = _unique_counts(np.sort(s[y]))
    iu, ic = _unique_counts(np.sort(s[~y]))
    pos = np.searchsorted(iu, gu)
    shared = (pos < iu.size) & (iu[np.minimum(pos, max(iu.size - 1, 0))] == gu) if iu.size else np.zeros(gu.size, bool)
    new = gu[~shared]
    i_at = np.arange(iu.size) + np.searchsorted(new, iu)  # impostor values' places in the union
    g_at = np.empty(gu.size, np.int64)
    g_at[shared] = i_at[pos[shared]]
    g_at[~shared] = np.arange(new.size) + pos[~shared]
    u = np.empty(iu.size + new.size, dtype=s.dtype)
    u[i_at], u[g_at] = iu, gu
    ci, cg = np.zeros(u.size, np.int64), np.zeros(u.size, np.int64)
    ci[i_at], cg[g_at] = ic, gc
    return u[::-1], np.cumsum(ci[::-1]), np.cumsum(cg[::-1])


def roc_curve(scores, labels, drop_intermediate: bool = True):
    """``(fpr, tpr, thresholds)`` equal to ``sklearn.metrics.roc_curve(labels, scores,
    drop_intermediate=...)`` (labels 1 = genuine), including the leading ``(0, 0, inf)`` point."""
    return _roc_from_points(*roc_points(scores, labels), drop_intermediate)


def _roc_from_points(thr, fps, tps, drop_intermediate: bool = True):
    if fps.size == 0 or fps[-1] == 0 or tps[-1] == 0:
        raise ValueError("the ROC needs at least one genuine and one impostor score")
    if drop_intermediate and fps.size > 2:
        keep = np.flatnonzero(np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True])
        thr, fps, tps = thr[keep], fps[keep], tps[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    thr = np.r_[np.inf, thr.astype(np.float64)]
    return fps / fps[-1], tps / tps[-1], thr


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    d = np.diff(x)
    return float((d * (y[1:] + y[:-1]) / 2.0).sum())


def tar_at_far(scores, labels, fars=FARS, return_curves: bool = False) -> dict:
    """``tar@far<x>`` (insightface's nearest-FPR rule), ``tar_strict@far<x>`` (FPR <= x) and ``roc_auc``
    of the scores (module docstring). ``return_curves``: also ``"curves": {"roc": {"": (fpr, tpr)}}``, the
    ROC at every distinct score thinned for plotting (``fiqa.eval.report.thin_roc``; it keeps the points
    of the ``tar_strict`` values)."""
    thr, fps, tps = roc_points(scores, labels)
    if fps.size == 0 or fps[-1] == 0 or tps[-1] == 0:
        raise ValueError("TAR@FAR needs at least one genuine and one impostor pair")
    n_imp, n_gen = int(fps[-1]), int(tps[-1])
    fpr, tpr, _ = _roc_from_points(thr, fps, tps, drop_intermediate=True)
    fpr_f, tpr_f = fpr[::-1], tpr[::-1]
    full_fpr, full_tpr = np.r_[0, fps] / n_imp, np.r_[0, tps] / n_gen
    out = {}
    for x in fars:
        out[f"tar@{far_key(x)}"] = float(tpr_f[np.argmin(np.abs(fpr_f - x))])
        out[f"tar_strict@{far_key(x)}"] = float(full_tpr[np.searchsorted(full_fpr, x, side="right") - 1])
    out["roc_auc"] = _trapezoid(tpr, fpr)
    if return_curves:
        from fiqa.eval.report import thin_roc

        out["curves"] = {"roc": {"": thin_roc(full_fpr, full_tpr, fars)}}
    return out


# ---- 1:1 ----------------------------------------------------------------------------------------
def _qmagface_params(qmagface) -> dict:
    params = dict(qmagface or {})
    alpha, beta, preset = params.get("alpha"), params.get("beta"), params.get("preset")
    if alpha is not None or beta is not None:
        return {"alpha": alpha, "beta": beta}
    if preset is None:
        raise ValueError("score='qmagface' needs qmagface.preset or qmagface.alpha and qmagface.beta")
    return {"preset": preset}


def verify(
    templates: Templates,
    pairs,
    pair_labels,
    *,
    fars=FARS,
    score: str = "cosine",
    qmagface=None,
    erc_fmrs=(1e-2, 1e-3, 1e-4),
    erc_mode: str = "recompute_nearest",
    return_curves: bool = False,
    name: str = "IJB",
) -> dict:
    """1:1 metrics of template pairs ``pairs`` (P, 2) template ids with ``pair_labels`` (P,) (1 =
    genuine): TAR@FAR (both rules), ``roc_auc``, and the CR-FIQA ERC of the pair quality
    (min of the templates' min image quality) when the templates carry qualities (``erc_fmrs=()``
    skips it). ``score="qmagface"``: QMagFace's score with ``qmagface={"preset"} | {"alpha", "beta"}``
    (needs ``weighting="qmagface"`` templates). ``return_curves``: also ``"curves"`` with the ROC
    (``roc``, labelled by the score) and the ERC (``erc``, one curve per FMR). Non-finite template
    features raise a ValueError naming the set ``name``."""
    pr = np.asarray(pairs)
    if pr.ndim != 2 or pr.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2) template ids, got shape {pr.shape}")
    labels = np.asarray(pair_labels)
    if labels.shape != (pr.shape[0],):
        raise ValueError(f"pair_labels must have shape ({pr.shape[0]},), got {labels.shape}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, got {score!r}")
    _require_finite(templates.features, "template features", name)
    r1 = templates.rows(pr[:, 0], "template pairs (column 1)")
    r2 = templates.rows(pr[:, 1], "template pairs (column 2)")
    s = pair_scores(templates.features, r1, r2)
    kind = "cosine"
    if score == "qmagface":
        if templates.weight is None:
            raise ValueError("score='qmagface' needs templates aggregated with weighting='qmagface'")
        from fiqa.eval.qmagface_score import score as qmagface_score

        w = templates.weight
        s = qmagface_score(s.astype(np.float64), w[r1], w[r2], **_qmagface_params(qmagface))
        kind = "similarity"
    labels = labels.astype(bool)
    out = tar_at_far(s, labels, fars, return_curves)
    curves = out.pop("curves", None)
    if curves is not None:
        curves["roc"] = {score: curves["roc"][""]}
    if erc_fmrs and not np.isnan(templates.quality).any():
        from fiqa.eval.erc import erc

        pq = np.minimum(templates.quality[r1], templates.quality[r2])
        res = erc(s, labels, pq, erc_mode, tuple(erc_fmrs), score_kind=kind)
        out.update(res.metrics())
        if curves is not None:
            curves["erc"] = res.curves()
    if curves is not None:
        out["curves"] = curves
    return out


# ---- the whole protocol ---------------------------------------------------------------------------
def evaluate(
    embeddings,
    qualities,
    template_ids,
    media_ids,
    pairs=None,
    pair_labels=None,
    faceness=None,
    gallery_templates=None,
    gallery_subjects=None,
    gallery_split=None,
    probe_templates=None,
    probe_subjects=None,
    *,
    norm_score: bool = True,
    detector_score: bool = True,
    weighting: str = "none",
    quality_threshold: float | None = None,
    score: str = "cosine",
    qmagface=None,
    fars=FARS,
    erc_fmrs=(1e-2, 1e-3, 1e-4),
    erc_mode: str = "recompute_nearest",
    ranks=RANKS,
    fpirs=FPIRS,
    nist_rank: int = 1,
    return_curves: bool = False,
    name: str = "IJB",
) -> dict:
    """Aggregate, then the 1:1 metrics (when ``pairs`` are given) and the 1:N metrics (when the
    gallery and probe maps are given). ``embeddings`` (N, D) flip-fused raw; ``qualities`` (N,).
    ``return_curves``: also ``"curves"``: ``{"roc": ..., "erc": ..., "cmc": ...}`` of the parts run.
    ``name``: the set's name in the errors (e.g. non-finite embeddings)."""
    emb = np.asarray(embeddings)
    tid = np.asarray(template_ids)
    if emb.ndim != 2 or emb.shape[0] != tid.shape[0]:
        raise ValueError(
            f"IJB needs every image of the set embedded: {emb.shape[0] if emb.ndim else 0} embeddings for "
            f"{tid.shape[0]} images (limit_val_batches / fast_dev_run cover part of the set only)"
        )
    q = None if qualities is None else np.asarray(qualities, np.float64)
    if q is not None and not np.all(np.isfinite(q)):
        if weighting != "none":
            raise ValueError("qualities contain NaN or inf")
        q = None
    tpl = aggregate(
        emb,
        tid,
        media_ids,
        qualities=q,
        faceness=faceness,
        norm_score=norm_score,
        detector_score=detector_score,
        weighting=weighting,
        quality_threshold=quality_threshold,
        name=name,
    )
    out, curves = {}, {}
    if pairs is not None:
        if pair_labels is None:
            raise ValueError("pairs given without pair_labels")
        out.update(
            verify(
                tpl,
                pairs,
                pair_labels,
                fars=fars,
                score=score,
                qmagface=qmagface,
                erc_fmrs=erc_fmrs,
                erc_mode=erc_mode,
                return_curves=return_curves,
                name=name,
            )
        )
        curves.update(out.pop("curves", {}))
    if gallery_templates is not None and probe_templates is not None:
        g_rows = tpl.rows(gallery_templates, "1:N gallery")
        p_rows = tpl.rows(probe_templates, "1:N probes")
        out.update(
            identify(
                tpl.features[p_rows],
                probe_subjects,
                tpl.features[g_rows],
                gallery_subjects,
                gallery_split=gallery_split,
                ranks=ranks,
                fpirs=fpirs,
                nist_rank=nist_rank,
                return_curves=return_curves,
                name=name,
            )
        )
        curves.update(out.pop("curves", {}))
    if return_curves:
        out["curves"] = curves
    return out
