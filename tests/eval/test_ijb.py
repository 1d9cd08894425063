"""fiqa.eval.ijb against plain-loop transcriptions written here from the reference descriptions
(shared/reference/data_and_eval.md §3.3-3.5; methods references for the CR-FIQA, EQFace and QMagFace
weightings): template aggregation per template, insightface's ``write_result`` on sklearn's ROC, and
``ijb_1n.py``'s ``evaluation`` (argsort, heapq, with the similarity copied)."""

from __future__ import annotations

import heapq
import itertools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_curve as sk_roc_curve

from fiqa.eval import erc as E
from fiqa.eval import ijb as I
from fiqa.eval import protocols
from fiqa.eval.verification import sci_key
from fiqa.quality import qmagface as QMF

SRC = Path(__file__).resolve().parents[2] / "src"


# ---- transcriptions -------------------------------------------------------------------------------
def loop_aggregate(f, tid, mid, q, face, norm_score, detector_score, weighting, s_th=None):
    """{template id: (unit feature float64, qmagface q_T or None)}, one template at a time."""
    f = np.asarray(f, np.float64)
    if not norm_score:
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
    if detector_score:
        f = f * face[:, None]
    if weighting == "crfiqa":
        qp = (q - q.min()) / (q.max() - q.min())
        f = f * (qp / qp.sum())[:, None]
    out = {}
    for t in sorted(set(tid.tolist())):
        idx = [i for i in range(len(tid)) if tid[i] == t]
        media = {}
        for i in idx:
            media.setdefault(int(mid[i]), []).append(i)
        q_t = None
        if weighting == "eqface":
            w = {i: q[i] for i in idx}
            if s_th is not None and any(q[i] >= s_th for i in idx):
                w = {i: (q[i] if q[i] >= s_th else 0.0) for i in idx}
            if sum(w.values()) == 0:
                w = {i: 1.0 for i in idx}
            v = sum(w[i] * f[i] for i in idx) / sum(w.values())
        elif weighting == "qmagface":
            fm, qm = [], []
            for ii in media.values():
                if len(ii) == 1:
                    fm.append(f[ii[0]])
                    qm.append(q[ii[0]])
                else:
                    g = sum(q[i] * f[i] for i in ii)
                    qq = sum(q[i] ** 2 for i in ii) / sum(q[i] for i in ii)
                    fm.append(g / np.linalg.norm(g) * qq)
                    qm.append(qq)
            if len(fm) == 1:
                v, q_t = fm[0], qm[0]
            else:
                g = sum(a * b for a, b in zip(qm, fm))
                q_t = sum(a * a for a in qm) / sum(qm)
                v = g / np.linalg.norm(g) * q_t
        else:
            v = sum(np.mean([f[i] for i in ii], axis=0) for ii in media.values())
        n = np.linalg.norm(v)
        out[t] = (v / n if n > 0 else v, q_t)
    return out


def insightface_write_result(scores, labels, fars):
    """ijb_11.py write_result: sklearn roc_curve, flipud, argmin |fpr - x|; and auc(fpr, tpr)."""
    fpr, tpr, _ = sk_roc_curve(labels, scores)
    roc_auc = sk_auc(fpr, tpr)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    return [tpr[np.argmin(abs(fpr - x))] for x in fars], roc_auc


def strict_loop(scores, labels, fars):
    gen, imp = scores[labels == 1], scores[labels == 0]
    points = [(0.0, 0.0)] + [(np.mean(imp >= t), np.mean(gen >= t)) for t in np.unique(scores)]
    return [max(tp for fp, tp in points if fp <= x) for x in fars]


