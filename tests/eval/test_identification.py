"""1:N identification (fiqa.eval.identification) and the TinyFace / SCface protocols (fiqa.eval.protocols_lq):
against a plain loop transcription of DIR_FAR's rules, hand-worked examples, and errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fiqa.eval import identification as idn
from fiqa.eval import protocols_lq

SRC = Path(__file__).resolve().parents[2] / "src"


# ---- a straightforward transcription of DIR_FAR's rules (spec: data_and_eval.md §4.1) ----------------
def dir_far_loop(score_mat, label_mat, ranks, fars):
    """Row-by-row: sort each row descending (argsort, reversed), rank-k = any mate in the first k, over
    the probes with a mate; open set: threshold = round(n_nm * FAR)-th highest max score of the
    non-mated probes (FAR 0: highest + 1e-5), success also needs the mate's score >= threshold."""
    mated_rows = [i for i in range(len(score_mat)) if any(label_mat[i])]
    nonmated_rows = [i for i in range(len(score_mat)) if not any(label_mat[i])]
    closed = len(fars) == 1 and fars[0] >= 1.0
    if closed:
        thresholds = [min(min(row) for row in score_mat) - 1e-10]
    else:
        nm_max = sorted((max(score_mat[i]) for i in nonmated_rows), reverse=True)
        thresholds = []
        for far in fars:
            k = int(np.round(len(nm_max) * far))
            thresholds.append(nm_max[0] + 1e-5 if k == 0 else nm_max[k - 1])
    dirs = np.zeros((len(fars), len(ranks)))
    for a, th in enumerate(thresholds):
        for b, rank in enumerate(ranks):
            hits = 0
            for i in mated_rows:
                order = list(np.argsort(score_mat[i]))[::-1]
                top = [label_mat[i][j] for j in order[:rank]]
                gt = max(score_mat[i][j] for j in range(len(score_mat[i])) if label_mat[i][j])
                hits += bool(any(top)) and (closed or gt >= th)
            dirs[a, b] = hits / len(mated_rows)
    return dirs


