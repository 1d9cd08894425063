"""val.<set>.score=qmagface switches the verification protocols to QMagFace's fused score;
method=qmagface fits alpha, beta on training images and keeps them in the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiqa.eval import protocols as P
from fiqa.eval import verification as V
from fiqa.eval.sets import evaluate_set, qmagface_pair_scores
from tests.helpers.run_main import TINY, TINY_VAL, read_metrics, run_main


def _pairs(seed=0, n=400, d=16):
    rng = np.random.default_rng(seed)
    issame = np.arange(n) % 2 == 0
    a = rng.standard_normal((n, d))
    b = np.where(issame[:, None], a + 1.1 * rng.standard_normal((n, d)), rng.standard_normal((n, d)))
    emb = np.empty((2 * n, d))
    emb[0::2], emb[1::2] = a, b
    q = rng.uniform(10, 40, 2 * n)
    return emb, q, issame


def test_fused_score_by_hand():
    emb = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [-1.0, 0.0]])
    q = np.array([20.0, 30.0, 25.0, 10.0])
    s = qmagface_pair_scores(emb, q, alpha=0.1, beta=0.2)
    # pair 0: cos 0.6, min(0, 0.2*0.6 - 0.1) = 0 -> 0.6; pair 1: cos -1, min(0, -0.3) * 10 + (-1) = -4
    np.testing.assert_allclose(s, [0.6, -4.0])


def test_score_cosine_and_zero_alpha_beta_equal_the_plain_protocol():
    emb, q, issame = _pairs()
    protocols = {"v": P.verification, "r": P.reject_fnmr}
    res = {"indices": np.arange(len(q)), "embeddings": emb, "qualities": q}
    plain = evaluate_set("x", res, {"issame": issame}, protocols)
    zero = evaluate_set("x", res, {"issame": issame}, protocols, lambda e, qq: qmagface_pair_scores(e, qq, 0.0, 0.0))
    for k in ("acc", "acc_std", "val@far1e-3", "fnmr@fmr1e-2", "fnmr@fmr1e-2_reject0.2"):
        assert zero[k] == pytest.approx(plain[k], abs=1e-9), k
    fused = evaluate_set("x", res, {"issame": issame}, protocols, lambda e, qq: qmagface_pair_scores(e, qq, 0.3, 0.5))
    assert fused != plain  # the switch reaches the protocols
    sim = qmagface_pair_scores(emb, q, 0.3, 0.5)
    assert fused["acc"] == pytest.approx(V.evaluate_similarity(sim, issame)["acc"])


@pytest.mark.slow  # CI time: runs in make test-full
def test_method_qmagface_fits_alpha_beta_and_eval_reuses_them(tmp_path):
    run = tmp_path / "run"
    run_main("method=qmagface", "method.fit_images=128", *TINY, *TINY_VAL, f"hydra.run.dir={run}")
    m = read_metrics(run)
    assert "val/synth/acc" in m
    sd = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    alpha, beta = float(sd["alpha"]), float(sd["beta"])
    assert np.isfinite(alpha) and np.isfinite(beta) and (alpha, beta) != (0.0, 0.0)
    run_main("task=eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *TINY_VAL, "trainer=cpu",
             "data.num_workers=0", "callbacks.progress=null", f"hydra.run.dir={tmp_path / 'e'}")  # fmt: skip
    e = read_metrics(tmp_path / "e")
    assert e["val/synth/acc"] == pytest.approx(m["val/synth/acc"], abs=1e-6)


def test_bad_score_name_is_named():
    from fiqa.backbones.iresnet import iresnet_tiny
    from fiqa.methods.arcface import ArcFace

    m = ArcFace(iresnet_tiny(embedding_dim=8), val_sets={"lfw": {"score": "euclid"}})
    with pytest.raises(ValueError, match=r"val.lfw.score='euclid'"):
        m.pair_similarity("lfw", np.zeros((4, 8)), np.ones(4))


def test_val_set_score_switch_from_the_config(tmp_path):
    from fiqa.tasks import build as B
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["val.synth.score=qmagface", "val.synth.qmagface.alpha=0.1", "val.synth.qmagface.beta=0.2",
                       "val.synth.dataset.num_pairs=20"], tmp_path)  # fmt: skip
    _, view = B.build_val(cfg)
    method = B.build_method(cfg, view)
    emb, q, _ = _pairs(n=10)
    np.testing.assert_allclose(method.pair_similarity("synth", emb, q), qmagface_pair_scores(emb, q, 0.1, 0.2))
    cfg = compose_cfg(["val.synth.score=qmagface", "val.synth.dataset.num_pairs=20"], tmp_path)  # the preset
    _, view = B.build_val(cfg)
    np.testing.assert_allclose(
        B.build_method(cfg, view).pair_similarity("synth", emb, q), qmagface_pair_scores(emb, q, preset="magface100")
    )
    assert (
        B.build_method(compose_cfg(["val.synth.dataset.num_pairs=20"], tmp_path), view).pair_similarity("nope", emb, q)
        is None
    )