def insightface_1n(query_feats, gallery_feats, mask, fars, ks=(1, 5, 10)):
    """ijb_1n.py evaluation(), with a copy of the similarity before the mates are overwritten."""
    query_num = query_feats.shape[0]
    similarity = np.dot(query_feats, gallery_feats.T)
    top_inds = np.argsort(-similarity)
    out = {}
    for k in ks:
        correct = sum(1 for i in range(query_num) if mask[i] in top_inds[i, :k])
        out[f"rank{k}"] = correct / query_num
    required_topk = [math.ceil(query_num * x) for x in fars]
    top_sims = similarity.copy()
    pos_sims = []
    for i in range(query_num):
        gt = mask[i]
        pos_sims.append(top_sims[i, gt])
        top_sims[i, gt] = -2.0
    pos_sims = np.array(pos_sims)
    neg_sims = top_sims[np.where(top_sims > -2.0)]
    neg_sims_sorted = heapq.nlargest(max(required_topk), neg_sims)
    for far, pos in zip(fars, required_topk):
        th = neg_sims_sorted[pos - 1]
        out[f"tpir@fpir{sci_key(far)}"] = np.sum(pos_sims > th) / query_num
    return out


def ties_against_mate_loop(sim, mask, ks):
    """rank-k with ties against the mate, probe by probe: the mate's 0-based rank is the number of
    other gallery columns whose similarity is >= the mate's; a hit at k iff that number is < k."""
    out = {}
    for k in ks:
        hits = 0
        for i in range(sim.shape[0]):
            ahead = sum(1 for j in range(sim.shape[1]) if j != mask[i] and sim[i, j] >= sim[i, mask[i]])
            hits += ahead < k
        out[f"rank{k}"] = hits / sim.shape[0]
    return out


def nist_loop(sim, probe_subj, gallery_subj, split, fpirs, rank=1):
    """The documented NIST open-set definition, probe by probe (a non-mate tied with the mate ranks first)."""
    res = {x: [] for x in fpirs}
    for s in sorted(set(split.tolist())):
        cols = [j for j in range(len(gallery_subj)) if split[j] == s]
        subj_cols = {gallery_subj[j]: j for j in cols}
        mated = [i for i in range(len(probe_subj)) if probe_subj[i] in subj_cols]
        nonmated = [i for i in range(len(probe_subj)) if probe_subj[i] not in subj_cols]
        if not mated:
            continue
        if nonmated:
            tops = [max(sim[i, j] for j in cols) for i in nonmated]
        else:
            tops = [max(sim[i, j] for j in cols if j != subj_cols[probe_subj[i]]) for i in mated]
        tops = sorted(tops, reverse=True)
        for x in fpirs:
            m = math.floor(x * len(tops) + 1e-9)
            th = tops[m] if m < len(tops) else -np.inf
            hits = 0
            for i in mated:
                mate = subj_cols[probe_subj[i]]
                r = sum(1 for j in cols if j != mate and sim[i, j] >= sim[i, mate])
                hits += r < rank and sim[i, mate] > th
            res[x].append(hits / len(mated))
    return {f"tpir_nist@fpir{sci_key(x)}": float(np.mean(v)) for x, v in res.items()}


# ---- data -----------------------------------------------------------------------------------------
def toy_set(seed=0, n_templates=30, dim=8):
    """Images of templates with 1-4 media of 1-3 images, shuffled; one media id shared by 2 templates."""
    rng = np.random.default_rng(seed)
    tid, mid, m = [], [], 500
    tids = np.sort(rng.choice(10_000, n_templates, replace=False))
    for t in tids:
        for _ in range(rng.integers(1, 5)):
            m += 1
            k = int(rng.integers(1, 4))
            tid += [t] * k
            mid += [m] * k
    tid.append(tids[1])
    mid.append(mid[0])  # the first media id again, in another template
    n = len(tid)
    perm = rng.permutation(n)
    tid, mid = np.asarray(tid)[perm], np.asarray(mid)[perm]
    f = (rng.standard_normal((n, dim)) * rng.uniform(0.5, 3, (n, 1))).astype(np.float32)
    q = rng.uniform(0.05, 1.0, n)
    face = rng.uniform(0.3, 1.0, n)
    return f, tid, mid, q, face


COMBOS = [
    (norm, det, w, th)
    for norm, det in itertools.product((True, False), repeat=2)
    for w, th in (("none", None), ("crfiqa", None), ("eqface", None), ("eqface", 0.5), ("qmagface", None))
]


