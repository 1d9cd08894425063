"""IJB 1:N identification of probe templates against the gallery: CMC ranks, TPIR at FPIR (insightface)
and the NIST variant with non-mated searches. The protocol and its sources: :mod:`fiqa.eval.ijb`'s docstring."""

from __future__ import annotations

import math

import numpy as np

from fiqa.eval.ijb_templates import _require_finite
from fiqa.eval.verification import sci_key

FPIRS = (1e-2, 1e-1)
RANKS = (1, 5, 10)


# ---- 1:N ----------------------------------------------------------------------------------------
def _mates(gallery_subjects: np.ndarray, probe_subjects: np.ndarray) -> np.ndarray:
    """Gallery index of each probe's subject, -1 when the subject has no gallery template."""
    subj, first, count = np.unique(gallery_subjects, return_index=True, return_counts=True)
    if np.any(count > 1):
        dup = subj[count > 1]
        raise ValueError(
            f"1:N gallery: subject {dup[0]} (and {dup.size - 1} more) has {int(count[count > 1][0])} gallery "
            f"templates; the IJB 1:N protocol needs exactly one per subject"
        )
    pos = np.searchsorted(subj, probe_subjects)
    hit = (pos < subj.size) & (subj[np.minimum(pos, subj.size - 1)] == probe_subjects)
    return np.where(hit, first[np.minimum(pos, subj.size - 1)], -1)


def identify(
    probe_features,
    probe_subjects,
    gallery_features,
    gallery_subjects,
    *,
    gallery_split=None,
    ranks=RANKS,
    fpirs=FPIRS,
    nist_rank: int = 1,
    return_curves: bool = False,
    name: str = "IJB",
) -> dict:
    """1:N metrics (module docstring): ``rank<k>``, ``tpir@fpir<x>`` (insightface) and
    ``tpir_nist@fpir<x>``, on unit template features (``sim = P @ G.T``). ``return_curves``: also
    ``"curves": {"cmc": {"1:N": (ranks, rates)}}`` up to rank ``max(20, max(ranks))`` (at most the gallery size).
    Ties count against the mate; non-finite features raise a ValueError naming the set ``name``."""
    pf, gf = np.asarray(probe_features), np.asarray(gallery_features)
    ps, gs = np.asarray(probe_subjects).astype(np.int64), np.asarray(gallery_subjects).astype(np.int64)
    if pf.ndim != 2 or gf.ndim != 2 or pf.shape[1] != gf.shape[1]:
        raise ValueError(f"probe and gallery features must be (Q, D) and (G, D), got {pf.shape} and {gf.shape}")
    if ps.shape != (pf.shape[0],) or gs.shape != (gf.shape[0],):
        raise ValueError("one subject per probe and per gallery template is needed")
    split = np.zeros(gs.size, np.int64) if gallery_split is None else np.asarray(gallery_split).astype(np.int64)
    if split.shape != gs.shape:
        raise ValueError(f"gallery_split must have shape {gs.shape}, got {split.shape}")
    _require_finite(pf, "1:N probe template features", name)
    _require_finite(gf, "1:N gallery template features", name)
    mate = _mates(gs, ps)
    mated = np.flatnonzero(mate >= 0)
    if mated.size == 0:
        raise ValueError("1:N: no probe has a mate in the gallery (check the subject ids of the 1:N csv files)")
    sim = pf @ gf.T  # (Q, G)
    m = mate[mated]
    mate_sim = sim[mated, m]
    neg = sim[mated]  # a copy: insightface's in-place overwrite of `similarity` is not repeated
    neg[np.arange(mated.size), m] = -np.inf  # the mate's own column out: the non-mates remain
    # Ties count AGAINST the mate: the 0-based rank is #{non-mates with sim >= the mate's}, i.e. the mate
    # is placed after every non-mate it ties with. insightface's ijb_1n.py uses argsort(-similarity),
    # whose order among equal scores is numpy's (the gallery order in practice), so there a tie is won
    # or lost by the mate's gallery index, not by the model. Counting ties for the mate (`>`) gave a
    # collapsed model (every template equal or zero: every score tied) rank1/5/10 = 1.0, NaN features
    # too (NaN never compares greater; refused above). W&B keeps the max of val/*/rank*
    # (fiqa.callbacks.wandb_setup), so one collapsed epoch would show 1.0 for the rest of the run.
    # Against the mate it gets rank-k = 0 for every k below the gallery size. Without ties this is the
    # argsort's rank. Same rule as fiqa.eval.identification.search_scores.
    rank = np.count_nonzero(neg >= mate_sim[:, None], axis=1)
    out = {f"rank{k}": float(np.mean(rank < k)) for k in ranks}
    if return_curves:
        from fiqa.eval.report import cmc_points

        out["curves"] = {"cmc": {"1:N": cmc_points(rank + 1.0, min(max([20, *ranks]), gs.size))}}

    # insightface: th = the k-th largest of all non-mate similarities of the (mated) probes
    neg = neg.ravel()
    n_neg = neg.size - mated.size
    ks = [min(max(math.ceil(mated.size * x), 1), n_neg) for x in fpirs]
    if n_neg:
        neg.partition(sorted({neg.size - k for k in ks}))
    for x, k in zip(fpirs, ks):
        out[f"tpir@fpir{sci_key(x)}"] = float(np.mean(mate_sim > neg[neg.size - k])) if n_neg else float("nan")
    del neg

    # NIST open-set, per gallery split, averaged
    per_split = {x: [] for x in fpirs}
    for s_id in np.unique(split):
        cols = np.flatnonzero(split == s_id)
        sub = sim[:, cols]
        in_split = np.zeros(ps.size, bool)
        in_split[mated] = split[m] == s_id
        mated_s = np.flatnonzero(in_split)
        if mated_s.size == 0:
            continue
        local = np.searchsorted(cols, mate[mated_s])
        ms = sub[mated_s, local]
        rest = sub[mated_s]  # a copy (fancy indexing), the mate's column out
        rest[np.arange(mated_s.size), local] = -np.inf
        rank_s = np.count_nonzero(rest >= ms[:, None], axis=1)  # ties against the mate, as rank<k> above
        nonmated = np.flatnonzero(~in_split)
        if nonmated.size:
            top = sub[nonmated].max(axis=1)
        else:  # closed gallery: leave-mate-out
            top = rest.max(axis=1)
        top = np.sort(top)[::-1]
        for x in fpirs:
            allowed = int(math.floor(x * top.size + 1e-9))
            th = top[allowed] if allowed < top.size else -np.inf
            per_split[x].append(float(np.mean((rank_s < nist_rank) & (ms > th))))
    for x in fpirs:
        out[f"tpir_nist@fpir{sci_key(x)}"] = float(np.mean(per_split[x])) if per_split[x] else float("nan")
    return out