def _random_case(rng, n_probe, n_gallery, n_ids, single_mate=False, unmated=0):
    g_labels = rng.permutation(n_ids)[:n_gallery] if single_mate else rng.integers(0, n_ids, n_gallery)
    p_labels = rng.choice(g_labels, n_probe)
    p_labels[:unmated] = n_ids + np.arange(unmated)  # identities with no gallery image
    scores = rng.standard_normal((n_probe, n_gallery)) + 2.0 * (p_labels[:, None] == g_labels[None, :])
    return scores, p_labels[:, None] == g_labels[None, :]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_closed_set_cmc_equals_the_loop_transcription(seed):
    rng = np.random.default_rng(seed)
    scores, label_mat = _random_case(rng, 60, 90, 40, unmated=7)
    ranks = [1, 2, 5, 20]
    expected = dir_far_loop(scores, label_mat, ranks, [1.0])
    dirs, far, th = idn.dir_far(scores, label_mat, ranks, [1.0])
    np.testing.assert_allclose(dirs, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(idn.cmc(idn.search_scores(scores, label_mat).rank, ranks), expected[0], atol=1e-12)
    assert far.tolist() == [1.0] and th.tolist() == [-np.inf]


@pytest.mark.parametrize("seed", [21, 22])
def test_open_set_dir_equals_the_loop_transcription(seed):
    rng = np.random.default_rng(seed)
    scores, label_mat = _random_case(rng, 80, 50, 200, single_mate=True, unmated=30)
    fars, ranks = [0.0, 0.01, 0.1, 0.25, 0.5, 1.0], [1, 5]
    expected = dir_far_loop(scores, label_mat, ranks, fars)
    dirs, achieved, th = idn.dir_far(scores, label_mat, ranks, fars)
    np.testing.assert_allclose(dirs, expected, rtol=0, atol=1e-12)
    nm_max = scores[~label_mat.any(1)].max(1)
    np.testing.assert_allclose(achieved, [(nm_max >= t).mean() for t in th], atol=1e-12)
    assert achieved[0] == 0.0 and achieved[-1] == 1.0


def test_search_in_chunks_equals_the_full_score_matrix():
    rng = np.random.default_rng(3)
    p, g = rng.standard_normal((23, 6)), rng.standard_normal((17, 6))
    pl, gl = rng.integers(0, 8, 23), rng.integers(0, 8, 17)
    gl[:3] = idn.DISTRACTOR
    full = idn.search_scores(p @ g.T, (pl[:, None] == gl[None, :]) & (gl != idn.DISTRACTOR))
    for chunk in (1, 17, 40, 10**9):
        s = idn.search(p, g, pl, gl, chunk_elements=chunk)
        np.testing.assert_array_equal(s.rank, full.rank)
        for f in ("mate_score", "nonmate_max"):  # BLAS may sum a row block in another order: 1 ulp
            np.testing.assert_allclose(getattr(s, f), getattr(full, f), rtol=0, atol=1e-12)


def test_hand_worked_ranks_and_cmc():
    # gallery labels:        a  b  a  c
    scores = np.array([[0.9, 0.8, 0.1, 0.2],  # probe a: best mate 0.9 -> rank 1
                       [0.9, 0.3, 0.5, 0.8],  # probe b: mate 0.3 below 0.9, 0.8, 0.5 -> rank 4
                       [0.1, 0.7, 0.6, 0.2],  # probe a: best mate 0.6, behind 0.7 -> rank 2
                       [0.5, 0.6, 0.7, 0.8]])  # probe d: no mate  # fmt: skip
    g, p = np.array(list("abac")), np.array(list("abad"))
    s = idn.search_scores(scores, p[:, None] == g[None, :])
    assert s.rank.tolist() == [1, 4, 2, math.inf]
    assert s.mate_score.tolist() == [0.9, 0.3, 0.6, -math.inf]
    assert s.nonmate_max.tolist() == [0.8, 0.9, 0.7, 0.8]
    np.testing.assert_allclose(idn.cmc(s.rank, [1, 2, 3, 4]), [1 / 3, 2 / 3, 2 / 3, 1.0])
    # open set from the one non-mated probe (max 0.8): FAR 1 in a list -> threshold 0.8; only probe 0 passes
    dirs, achieved, th = idn.dir_at_far(s, [0.0, 1.0], [1, 4])
    np.testing.assert_allclose(th, [0.8 + 1e-5, 0.8])
    np.testing.assert_allclose(dirs, [[1 / 3, 1 / 3], [1 / 3, 1 / 3]])
    assert achieved.tolist() == [0.0, 1.0]
    # mate-removed: thresholds from all four probes' best non-mates 0.9, 0.8, 0.8, 0.7
    dirs, achieved, th = idn.dir_at_far(s, [0.25, 0.5], [4], nonmated="mate_removed")
    np.testing.assert_allclose(th, [0.9, 0.8])
    np.testing.assert_allclose(dirs[:, 0], [1 / 3, 1 / 3])
    np.testing.assert_allclose(achieved, [0.25, 0.75])


def test_ties_count_against_the_probe():
    s = idn.search_scores(np.zeros((2, 5)), np.eye(2, 5, dtype=bool))
    assert s.rank.tolist() == [5, 5]
    # a collapsed model (all embeddings equal) gets rank-1 = 0, not 1
    emb = np.ones((6, 4))
    out = protocols_lq.tinyface(emb, np.ones(6), np.array([1, 2, 1, 2, -100, -100]), np.arange(6) < 2)
    assert out["rank1"] == 0.0 and out["rank20"] == 1.0


def test_collapsed_model_ranks_every_mate_last():
    """Every feature identical (or zero): every score ties, each mate has the G - 1 non-mates ahead of it,
    so rank-k = 0 for k < G and 1 for k >= G (G = 50 single-mate gallery, 200 probes), by hand and by a
    direct transcription of "rank = 1 + #{non-mates with score >= the best mate's}". Zero features are
    not an error: L2-normalised they stay zero and tie everywhere, the same result."""
    rng = np.random.default_rng(3)
    g_labels = rng.permutation(50)
    p_labels = rng.integers(0, 50, 200)
    ks = (1, 5, 10, 49, 50, 60)
    by_hand = [float(k >= 50) for k in ks]
    for row in (np.full(8, 0.25), np.zeros(8)):
        s = idn.search(np.tile(row, (200, 1)), np.tile(row, (50, 1)), p_labels, g_labels)
        assert s.rank.tolist() == [50.0] * 200
        assert idn.cmc(s.rank, ks).tolist() == by_hand
        scores = np.tile(row, (200, 1)) @ np.tile(row, (50, 1)).T
        mates = p_labels[:, None] == g_labels[None, :]
        loop = [1 + sum(1 for j in range(50) if not mates[i, j] and scores[i, j] >= scores[i, mates[i]].max())
                for i in range(200)]  # fmt: skip
        assert [np.mean(np.array(loop) <= k) for k in ks] == by_hand
    out = protocols_lq.tinyface(np.zeros((6, 4)), np.ones(6), np.array([1, 2, 1, 2, -100, -100]), np.arange(6) < 2)
    assert out["rank1"] == 0.0 and out["rank5"] == 1.0  # gallery of 4: rank 4 for both probes


def test_one_tie_by_hand():
    """Probe 0: its mate (column 1) ties with the non-mate column 0 -> rank 2 (1 if ties went to the mate).
    Probe 1: two mates tied with each other at 0.9, no non-mate at or above -> rank 1 (a tie between
    mates is no loss). Probe 2: its mate ties with both non-mates -> rank 3."""
    scores = np.array([[0.5, 0.5, 0.2], [0.3, 0.9, 0.9], [0.7, 0.7, 0.7]])
    mates = np.array([[0, 1, 0], [0, 1, 1], [1, 0, 0]], bool)
    s = idn.search_scores(scores, mates)
    assert s.rank.tolist() == [2.0, 1.0, 3.0]
    np.testing.assert_allclose(idn.cmc(s.rank, [1, 2, 3]), [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(dir_far_loop(scores[[1]], mates[[1]], [1], [1.0]), [[1.0]])


def test_non_finite_features_name_the_set():
    emb, labels, is_probe = _toy_set()
    emb = emb.copy()
    emb[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"^tinyface: features contain NaN or inf: 1 of 3 probe and 0 of 4 gallery"):
        protocols_lq.tinyface(emb, np.ones(7), labels, is_probe)
    emb[5] = np.inf  # L2-normalised: inf / inf = NaN
    with np.errstate(invalid="ignore"), pytest.raises(ValueError, match=r"^scface_val: .*: 1 of 3 probe and 1 of 4"):
        protocols_lq.scface(emb, np.ones(7), labels, is_probe, np.ones(7), set_name="scface_val")
    with pytest.raises(ValueError, match=r"^x: scores contain NaN or inf in 2 of 3 probe rows"):
        idn.search_scores(np.array([[np.nan, 1], [0, 1], [0, -np.inf]]), np.eye(3, 2, dtype=bool), name="x")
    # a zero embedding divided by its zero norm: NaN, and the message says what that may mean
    with np.errstate(invalid="ignore"):
        unit = np.zeros((1, 3)) / np.zeros((1, 1))
    with pytest.raises(ValueError, match="collapsed one whose zero features were divided by their zero norm"):
        idn.search(unit, np.eye(3), [0], [0, 1, 2], name="tinyface")


def test_distractors_are_never_mates():
    p, g = np.eye(2), np.array([[1.0, 0.0], [0.0, 1.0]])
    s = idn.search(p, g, [idn.DISTRACTOR, 1], [idn.DISTRACTOR, 1])
    assert s.rank.tolist() == [math.inf, 1]


def test_open_set_thresholds_by_hand():
    nm = [0.1, 0.9, 0.5, 0.3]  # sorted: 0.9 0.5 0.3 0.1
    np.testing.assert_allclose(
        idn.open_set_thresholds(nm, [0.0, 0.25, 0.5, 0.75, 1.0]), [0.9 + 1e-5, 0.9, 0.5, 0.3, 0.1]
    )
    # round(n * FAR) rounds half to even, as np.round: 4 * 0.125 = 0.5 -> 0 false alarms, 4 * 0.375 = 1.5 -> 2
    np.testing.assert_allclose(idn.open_set_thresholds(nm, [0.125, 0.375]), [0.9 + 1e-5, 0.5])


def test_cmc_after_reject_by_hand():
    rank = np.array([1, 3, 1, math.inf, 2, 1])
    q = np.array([0.9, 0.1, 0.5, 0.0, 0.2, 0.2])
    # 5 mated probes -> floor(0.4 * 5) = 2 rejected: q 0.1 (rank 3) and the first q 0.2 (rank 2); left 1, 1, 1
    assert idn.cmc_after_reject(rank, q, 0.4).tolist() == [1.0]
    assert idn.cmc_after_reject(rank, q, 0.2).tolist() == [0.75]  # floor(1.0) = 1: the rank-3 probe
    assert idn.cmc_after_reject(rank, q, 0.0, (1, 3)).tolist() == [0.6, 1.0]


def test_errors_name_the_problem():
    ok = np.ones((2, 3), bool)
    with pytest.raises(ValueError, match="NaN or inf"):
        idn.search_scores(np.full((2, 3), np.nan), ok)
    with pytest.raises(ValueError, match="one shape"):
        idn.search_scores(np.zeros((2, 3)), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="gallery is empty"):
        idn.search(np.zeros((2, 3)), np.zeros((0, 3)), [0, 1], [])
    with pytest.raises(ValueError, match="no probe has a mate"):
        idn.cmc(np.array([math.inf, math.inf]))
    with pytest.raises(ValueError, match="reject must be in"):
        idn.cmc_after_reject(np.ones(3), np.ones(3), 1.0)
    with pytest.raises(ValueError, match="one quality per probe"):
        idn.cmc_after_reject(np.ones(3), np.ones(2), 0.5)
    with pytest.raises(ValueError, match="a FAR must be in"):
        idn.open_set_thresholds([0.5], [1.5])
    with pytest.raises(ValueError, match="at least one non-mated search"):
        idn.dir_far(np.eye(2), np.eye(2, dtype=bool), fars=[0.1])
    with pytest.raises(ValueError, match="nonmated='x' is not valid"):
        idn.dir_far(np.eye(2), np.eye(2, dtype=bool), fars=[0.1, 0.2], nonmated="x")
    with pytest.raises(ValueError, match="features contain NaN"):
        idn.search(np.full((1, 2), np.nan), np.ones((1, 2)), [0], [0])


# ---- protocols -----------------------------------------------------------------------------------
def _toy_set():
    """3 identities on the axes of R^4; the gallery has one mugshot each plus a distractor on axis 3.
    Probes: id0 exact, id1 tilted towards id2 (rank 2), id2 tilted towards the distractor (rank 2 in
    TinyFace; rank 1 in SCface, which has no distractor)."""
    g = np.eye(4)
    probes = np.array([[1.0, 0, 0, 0], [0, 0.6, 0.8, 0], [0, 0, 0.6, 0.8]])
    emb = np.vstack([probes * 3.0, g])  # raw scale is irrelevant: features are normalised
    labels = np.array([0, 1, 2, 0, 1, 2, -100])
    is_probe = np.arange(7) < 3
    return emb, labels, is_probe


def test_tinyface_protocol_by_hand():
    emb, labels, is_probe = _toy_set()
    q = np.array([0.9, 0.1, 0.5, 1, 1, 1, 1])
    out = protocols_lq.tinyface(emb, q, labels, is_probe, ranks=(1, 2), fars=(0.5,), reject=0.34)
    assert out["rank1"] == pytest.approx(1 / 3) and out["rank2"] == 1.0
    # floor(0.34 * 3) = 1 rejected: the q=0.1 probe (rank 2); left ranks 1, 2
    assert out["rank1_reject0.34"] == pytest.approx(0.5)
    # mate-removed non-mate maxima 0.8, 0.8, 0.8 (rounded 3*0.5 = 2 -> 2nd highest 0.8); probe 0 passes only
    assert out["dir@far5e-1"] == pytest.approx(1 / 3)
    default = protocols_lq.tinyface(emb, q, labels, is_probe)
    assert set(default) == {"rank1", "rank5", "rank20", "rank1_reject0.2"}


def test_scface_protocol_by_hand():
    emb, labels, is_probe = _toy_set()
    emb, labels, is_probe = emb[:6], labels[:6], is_probe[:6]  # no distractor
    distance = np.array([1, 1, 3, 0, 0, 0])
    q = np.array([0.2, 0.1, 0.9, 1, 1, 1])
    out = protocols_lq.scface(emb, q, labels, is_probe, distance)
    assert out == pytest.approx({"rank1_d1": 0.5, "rank1_d3": 1.0, "rank1": 2 / 3, "rank1_reject0.2": 2 / 3})
    out = protocols_lq.scface(emb, q, labels, is_probe, distance, ranks=(1, 2), reject=0.5)
    assert out["rank2_d1"] == 1.0 and out["rank1_reject0.5"] == 1.0  # floor(1.5) = 1: the missed probe goes


def test_protocols_refuse_a_partial_set_and_tolerate_nan_quality():
    emb, labels, is_probe = _toy_set()
    with pytest.raises(ValueError, match="needs the whole set embedded"):
        protocols_lq.tinyface(emb[:5], np.ones(5), labels, is_probe)
    with pytest.raises(ValueError, match="needs probes and gallery"):
        protocols_lq.tinyface(emb, np.ones(7), labels, np.zeros(7, bool))
    out = protocols_lq.tinyface(emb, np.full(7, np.nan), labels, is_probe)
    assert math.isnan(out["rank1_reject0.2"]) and out["rank1"] == pytest.approx(1 / 3)


def test_protocols_run_through_evaluate_set():
    from fiqa.eval.sets import evaluate_set

    emb, labels, is_probe = _toy_set()
    res = {"indices": np.arange(7), "embeddings": emb.astype(np.float32), "qualities": np.ones(7, np.float32)}
    targets = {"labels": labels, "is_probe": is_probe}
    protocols = {"identification": protocols_lq.tinyface}
    assert evaluate_set("tinyface", res, targets, protocols)["rank1"] == pytest.approx(1 / 3)
    part = {k: v[:5] for k, v in res.items()}  # a limit_val_batches run: skipped with a warning, no crash
    assert evaluate_set("tinyface", part, targets, protocols) == {}


def test_evaluate_set_names_the_set_of_nan_embeddings(caplog):
    import logging

    from fiqa.eval.sets import evaluate_set

    emb, labels, is_probe = _toy_set()
    emb = emb.astype(np.float32)
    emb[0] = np.nan
    res = {"indices": np.arange(7), "embeddings": emb, "qualities": np.ones(7, np.float32)}
    with caplog.at_level(logging.WARNING):
        out = evaluate_set("tinyface_x", res, {"labels": labels, "is_probe": is_probe}, {"id": protocols_lq.tinyface})
    assert out == {}  # skipped: no rank metric reaches the logger
    assert "tinyface_x: features contain NaN or inf: 1 of 3 probe" in caplog.text


def test_identification_imports_no_torch():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = """
        import sys
        import fiqa.eval.identification, fiqa.eval.protocols_lq
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