@pytest.mark.parametrize("norm_score,detector_score,weighting,s_th", COMBOS)
def test_aggregation_equals_the_loop(norm_score, detector_score, weighting, s_th):
    f, tid, mid, q, face = toy_set()
    if s_th is not None:  # a template with every image under s_th keeps them all
        q[tid == tid[0]] = 0.2
    ref = loop_aggregate(f, tid, mid, q, face, norm_score, detector_score, weighting, s_th)
    for chunk in (1, 5, 1 << 15):  # chunks hold whole templates: the result does not depend on them
        t = I.aggregate(
            f, tid, mid, qualities=q, faceness=face, norm_score=norm_score, detector_score=detector_score,
            weighting=weighting, quality_threshold=s_th, chunk_images=chunk, dtype=np.float64,
        )  # fmt: skip
        assert t.ids.tolist() == sorted(ref)
        np.testing.assert_allclose(t.features, np.stack([ref[k][0] for k in t.ids]), rtol=0, atol=1e-9)
        np.testing.assert_array_equal(t.quality, [q[tid == k].min() for k in t.ids])
        if weighting == "qmagface":
            np.testing.assert_allclose(t.weight, [ref[k][1] for k in t.ids], rtol=1e-12)
        else:
            assert t.weight is None


def test_aggregation_is_insightface_default_by_hand():
    # one template, media {a, b} (2 images) and {c}: l2(mean(a, b) * faceness + c * faceness)
    f = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0]])
    t = I.aggregate(f, [5, 5, 5], [1, 1, 2], faceness=[1.0, 0.5, 0.25], detector_score=True, dtype=np.float64)
    v = np.array([0.5, 0.25, 0.5])
    np.testing.assert_allclose(t.features[0], v / np.linalg.norm(v), atol=1e-15)
    assert np.isnan(t.quality).all()  # no qualities given


def test_crfiqa_weighting_with_equal_qualities_is_plain_pooling():
    f, tid, mid, q, face = toy_set(1)
    a = I.aggregate(f, tid, mid, qualities=np.full(q.size, 0.7), weighting="crfiqa", dtype=np.float64)
    b = I.aggregate(f, tid, mid, qualities=q, weighting="none", dtype=np.float64)
    np.testing.assert_allclose(a.features, b.features, atol=1e-12)


def test_qmagface_weighting_with_magnitudes_changes_nothing_for_single_images():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((3, 4))
    q = np.linalg.norm(f, axis=1)
    t = I.aggregate(f, [1, 2, 3], [1, 2, 3], qualities=q, weighting="qmagface", dtype=np.float64)
    np.testing.assert_allclose(t.features, f / q[:, None], atol=1e-15)
    np.testing.assert_allclose(t.weight, q, rtol=1e-15)


# ---- scores, ROC, TAR@FAR -------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [True, False])
def test_pair_scores_matrix_product_and_gather_paths(dense):
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((300, 16)).astype(np.float32)
    if dense:  # a bipartite grid, about half of it used: matrix product in blocks
        r1, r2 = rng.integers(0, 40, 1000), rng.integers(40, 90, 1000)
    else:
        r1, r2 = rng.integers(0, 300, 200), rng.integers(0, 300, 200)
    got = I.pair_scores(feat, r1, r2, block_rows=7, block_pairs=33)
    ref = np.einsum("ij,ij->i", feat[r1].astype(np.float64), feat[r2].astype(np.float64))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_roc_curve_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 3000))
    s = rng.standard_normal(n)
    s = np.round(s, int(rng.integers(0, 3))) if seed % 2 else s.astype(np.float32)  # with ties
    y = rng.random(n) < rng.uniform(0.05, 0.5)
    y[:2] = [True, False]
    for drop in (True, False):
        for a, b in zip(sk_roc_curve(y, s, drop_intermediate=drop), I.roc_curve(s, y, drop)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(5))
