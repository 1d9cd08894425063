import numpy as np
import pytest
import torch

from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.eval.sets import evaluate_set
from fiqa.methods.base import param_groups, scaled_lr


def test_scaled_lr():
    assert scaled_lr(0.1, 512, 512) == pytest.approx(0.1)
    assert scaled_lr(0.1, 128, 512) == pytest.approx(0.025)
    assert scaled_lr(0.1, 128, None) == pytest.approx(0.1)


def test_no_weight_decay_on_bn_and_bias():
    net = iresnet_tiny(embedding_dim=8)
    groups = param_groups({"backbone": net}, 5e-4, no_decay_bn=True)
    decay, no_decay = groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    ids = {id(p) for p in no_decay["params"]}
    assert id(net.bn1.weight) in ids and id(net.fc.bias) in ids and id(net.fc.weight) not in ids
    assert len(param_groups({"b": net}, 5e-4, no_decay_bn=False)) == 1


def test_evaluate_set_keeps_only_complete_pairs():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 4)).astype(np.float32)
    seen = np.array([i for i in range(40) if i not in (3, 10)])  # pairs 1 and 5 are incomplete
    res = {"indices": seen, "embeddings": emb[seen], "qualities": np.arange(40, dtype=np.float32)[seen]}
    got = {}

    def protocol(embeddings, qualities, issame, degradation, **_):
        got.update(n=len(embeddings), p=len(issame), d=len(degradation), q=qualities.copy())
        return {"x": 1.0}

    targets = {"issame": np.arange(20) % 2 == 0, "degradation": np.linspace(0, 1, 40)}
    assert evaluate_set("t", res, targets, {"p": protocol}) == {"x": 1.0}
    assert got["n"] == 36 and got["p"] == 18 and got["d"] == 36
    assert 2 not in got["q"] and 11 not in got["q"]  # the partners of the missing images are dropped too


def test_evaluate_set_skips_failing_protocol_with_warning():
    res = {"indices": np.arange(4), "embeddings": np.ones((4, 2), np.float32), "qualities": np.ones(4, np.float32)}

    def bad(**_):
        raise ValueError("too few pairs")

    assert evaluate_set("t", res, {"issame": np.array([True, False])}, {"bad": bad}) == {}


def test_forward_returns_face_output():
    from fiqa.heads.fc import ArcFaceHead
    from fiqa.methods.arcface import ArcFace

    m = ArcFace(backbone=iresnet_tiny(embedding_dim=8), head=ArcFaceHead(3, 8)).eval()
    out = m(torch.randn(2, 3, 112, 112))
    assert out.embedding.shape == (2, 8)
    assert torch.allclose(out.quality, out.embedding.norm(dim=1))
