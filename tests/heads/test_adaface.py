"""AdaFace head against an independent transcription of the original's forward (shared/reference
methods_eqface_qgface_adaface §1.1), its statistics (EMA before use, train mode only, saved in
the state_dict) and the h=0 special case (CosFace)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fiqa.heads import margins
from fiqa.heads.adaface import AdaFaceHead, AdaFaceOutput, adaface_logits, margin_scaler
from fiqa.heads.fc import CosFaceHead


class ReferenceAdaFace:
    """The original's forward written out in numpy (float64): kernel (D, C) normalised along dim 0,
    embeddings given L2-normalised with their norms (B, 1), the margins applied through one-hot masks
    to every entry, the statistics updated before use (unbiased std)."""

    def __init__(self, kernel_dc, m=0.4, h=0.333, s=64.0, t_alpha=0.01, eps=1e-3, mean=20.0, std=100.0):
        self.kernel, self.m, self.h, self.s, self.t_alpha, self.eps = kernel_dc, m, h, s, t_alpha, eps
        self.batch_mean, self.batch_std = mean, std

    def __call__(self, x, labels, training=True):
        x = np.asarray(x, np.float64)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        emb = x / norms
        kernel_norm = self.kernel / np.linalg.norm(self.kernel, axis=0, keepdims=True)
        cosine = np.clip(emb @ kernel_norm, -1 + self.eps, 1 - self.eps)
        safe_norms = np.clip(norms, 0.001, 100)
        if training:
            a = self.t_alpha
            self.batch_mean = safe_norms.mean() * a + (1 - a) * self.batch_mean
            self.batch_std = safe_norms.std(ddof=1) * a + (1 - a) * self.batch_std
        ms = np.clip((safe_norms - self.batch_mean) / (self.batch_std + self.eps) * self.h, -1, 1)
        one_hot = np.zeros_like(cosine)
        one_hot[np.arange(len(labels)), labels] = 1.0
        m_arc = one_hot * (self.m * ms * -1)
        theta_m = np.clip(np.arccos(cosine) + m_arc, self.eps, math.pi - self.eps)
        m_cos = one_hot * (self.m + self.m * ms)
        return (np.cos(theta_m) - m_cos) * self.s, ms[:, 0], cosine


def _inputs(seed, b=16, d=12, c=9):
    rng = np.random.default_rng(seed)
    # magnitudes around the statistics' start, some beyond the 100 clip
    x = rng.standard_normal((b, d)) * rng.uniform(2, 60, size=(b, 1)) / math.sqrt(d)
    x[0] *= 40.0
    return x, rng.integers(c, size=b), c


def _pair(c, d, seed, **kw):
    torch.manual_seed(seed)
    head = AdaFaceHead(c, d, **kw)
    return head, ReferenceAdaFace(head.weight.detach().double().numpy().T.copy(), **_ref_kw(kw))


def _ref_kw(kw):
    return {{"margin": "m"}.get(k, k): v for k, v in kw.items()}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("kw", [{}, {"margin": 0.5, "h": 1.0, "s": 30.0, "t_alpha": 0.3}])
def test_three_training_steps_equal_the_original(seed, kw):
    x0, _, c = _inputs(seed)
    head, ref = _pair(c, x0.shape[1], seed, **kw)
    head.train()
    for step in range(3):
        x, labels, _ = _inputs(100 * seed + step, c=c)
        out = head(torch.tensor(x, dtype=torch.float32), torch.tensor(labels))
        ref_logits, ref_ms, ref_cos = ref(x, labels, training=True)
        assert isinstance(out, AdaFaceOutput)
        assert float(head.batch_mean) == pytest.approx(ref.batch_mean, rel=1e-5)
        assert float(head.batch_std) == pytest.approx(ref.batch_std, rel=1e-5)
        np.testing.assert_allclose(out.ms.numpy(), ref_ms, atol=1e-5)
        np.testing.assert_allclose(out.cosine.detach().numpy(), ref_cos, atol=1e-6)
        np.testing.assert_allclose(out.logits.detach().double().numpy(), ref_logits, rtol=1e-5, atol=3e-4)
        np.testing.assert_allclose(out.norm.numpy(), np.clip(np.linalg.norm(x, axis=1), 1e-3, 100), rtol=1e-6)
        ce = torch.nn.functional.cross_entropy(out.logits.detach().double(), torch.tensor(labels))
        z = ref_logits - ref_logits.max(1, keepdims=True)
        ref_ce = -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))).mean()
        assert float(ce) == pytest.approx(ref_ce, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_eval_mode_uses_but_does_not_update_the_statistics(seed):
    x, labels, c = _inputs(seed)
    head, ref = _pair(c, x.shape[1], seed)
    head(torch.tensor(x, dtype=torch.float32), torch.tensor(labels))  # one training step moves them
    ref(x, labels, training=True)
    before = (head.batch_mean.clone(), head.batch_std.clone())
    head.eval()
    x2, labels2, _ = _inputs(seed + 50, c=c)
    out = head(torch.tensor(x2, dtype=torch.float32), torch.tensor(labels2))
    ref_logits, ref_ms, _ = ref(x2, labels2, training=False)
    assert torch.equal(head.batch_mean, before[0]) and torch.equal(head.batch_std, before[1])
    np.testing.assert_allclose(out.ms.numpy(), ref_ms, atol=1e-5)
    np.testing.assert_allclose(out.logits.detach().double().numpy(), ref_logits, rtol=1e-5, atol=3e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_h_zero_is_cosface(seed):
    x, labels, c = _inputs(seed)
    torch.manual_seed(seed)
    ada = AdaFaceHead(c, x.shape[1], h=0.0, margin=0.4)
    cos_head = CosFaceHead(c, x.shape[1], margin=0.4)
    cos_head.weight.data.copy_(ada.weight.data)
    xt, lt = torch.tensor(x, dtype=torch.float32), torch.tensor(labels)
    out = ada(xt, lt)
    assert torch.all(out.ms == 0)
    torch.testing.assert_close(out.logits, cos_head(xt, lt).logits, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(out.logits, margins.cosface(out.cosine, lt, 64.0, 0.4), atol=2e-4, rtol=1e-5)


def test_margin_by_hand():
    # cos_y = 0.5 (theta = pi/3), ms = 1: theta' = pi/3 - 0.4, logit = cos(pi/3 - 0.4) - 0.8 (ArcFace-like)
    # ms = -1: theta' = pi/3 + 0.4, logit = cos(pi/3 + 0.4) - 0 (an angular margin the other way, CosFace-like 0)
    cos = torch.tensor([[0.5, 0.2], [0.5, 0.2]])
    out = adaface_logits(cos, torch.tensor([0, 0]), torch.tensor([1.0, -1.0]), s=1.0, m=0.4)
    assert float(out[0, 0]) == pytest.approx(math.cos(math.pi / 3 - 0.4) - 0.8, abs=1e-6)
    assert float(out[1, 0]) == pytest.approx(math.cos(math.pi / 3 + 0.4), abs=1e-6)
    assert float(out[0, 1]) == pytest.approx(0.2) and float(out[1, 1]) == pytest.approx(0.2)
    # theta' is clipped to [eps, pi - eps]
    near = adaface_logits(torch.tensor([[0.99, 0.0]]), torch.tensor([0]), torch.tensor([1.0]), s=1.0, m=0.4)
    assert float(near[0, 0]) == pytest.approx(math.cos(1e-3) - 0.8, abs=1e-6)
    # ms = clip(h (n - mu) / (sigma + eps), -1, 1)
    ms = margin_scaler(torch.tensor([10.0, 20.0, 26.0, 1000.0]), torch.tensor([20.0]), torch.tensor([10.0]), 0.5, 0.0)
    np.testing.assert_allclose(ms.numpy(), [-0.5, 0.0, 0.3, 1.0], rtol=1e-6)


def test_buffers_are_saved_and_restored():
    head = AdaFaceHead(7, 8)
    assert float(head.batch_mean) == 20.0 and float(head.batch_std) == 100.0
    head(torch.randn(10, 8) * 5, torch.randint(7, (10,)))
    sd = head.state_dict()
    assert {"weight", "batch_mean", "batch_std"} == set(sd)
    fresh = AdaFaceHead(7, 8)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.batch_mean, head.batch_mean) and torch.equal(fresh.batch_std, head.batch_std)
    assert float(fresh.batch_mean) != 20.0
    head.eval(), fresh.eval()
    x, y = torch.randn(4, 8) * 30, torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(head(x, y).logits, fresh(x, y).logits)


def test_single_sample_batch_keeps_std_finite():
    head = AdaFaceHead(5, 4)
    head(torch.randn(1, 4), torch.tensor([2]))
    assert torch.isfinite(head.batch_std).all() and float(head.batch_std) == 100.0
    assert float(head.batch_mean) != 20.0


def test_no_gradient_through_the_norm_and_unit_centres():
    head = AdaFaceHead(6, 8)
    np.testing.assert_allclose(head.weight.norm(dim=1).detach().numpy(), 1.0, rtol=1e-6)
    x = (torch.randn(5, 8) * 15).requires_grad_(True)
    out = head(x, torch.tensor([0, 1, 2, 3, 4]))
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3, 4])).backward()
    radial = (x.grad * x.detach()).sum(1) / x.detach().norm(dim=1)
    assert radial.abs().max() < 1e-5 * x.grad.norm(dim=1).max()  # the loss sees the direction only
    assert not out.ms.requires_grad and not out.norm.requires_grad


def test_logit_gate_hook_and_init_statistics():
    class Gated(AdaFaceHead):
        def logit_gate(self, ms):
            return (ms > 0).float()

    kw = {"init_mean": 50.0, "init_std": 10.0, "t_alpha": 0.0}  # statistics held fixed
    torch.manual_seed(0)
    plain = AdaFaceHead(5, 8, **kw)
    torch.manual_seed(0)
    gated = Gated(5, 8, **kw)
    x = torch.randn(6, 8) * torch.tensor([[1.0], [50.0], [2.0], [60.0], [1.0], [70.0]])
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    a, b = plain(x, y), gated(x, y)
    assert float(gated.batch_mean) == 50.0 and float(gated.batch_std) == 10.0
    keep = (a.ms > 0).float().view(-1, 1)
    assert 0 < keep.sum() < 6
    torch.testing.assert_close(b.logits, a.logits * keep)


def test_errors():
    with pytest.raises(ValueError, match="t_alpha"):
        AdaFaceHead(3, 4, t_alpha=2.0)
    with pytest.raises(ValueError, match="num_classes"):
        AdaFaceHead(1, 4)