def test_tar_at_far_equals_insightface_write_result_and_the_strict_loop(seed):
    rng = np.random.default_rng(100 + seed)  # held-out random scores, float32 ties
    n_gen, n_imp = int(rng.integers(50, 400)), int(rng.integers(2000, 20000))
    s = np.r_[rng.normal(0.5, 0.2, n_gen), rng.normal(0.0, 0.15, n_imp)].astype(np.float32)
    s = np.round(s, 3) if seed % 2 else s
    y = np.r_[np.ones(n_gen, int), np.zeros(n_imp, int)]
    perm = rng.permutation(y.size)
    s, y = s[perm], y[perm]
    fars = I.FARS
    got = I.tar_at_far(s, y, fars)
    ref, ref_auc = insightface_write_result(s, y, fars)
    assert [got[f"tar@far{sci_key(x)}"] for x in fars] == [float(v) for v in ref]
    assert got["roc_auc"] == pytest.approx(ref_auc, abs=1e-15)
    assert [got[f"tar_strict@far{sci_key(x)}"] for x in fars] == pytest.approx(strict_loop(s, y, fars), abs=0)


def test_nearest_far_can_exceed_the_target_and_strict_cannot():
    # 10 impostors: FPR steps of 0.1; target 0.14 -> nearest 0.1; target 0.16 -> nearest 0.2 (> 0.16)
    s = np.r_[np.arange(10) / 10.0, [0.15, 0.85, 0.95]]
    y = np.r_[np.zeros(10, int), [1, 1, 1]]
    got = I.tar_at_far(s, y, (0.14, 0.16))
    assert got["tar@far1.4e-1"] == pytest.approx(2 / 3) and got["tar_strict@far1.4e-1"] == pytest.approx(2 / 3)
    assert got["tar@far1.6e-1"] == pytest.approx(2 / 3) and got["tar_strict@far1.6e-1"] == pytest.approx(2 / 3)
    got = I.tar_at_far(s, y, (0.05,))
    assert got["tar_strict@far5e-2"] == pytest.approx(1 / 3)


# ---- 1:1 with quality: QMagFace score, ERC -------------------------------------------------------
def test_verify_qmagface_score_and_erc_on_the_template_quality():
    f, tid, mid, q, face = toy_set(5, n_templates=40)
    t = I.aggregate(f, tid, mid, qualities=q * 20, weighting="qmagface")
    rng = np.random.default_rng(0)
    pairs = t.ids[rng.integers(0, t.ids.size, (500, 2))]
    labels = (rng.random(500) < 0.3).astype(int)
    got = I.verify(t, pairs, labels, score="qmagface", qmagface={"preset": "magface100"}, erc_fmrs=(1e-1,))
    r1, r2 = np.searchsorted(t.ids, pairs[:, 0]), np.searchsorted(t.ids, pairs[:, 1])
    cos = I.pair_scores(t.features, r1, r2).astype(np.float64)  # the same float32 cosines (tested above)
    s = QMF.score(cos, t.weight[r1], t.weight[r2], preset="magface100")
    ref = I.tar_at_far(s, labels)
    assert {k: got[k] for k in ref} == pytest.approx(ref, abs=0)
    pq = np.minimum(t.quality[r1], t.quality[r2])
    ref_erc = E.erc(s, labels, pq, fmrs=(1e-1,), score_kind="similarity").metrics()
    assert {k: got[k] for k in ref_erc} == pytest.approx(ref_erc, abs=1e-9, nan_ok=True)
    assert "erc_auc_fmr1e-1" in got


# ---- 1:N --------------------------------------------------------------------------------------------
def one_to_n_set(seed=0, n_subj=40, n_probe=300, dim=12):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_subj, dim))
    g_subj = rng.permutation(n_subj) + 1000
    gallery = centres[g_subj - 1000] + 0.6 * rng.standard_normal((n_subj, dim))
    p_subj = rng.integers(0, n_subj, n_probe) + 1000
    probes = centres[p_subj - 1000] + 0.9 * rng.standard_normal((n_probe, dim))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(probes), p_subj, unit(gallery), g_subj


