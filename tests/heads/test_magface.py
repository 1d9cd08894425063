"""MagFace head and loss against an independent transcription of MagFace's MagLinear + MagLoss
(shared/reference §4.1), hand-worked numbers and the feasibility bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.heads.magface import MagFaceHead, feasibility_bound, mag_logits, magnitude_margin, magnitude_regularizer
from fiqa.methods.magface import MagFace


def _reference_magface(x, w_dc, labels, s, l_a, u_a, l_m, u_m, lambda_g, easy_margin=True):
    """MagLinear + MagLoss written out in numpy, float64: W is (D, C) normalised along dim 0."""
    x = np.asarray(x, np.float64)
    norm = np.clip(np.linalg.norm(x, axis=1, keepdims=True), l_a, u_a)
    m = (u_m - l_m) / (u_a - l_a) * (norm - l_a) + l_m
    w = w_dc / np.linalg.norm(w_dc, axis=0, keepdims=True)
    cos = np.clip((x / np.linalg.norm(x, axis=1, keepdims=True)) @ w, -1, 1)
    sin = np.sqrt(1.0 - cos**2)
    cos_m = cos * np.cos(m) - sin * np.sin(m)
    if easy_margin:
        cos_m = np.where(cos > 0, cos_m, cos)
    else:
        cos_m = np.where(cos > np.cos(math.pi - m), cos_m, cos - np.sin(math.pi - m) * m)
    one_hot = np.zeros_like(cos)
    one_hot[np.arange(len(labels)), labels] = 1
    logits = s * (one_hot * cos_m + (1 - one_hot) * cos)
    z = logits - logits.max(1, keepdims=True)
    ce = -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))).mean()
    g = (norm[:, 0] / u_a**2 + 1 / norm[:, 0]).mean()
    return logits, ce, g, ce + lambda_g * g


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("easy_margin", [True, False])
def test_logits_and_loss_equal_the_original_formula(seed, easy_margin):
    rng = np.random.default_rng(seed)
    b, d, c = 12, 16, 7
    # magnitudes spread below, inside and above [l_a, u_a]
    x = rng.standard_normal((b, d)) * rng.uniform(1, 40, size=(b, 1))
    labels = rng.integers(c, size=b)
    head = MagFaceHead(c, d, easy_margin=easy_margin)
    w_dc = head.weight.detach().double().numpy().T
    ref_logits, ref_ce, ref_g, ref_total = _reference_magface(
        x, w_dc, labels, 64.0, 10, 110, 0.45, 0.8, 35.0, easy_margin
    )
    out = head(torch.tensor(x, dtype=torch.float32), torch.tensor(labels))
    np.testing.assert_allclose(out.logits.detach().double().numpy(), ref_logits, rtol=1e-5, atol=2e-4)
    ce = torch.nn.functional.cross_entropy(out.logits, torch.tensor(labels))
    g = magnitude_regularizer(out.norm, 110.0).mean()
    assert float(ce) == pytest.approx(ref_ce, rel=1e-5)
    assert float(g) == pytest.approx(ref_g, rel=1e-6)
    assert float(ce + 35.0 * g) == pytest.approx(ref_total, rel=1e-5)


def test_margin_and_regulariser_by_hand():
    a = torch.tensor([10.0, 60.0, 110.0])
    np.testing.assert_allclose(magnitude_margin(a, 10, 110, 0.45, 0.8).numpy(), [0.45, 0.625, 0.8], rtol=1e-6)
    np.testing.assert_allclose(
        magnitude_regularizer(a, 110.0).numpy(), [10 / 12100 + 0.1, 60 / 12100 + 1 / 60, 2 / 110], rtol=1e-6
    )
    # g is minimal at u_a on [l_a, u_a]
    grid = torch.linspace(10, 110, 101)
    assert int(magnitude_regularizer(grid, 110.0).argmin()) == 100


def test_feasibility_bound_is_22_59_for_the_defaults():
    assert feasibility_bound(64, 10, 110, 0.45, 0.8) == pytest.approx(64 * 0.0035 * 12100 * 100 / 12000)
    assert round(feasibility_bound(64, 10, 110, 0.45, 0.8), 2) == 22.59


def test_target_logit_by_hand_and_mag_cosface():
    cos = torch.tensor([[0.6, 0.1]])
    labels = torch.tensor([0])
    a = torch.tensor([60.0])  # m = 0.625
    arc = mag_logits(cos, labels, a, s=1.0)
    expected = 0.6 * math.cos(0.625) - 0.8 * math.sin(0.625)
    assert float(arc[0, 0]) == pytest.approx(expected, abs=1e-6) and float(arc[0, 1]) == pytest.approx(0.1)
    cosm = mag_logits(cos, labels, a, s=2.0, kind="cos")
    assert float(cosm[0, 0]) == pytest.approx(2 * (0.6 - 0.625), abs=1e-6)
    easy = mag_logits(torch.tensor([[-0.2, 0.1]]), labels, a, s=1.0)
    assert float(easy[0, 0]) == pytest.approx(-0.2)  # easy margin: cos <= 0 keeps cos


def test_gradient_reaches_the_magnitude_only_inside_the_clamp():
    head = MagFaceHead(5, 8)
    x = torch.randn(4, 8)
    x = x / x.norm(dim=1, keepdim=True) * torch.tensor([[5.0], [50.0], [100.0], [200.0]])
    x.requires_grad_(True)
    out = head(x, torch.tensor([0, 1, 2, 3]))
    magnitude_regularizer(out.norm, head.u_a).sum().backward()
    radial = (x.grad * x.detach()).sum(1) / x.detach().norm(dim=1)
    assert radial[0] == 0 and radial[3] == 0 and radial[1] != 0 and radial[2] != 0


def test_weight_init_is_unit_rows_and_errors():
    head = MagFaceHead(9, 16)
    np.testing.assert_allclose(head.weight.norm(dim=1).detach().numpy(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="l_a < u_a"):
        MagFaceHead(3, 4, l_a=10, u_a=5)
    with pytest.raises(ValueError, match="head.kind"):
        MagFaceHead(3, 4, kind="sphere")


def test_method_losses_quality_and_head_check():
    bb = iresnet_tiny(embedding_dim=32, dropout=0.4, dropout_kind="dropout2d")
    m = MagFace(bb, MagFaceHead(4, 32), channels_last=False)
    batch = {"image": torch.randn(6, 3, 112, 112), "label": torch.tensor([0, 1, 2, 3, 0, 1])}
    terms = m.losses(m.embed(batch["image"]), batch)
    assert set(terms) == {"id", "g"} and all(torch.isfinite(v) for v in terms.values())
    m.eval()
    with torch.no_grad():
        out = m(batch["image"])
        np.testing.assert_allclose(out.quality.numpy(), out.embedding.norm(dim=1).numpy(), rtol=1e-6)
        m.quality_flip = True
        flipped = m.backbone(batch["image"].flip(3)).embedding.norm(dim=1)
        np.testing.assert_allclose(
            m(batch["image"]).quality.numpy(), (0.5 * (out.quality + flipped)).numpy(), rtol=1e-5
        )
    with pytest.raises(ValueError, match="head=magface"):
        from fiqa.heads.fc import ArcFaceHead

        MagFace(bb, ArcFaceHead(4, 32))
