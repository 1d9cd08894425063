"""EQFace head and loss against an independent float64 transcription of GaussianFace + FocalLoss
(shared/reference methods_eqface_qgface_adaface §3.1), hand-worked numbers, and the quality branch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fiqa.backbones.eqface_resnet import EQFaceQuality, eqface_resnet100
from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.heads.eqface import EQFaceHead, arcface_with_fallback, eqface_logits, focal_loss, quality_scale


def _reference(x, w, labels, q=None, s=64.0, m=0.5, gamma=2.0):
    """GaussianFace (gaussian=q is not None) + focal loss, written out in numpy float64 (no half cast)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    cos = np.clip(cos, -1.0, 1.0)
    sin = np.sqrt(1.0 - cos**2)
    phi = cos * math.cos(m) - sin * math.sin(m)
    phi = np.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
    one_hot = np.zeros_like(cos, dtype=bool)
    one_hot[np.arange(len(labels)), labels] = True
    out = np.where(one_hot, phi, cos)
    if q is None:
        logits = s * out
    else:
        c = np.clip(np.asarray(q, np.float64) - 0.2, 0.0, 1.0) * 1.2
        logits = out * s * c[:, None]
    z = logits - logits.max(1, keepdims=True)
    ce = -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1)))
    p = np.exp(-ce)
    return logits, ((1 - p) ** gamma * ce).mean(), cos


def _inputs(seed, b=16, d=12, c=9):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = EQFaceHead(c, d)
    w = head.weight.detach().double().numpy()
    labels = rng.integers(c, size=b)
    x = rng.standard_normal((b, d))
    # the first quarter points away from its class centre: theta + m > pi, the fallback branch
    k = b // 4
    x[:k] = -w[labels[:k]] + 0.05 * rng.standard_normal((k, d)) * np.linalg.norm(w[labels[:k]], axis=1, keepdims=True)
    q = rng.uniform(0.0, 1.0, size=b)
    q[0], q[1] = 0.1, 0.95  # below the 0.2 offset and high
    return head, x, w, labels, q


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("with_quality", [False, True])
def test_logits_and_focal_loss_equal_the_original_formula(seed, with_quality):
    head, x, w, labels, q = _inputs(seed)
    ref_logits, ref_loss, ref_cos = _reference(x, w, labels, q if with_quality else None)
    target_cos = ref_cos[np.arange(len(labels)), labels]
    assert (target_cos <= math.cos(math.pi - 0.5)).sum() >= 2 and (target_cos > math.cos(math.pi - 0.5)).sum() >= 2
    qt = torch.tensor(q, dtype=torch.float32) if with_quality else None
    out = head(torch.tensor(x, dtype=torch.float32), torch.tensor(labels), quality=qt)
    np.testing.assert_allclose(out.logits.detach().double().numpy(), ref_logits, rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(out.cosine.detach().double().numpy(), ref_cos, atol=1e-6)
    loss = focal_loss(out.logits, torch.tensor(labels), 2.0)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-4, abs=1e-6)


def test_fallback_target_by_hand():
    m = 0.5
    cos = torch.tensor([[0.6, 0.1], [-0.95, 0.2]])
    got = arcface_with_fallback(cos, torch.tensor([0, 0]), m)
    # 0.6 > cos(pi - m): cos(acos(0.6) + m); -0.95 <= cos(pi - 0.5) = -0.8776: -0.95 - sin(pi - m) * m
    assert float(got[0, 0]) == pytest.approx(math.cos(math.acos(0.6) + m), abs=1e-6)
    assert float(got[1, 0]) == pytest.approx(-0.95 - math.sin(math.pi - m) * m, abs=1e-6)
    assert float(got[0, 1]) == pytest.approx(0.1) and float(got[1, 1]) == pytest.approx(0.2)


def test_quality_scale_by_hand():
    q = torch.tensor([0.0, 0.1, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(quality_scale(q).numpy(), [0.0, 0.0, 0.0, 0.36, 0.96], atol=1e-7)
    cos = torch.tensor([[0.3, -0.2]] * 5)
    logits = eqface_logits(cos, torch.zeros(5, dtype=torch.long), quality=q)
    np.testing.assert_allclose(logits[:, 1].numpy(), 64 * quality_scale(q).numpy() * -0.2, rtol=1e-6, atol=1e-7)


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    ce0 = -2.0 + math.log(math.exp(2) + 1 + math.exp(-1))
    ce1 = math.log(3)
    expected = ((1 - math.exp(-ce0)) ** 2 * ce0 + (1 - math.exp(-ce1)) ** 2 * ce1) / 2
    assert float(focal_loss(logits, labels, 2.0)) == pytest.approx(expected, rel=1e-6)
    assert float(focal_loss(logits, labels, 0.0)) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)  # gamma 0 = CE


def test_low_quality_gives_zero_logits_log_c_and_no_gradient():
    c = 7
    torch.manual_seed(0)
    head = EQFaceHead(c, 10)
    x = torch.randn(5, 10, requires_grad=True)
    q = torch.tensor([0.0, 0.05, 0.1, 0.15, 0.2], requires_grad=True)
    labels = torch.randint(c, (5,))
    logits = head(x, labels, quality=q).logits
    assert torch.equal(logits, torch.zeros_like(logits))
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert ce.item() == pytest.approx(math.log(c), rel=1e-6)
    loss = focal_loss(logits, labels)
    assert loss.item() == pytest.approx((1 - 1 / c) ** 2 * math.log(c), rel=1e-6)
    loss.backward()
    for g in (head.weight.grad, x.grad, q.grad):
        assert g is None or float(g.abs().max()) == 0.0


def test_margin_is_computed_in_float32():
    torch.manual_seed(0)
    head = EQFaceHead(5, 8)
    x = torch.randn(4, 8).half()
    out = head(x, torch.tensor([0, 1, 2, 3]), quality=torch.full((4,), 0.9).half())
    assert out.logits.dtype == torch.float32
    ref = eqface_logits(head.cosine(x.float()), torch.tensor([0, 1, 2, 3]), quality=torch.full((4,), 0.9))
    torch.testing.assert_close(out.logits, ref, atol=0.05, rtol=1e-3)  # only the input rounding differs


def test_head_init_and_config_errors():
    torch.manual_seed(0)
    head = EQFaceHead(100, 64)
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    w = head.weight.detach()
    assert float(w.abs().max()) <= bound + 1e-6 and float(w.std()) > 0.3 * bound
    with pytest.raises(ValueError, match="head.margin"):
        EQFaceHead(3, 4, margin=2.0)
    assert "clamp(q - 0.2, 0, 1) * 1.2" in repr(head)


def test_quality_branch_shapes_and_range():
    torch.manual_seed(0)
    net = iresnet_tiny(embedding_dim=16).eval()
    branch = EQFaceQuality(net.feature_dim, hidden=32).eval()
    fmap = net(torch.randn(3, 3, 112, 112), return_feature_map=True).feature_map
    assert fmap.shape == (3, net.feature_dim)
    probs = branch.probabilities(fmap)
    assert probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    q = branch(fmap)
    assert q.shape == (3,) and bool(((q >= 0) & (q <= 1)).all())  # untrained BN: may saturate
    assert [tuple(p.shape) for p in branch.parameters()] == [(32, net.feature_dim), (32,), (32,), (2, 32)]
    with torch.device("meta"):  # the full net: 512 x 7 x 7 = 25,088-d map
        assert eqface_resnet100().feature_dim == 25088