@pytest.mark.parametrize("seed", range(3))
def test_identify_equals_the_ijb_1n_loop(seed):
    pf, ps, gf, gs = one_to_n_set(seed)
    fpirs = (1e-2, 1e-1, 0.3)
    got = I.identify(pf, ps, gf, gs, fpirs=fpirs)
    mask = np.array([int(np.flatnonzero(gs == s)[0]) for s in ps])
    ref = insightface_1n(pf, gf, mask, fpirs)
    assert {k: got[k] for k in ref} == pytest.approx(ref, abs=0)


@pytest.mark.parametrize("closed", [True, False])
def test_identify_nist_equals_its_loop(closed):
    pf, ps, gf, gs = one_to_n_set(7, n_subj=30, n_probe=200)
    split = (np.arange(gs.size) % 2) if not closed else np.zeros(gs.size, int)
    fpirs = (1e-2, 5e-2, 0.2, 1.0)
    got = I.identify(pf, ps, gf, gs, gallery_split=split, fpirs=fpirs, nist_rank=1)
    ref = nist_loop(pf @ gf.T, ps, gs, split, fpirs)
    assert {k: got[k] for k in ref} == pytest.approx(ref, abs=1e-12)
    got5 = I.identify(pf, ps, gf, gs, gallery_split=split, fpirs=fpirs, nist_rank=5)
    ref5 = nist_loop(pf @ gf.T, ps, gs, split, (0.2,), 5)
    assert got5["tpir_nist@fpir2e-1"] == pytest.approx(ref5["tpir_nist@fpir2e-1"])
    assert got5["tpir_nist@fpir2e-1"] >= got["tpir_nist@fpir2e-1"]


def test_identify_errors_and_non_mated_probes():
    pf, ps, gf, gs = one_to_n_set(1, n_subj=10, n_probe=50)
    with pytest.raises(ValueError, match=r"subject 1003 .* 2 gallery templates"):
        I.identify(pf, ps, np.r_[gf, gf[:1]], np.r_[gs, [1003]])
    ps2 = ps.copy()
    ps2[:5] = 99  # no gallery template: non-mated searches, outside rank-N
    got = I.identify(pf, ps2, gf, gs)
    mask = np.array([int(np.flatnonzero(gs == s)[0]) for s in ps2[5:]])
    assert got["rank1"] == pytest.approx(insightface_1n(pf[5:], gf, mask, (0.1,))["rank1"])


# ---- ties and non-finite features ----------------------------------------------------------------------
def collapsed_set(kind, n_gallery=50, n_probe=200, dim=8, seed=0):
    """A collapsed model's 1:N templates: every feature the same unit vector, or every feature zero."""
    rng = np.random.default_rng(seed)
    gs = rng.permutation(n_gallery) + 1000
    ps = rng.integers(0, n_gallery, n_probe) + 1000
    row = np.full(dim, 1 / np.sqrt(dim), np.float32) if kind == "identical" else np.zeros(dim, np.float32)
    return np.tile(row, (n_probe, 1)), ps, np.tile(row, (n_gallery, 1)), gs


@pytest.mark.parametrize("kind", ["identical", "zero"])
def test_collapsed_model_ranks_every_mate_last(kind):
    """Issue: a collapsed model scored rank1/5/10 = 1.0 (ties went to the mate). Every score ties, so
    with ties against the mate each mate has all G - 1 non-mates ahead of it: rank-k = 0 for k < G and
    1 for k >= G (G = 50). Zero features are not an error (a zero template is legitimate, e.g. CR-FIQA
    weighting with q' = 0): they score 0 with everything and give the same result as identical ones."""
    pf, ps, gf, gs = collapsed_set(kind)
    g = gs.size
    ks = (1, 5, 10, g - 1, g, g + 10)
    by_hand = {f"rank{k}": float(k >= g) for k in ks}  # every mate at 0-based rank G - 1
    assert by_hand["rank1"] == by_hand["rank5"] == by_hand["rank10"] == 0.0
    got = I.identify(pf, ps, gf, gs, ranks=ks, fpirs=(1e-2, 1e-1), gallery_split=np.arange(g) % 2)
    assert {k: got[k] for k in by_hand} == by_hand
    mask = np.array([int(np.flatnonzero(gs == s)[0]) for s in ps])
    assert ties_against_mate_loop(pf @ gf.T, mask, ks) == by_hand  # the rule, transcribed independently
    # the thresholded rates compare mate > threshold strictly: a tie with the threshold fails too
    assert all(got[k] == 0.0 for k in got if k.startswith("tpir"))
    curves = I.identify(pf, ps, gf, gs, return_curves=True)["curves"]["cmc"]["1:N"]
    np.testing.assert_array_equal(curves[1], (curves[0] >= g).astype(float))


@pytest.mark.parametrize("kind", ["identical", "zero"])
def test_collapsed_model_through_the_protocol(kind):
    """The whole IJB protocol on a collapsed model's raw image embeddings (constant or zero): templates
    are all equal (or all zero) and rank1/5/10 = 0 (gallery of 8 templates)."""
    f, tid, mid, q, face = toy_set(3, n_templates=24)
    f = np.ones_like(f) * 3.0 if kind == "identical" else np.zeros_like(f)
    ids = np.unique(tid)
    gal, prb = ids[::3], np.setdiff1d(ids, ids[::3])
    subj = np.arange(ids.size) % gal.size
    m = protocols.ijb(embeddings=f, qualities=q, template_ids=tid, media_ids=mid, faceness=face,
                      gallery_templates=gal, gallery_subjects=subj[::3], probe_templates=prb,
                      probe_subjects=subj[np.searchsorted(ids, prb)], set_name="ijbc")  # fmt: skip
    assert (m["rank1"], m["rank5"], m["rank10"]) == (0.0, 0.0, 1.0)  # G = 8: rank10 >= G finds every mate


def test_one_tie_by_hand():
    """Gallery: three subjects on the axes of R^3. Probe A (subject 10) scores (0.6, 0.8, 0): mate 0.6
    behind 0.8, 0-based rank 1. Probe B (subject 11) scores (s, s, 0), s = 1/sqrt(2) exactly tied with
    the non-mate 0: rank 1 (it was 0 when the tie went to the mate). Probe C (subject 12) is on its
    mate's axis: rank 0. So rank1 = 1/3 (was 2/3), rank2 = rank3 = 1.

    insightface's TPIR@FPIR 0.34: k = ceil(3 * 0.34) = 2, the non-mate sims sorted 0.8, s, 0, 0, 0, 0,
    th = s; mate_sim > th holds for C only (B's mate equals th): 1/3. NIST (one split, closed:
    leave-mate-out): tops 0.8 (A), s (B), 0 (C); FPIR 0.34 allows floor(1.02) = 1 above T, so T = s;
    rank 0 and mate > T: C only, 1/3. FPIR 1: T = -inf, rank 0: C only, 1/3."""
    s = np.float32(1 / np.sqrt(2))
    gf = np.eye(3, dtype=np.float32)
    gs = np.array([10, 11, 12])
    pf = np.array([[0.6, 0.8, 0], [s, s, 0], [0, 0, 1]], np.float32)
    ps = np.array([10, 11, 12])
    sim = pf @ gf.T
    assert sim[1, 0] == sim[1, 1]  # the tie is exact
    got = I.identify(pf, ps, gf, gs, ranks=(1, 2, 3), fpirs=(0.34, 1.0))
    assert got["rank1"] == pytest.approx(1 / 3) and got["rank2"] == 1.0 and got["rank3"] == 1.0
    assert got["tpir@fpir3.4e-1"] == pytest.approx(1 / 3)
    assert got["tpir_nist@fpir3.4e-1"] == pytest.approx(1 / 3) and got["tpir_nist@fpir1e0"] == pytest.approx(1 / 3)
    assert ties_against_mate_loop(sim, [0, 1, 2], (1, 2, 3)) == pytest.approx(
        {k: got[k] for k in ("rank1", "rank2", "rank3")}
    )
    # NIST at rank 2: B's tied mate is now within the top 2 (T = -inf at FPIR 1): A, B and C
    assert I.identify(pf, ps, gf, gs, fpirs=(1.0,), nist_rank=2)["tpir_nist@fpir1e0"] == 1.0


def test_non_finite_features_are_an_error_naming_the_set():
    pf, ps, gf, gs = one_to_n_set(4, n_subj=10, n_probe=50)
    bad = pf.copy()
    bad[[3, 7, 9]] = np.nan
    with pytest.raises(ValueError, match=r"^ijbc: 3 of 50 1:N probe template features are NaN or inf"):
        I.identify(bad, ps, gf, gs, name="ijbc")
    bad_g = gf.copy()
    bad_g[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"^IJB: 1 of 10 1:N gallery template features are NaN or inf"):
        I.identify(pf, ps, bad_g, gs)  # default name
    # a zero feature divided by its zero norm (a collapsed model, normalised without an epsilon)
    raw = np.r_[pf[:49], np.zeros((1, pf.shape[1]), np.float32)]
    with np.errstate(invalid="ignore"):
        nan_unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    with pytest.raises(ValueError, match=r"ijbb: 1 of 50 .* collapsed one whose zero features were divided by"):
        I.identify(nan_unit, ps, gf, gs, name="ijbb")
    # raw image embeddings through the protocol: counted before aggregation, named by set_name
    f, tid, mid, q, face = toy_set(5, n_templates=12)
    f[[0, 5]] = np.nan
    f[8, 1] = -np.inf
    ids = np.unique(tid)
    kw = dict(template_ids=tid, media_ids=mid, faceness=face, gallery_templates=ids[:4],
              gallery_subjects=np.arange(4), probe_templates=ids[4:], probe_subjects=np.arange(8) % 4)  # fmt: skip
    with pytest.raises(ValueError, match=rf"^ijbc: 3 of {tid.size} image embeddings are NaN or inf"):
        protocols.ijb(embeddings=f, qualities=q, **kw, set_name="ijbc")
    with pytest.raises(ValueError, match=r"^IJB: 3 of .* image embeddings"):
        I.aggregate(f, tid, mid, chunk_images=4)  # counted over every chunk
    # templates given to verify directly
    t = I.aggregate(np.nan_to_num(f), tid, mid)
    t_bad = I.Templates(t.ids, np.where(np.arange(t.ids.size)[:, None] == 1, np.nan, t.features), t.quality)
    pairs = np.stack([ids[:6], ids[6:]], 1)
    with pytest.raises(ValueError, match=r"^ijbb: 1 of 12 template features are NaN or inf"):
        I.verify(t_bad, pairs, np.arange(6) % 2, name="ijbb")


def test_non_finite_embeddings_skip_the_protocol_in_evaluate_set(caplog):
    """Through the training loop's evaluate_set: the set's name reaches the error (set_name), the
    protocol is skipped with a warning and no rank metric is logged (W&B's max stays clean)."""
    import logging

    from fiqa.eval.sets import evaluate_set

    f, tid, mid, q, face = toy_set(6, n_templates=12)
    f[2] = np.nan
    ids = np.unique(tid)
    targets = dict(template_ids=tid, media_ids=mid, faceness=face, gallery_templates=ids[:4],
                   gallery_subjects=np.arange(4), probe_templates=ids[4:], probe_subjects=np.arange(8) % 4,
                   n_images=tid.size)  # fmt: skip
    res = {"indices": np.arange(tid.size), "embeddings": f, "qualities": q.astype(np.float32)}
    with caplog.at_level(logging.WARNING):
        metrics = evaluate_set("ijbc", res, targets, {"ijb": protocols.ijb})
    assert metrics == {}
    assert f"ijbc: 1 of {tid.size} image embeddings are NaN or inf" in caplog.text


# ---- the protocol -----------------------------------------------------------------------------------
def test_protocol_names_and_errors():
    f, tid, mid, q, face = toy_set(2, n_templates=24)
    ids = np.unique(tid)
    subj = np.arange(ids.size) // 3
    f = f + 30 * np.eye(8, dtype=np.float32)[subj[np.searchsorted(ids, tid)] % 8]
    pairs = np.array([(a, b) for a in ids[::3] for b in ids if b != a])
    labels = (subj[np.searchsorted(ids, pairs[:, 0])] == subj[np.searchsorted(ids, pairs[:, 1])]).astype(np.int8)
    gal, prb = ids[::3], np.setdiff1d(ids, ids[::3])
    kw = dict(template_ids=tid, media_ids=mid, faceness=face, pairs=pairs, pair_labels=labels,
              gallery_templates=gal, gallery_subjects=subj[::3], gallery_split=np.arange(gal.size) % 2,
              probe_templates=prb, probe_subjects=subj[np.searchsorted(ids, prb)], n_images=tid.size)  # fmt: skip
    m = protocols.ijb(embeddings=f, qualities=q, **kw, issame_unused=None)
    expected = {"tar@far1e-4", "tar_strict@far1e-4", "tar@far1e-1", "roc_auc", "rank1", "rank5", "rank10",
                "tpir@fpir1e-2", "tpir_nist@fpir1e-2", "tpir@fpir1e-1", "erc_auc_fmr1e-3"}  # fmt: skip
    assert expected <= set(m) and all(isinstance(v, float) for v in m.values())
    assert m["rank1"] == 1.0 and m["roc_auc"] > 0.99
    m2 = protocols.ijb(embeddings=f, qualities=q, **{**kw, "gallery_templates": None}, erc_fmrs=[])
    assert "rank1" not in m2 and not any(k.startswith("erc") for k in m2)
    with pytest.raises(ValueError, match=r"every image of the set embedded: 10 embeddings for"):
        protocols.ijb(embeddings=f[:10], qualities=q[:10], **kw)
    with pytest.raises(ValueError, match=r"template pairs \(column 2\): template 999999 .* no image"):
        protocols.ijb(embeddings=f, qualities=q, **{**kw, "pairs": np.r_[pairs, [[ids[0], 999999]]],
                      "pair_labels": np.r_[labels, [0]]})  # fmt: skip
    with pytest.raises(ValueError, match="weighting must be one of"):
        protocols.ijb(embeddings=f, qualities=q, **kw, weighting="mean")
    with pytest.raises(ValueError, match=r"'eqface' \(QWFA\) needs qualities >= 0"):
        protocols.ijb(embeddings=f, qualities=q - 2, **kw, weighting="eqface")
    with pytest.raises(ValueError, match="score='qmagface' needs templates aggregated with weighting='qmagface'"):
        protocols.ijb(embeddings=f, qualities=q, **kw, score="qmagface")
    with pytest.raises(ValueError, match="needs the per-image qualities"):
        I.aggregate(f, tid, mid, weighting="crfiqa")
    with pytest.raises(ValueError, match="detector_score=True needs"):
        I.aggregate(f, tid, mid, detector_score=True)


def test_ijb_runs_with_torch_unimportable():
    code = """
        import sys, importlib.abc
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from fiqa.eval import protocols
        rng = np.random.default_rng(0)
        tid = np.repeat(np.arange(20), 3); mid = np.arange(60) // 2
        pairs = np.stack([np.arange(20), (np.arange(20) + 1) % 20], 1); pairs = np.r_[pairs, pairs[:, ::-1]]
        m = protocols.ijb(embeddings=rng.standard_normal((60, 8)), qualities=rng.random(60), template_ids=tid,
                          media_ids=mid, pairs=pairs, pair_labels=np.arange(40) % 2, faceness=rng.random(60),
                          weighting="qmagface", score="qmagface", qmagface={"preset": "magface100"})
        assert "tar@far1e-1" in m and "torch" not in sys.modules
    """
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_template_rows_lookup_table_and_search_agree():
    ids = np.array([3, 10, 11, 400])
    q = np.array([[400, 3], [11, 10]])
    np.testing.assert_array_equal(I.template_rows(ids, q), [[3, 0], [2, 1]])
    sparse = ids * 10**9  # too sparse for a table: binary search
    np.testing.assert_array_equal(I.template_rows(sparse, q * 10**9), [[3, 0], [2, 1]])
    for table in (ids, sparse):
        with pytest.raises(ValueError, match=r"1:N probes: template 5 \(and 1 more\) has no image"):
            I.template_rows(table, [5, table[0], 7], "1:N probes")
