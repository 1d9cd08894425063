"""SER-FIQ (reference §3): the numpy score by hand, and the torch tail-only implementation against the
numpy score and against repeating the whole network with the same dropout masks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.quality import serfiq_torch
from fiqa.quality.serfiq import normalize, score
from fiqa.quality.serfiq_torch import quality_from_embeddings, serfiq_quality, stochastic_embeddings

KINDS = ["dropout", "dropout2d"]

# ------------------------------------------------------------------------------------------ numpy


def test_score_by_hand_t3():
    # rows normalise to (1,0), (0,1), (0.6,0.8); distances sqrt(2), sqrt(0.16+0.64), sqrt(0.36+0.04)
    emb = np.array([[2.0, 0.0], [0.0, 0.5], [3.0, 4.0]])
    mean = (math.sqrt(2) + math.sqrt(0.8) + math.sqrt(0.4)) / 3  # = 0.980365
    assert score(emb) == pytest.approx(2 / (1 + math.exp(mean)), abs=1e-14)
    assert score(emb) == pytest.approx(0.545638, abs=1e-6)


def test_score_identical_rows_is_one_and_scale_free():
    assert score(np.ones((4, 3))) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 8))
    assert score(emb * rng.uniform(0.1, 10, size=(10, 1))) == pytest.approx(score(emb), abs=1e-14)


def test_normalize_by_hand():
    assert normalize(0.88) == pytest.approx(0.5)
    assert normalize(0.89) == pytest.approx(1 / (1 + math.exp(-1.3)), abs=1e-14)  # 0.785835
    np.testing.assert_allclose(normalize(np.array([0.5, 0.88]), alpha=10, r=0.5), [0.5, 1 / (1 + math.exp(-3.8))])
    assert normalize(-1e9) == 0.0  # overflow gives the limit, no error


def test_score_errors():
    with pytest.raises(ValueError, match=r"\(T, D\).*T >= 2"):
        score(np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        score(np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        score(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ------------------------------------------------------------------------------------------ torch


def tiny(kind, seed=0, dropout=0.4):
    """iresnet_tiny with non-trivial BN statistics, so eval vs train BN would show."""
    torch.manual_seed(seed)
    model = iresnet_tiny(dropout=dropout, dropout_kind=kind)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def images(n=3, seed=1):
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_equals_numpy_score(kind):
    model, x = tiny(kind), images()
    q = serfiq_quality(model, x, T=40, generator=gen())
    with torch.no_grad():
        emb = stochastic_embeddings(model, model.trunk(x), T=40, generator=gen())
    assert q.shape == (3,) and q.dtype == torch.float32
    expect = [score(emb[b].numpy()) for b in range(3)]
    np.testing.assert_allclose(q.numpy(), expect, atol=1e-6, rtol=0)
    np.testing.assert_allclose(quality_from_embeddings(emb).numpy(), expect, atol=1e-12, rtol=0)
    assert len(set(np.round(expect, 6))) == 3  # a real spread, not a constant


def test_quality_from_embeddings_matches_numpy_on_random_input():
    emb = torch.randn(5, 17, 9, generator=gen(3), dtype=torch.float64) * torch.rand(5, 17, 1, dtype=torch.float64)
    expect = [score(e.numpy()) for e in emb]
    np.testing.assert_allclose(quality_from_embeddings(emb).numpy(), expect, atol=1e-12, rtol=0)


def only_dropout_active(model):
    """The mode in which a plain forward is a SER-FIQ pass: the backbone's ``training`` flag turns its
    dropout on (``forward`` asks ``tail(stochastic=self.training)``), every BatchNorm stays in eval."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@pytest.mark.parametrize("kind", KINDS)
def test_equals_the_whole_network_repeated_with_the_same_masks(kind, monkeypatch):
    """serfiq_quality (trunk once, tail T times) == the whole forward on T copies of every image with
    only the dropout active, fed the very masks serfiq_quality drew (recorded through a hook)."""
    model, x, T = tiny(kind), images(2), 30
    recorded = []
    draw = serfiq_torch._dropout_noise

    def recording_draw(*args, **kwargs):
        noise = draw(*args, **kwargs)
        recorded.append(noise.clone())
        return noise

    monkeypatch.setattr(serfiq_torch, "_dropout_noise", recording_draw)
    q = serfiq_quality(model, x, T=T, generator=gen(), chunk=25)  # several chunks, not aligned to T
    assert len(recorded) > 1
    monkeypatch.undo()

    # rows in order image * T + repetition; dropout2d noise is per (row, channel)
    noise = torch.cat([n.reshape(-1, *n.shape[2:]) for n in recorded])
    assert noise.shape[0] == 2 * T
    calls = []

    def fake_dropout(inp, p=0.5, training=True, inplace=False):
        calls.append(tuple(inp.shape))
        return inp * noise

    def fake_dropout2d(inp, p=0.5, training=True, inplace=False):
        calls.append(tuple(inp.shape))
        return inp * noise.reshape(inp.shape[0], inp.shape[1], 1, 1)

    monkeypatch.setattr(torch.nn.functional, "dropout", fake_dropout)
    monkeypatch.setattr(torch.nn.functional, "dropout2d", fake_dropout2d)
    only_dropout_active(model)
    with torch.no_grad():
        emb = model(x.repeat_interleave(T, dim=0)).embedding.view(2, T, -1)
    model.eval()
    assert len(calls) == 1 and calls[0][0] == 2 * T  # the forward used the masks exactly once
    naive = [score(emb[b].numpy()) for b in range(2)]
    np.testing.assert_allclose(q.numpy(), naive, atol=1e-6, rtol=0)
    # and the masks are a real dropout: about p of the elements / channels are zero, the rest 1/(1-p)
    assert torch.unique(noise).tolist() == [0.0, pytest.approx(1 / 0.6)]
    assert (noise == 0).float().mean().item() == pytest.approx(0.4, abs=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_and_chunk_independent_on_cpu(kind):
    model, x = tiny(kind), images()
    q = serfiq_quality(model, x, T=20, generator=gen(5))
    assert torch.equal(q, serfiq_quality(model, x, T=20, generator=gen(5)))
    assert not torch.equal(q, serfiq_quality(model, x, T=20, generator=gen(6)))
    # CPU draws are sequential in row order, so the chunking changes nothing
    for chunk in (7, 20, 41, 10_000):
        torch.testing.assert_close(serfiq_quality(model, x, T=20, generator=gen(5), chunk=chunk), q, atol=1e-6, rtol=0)
    torch.manual_seed(11)
    a = serfiq_quality(model, x, T=20)
    torch.manual_seed(11)
    assert torch.equal(a, serfiq_quality(model, x, T=20))  # the global RNG when no generator is given


def test_p_defaults_to_the_backbone_and_can_be_overridden():
    model, x = tiny("dropout"), images(2)
    emb = lambda p: stochastic_embeddings(model, model.trunk(x).detach(), T=50, p=p, generator=gen())  # noqa: E731
    assert torch.equal(emb(None), emb(0.4))
    # a larger p spreads the stochastic embeddings more: lower quality
    assert (quality_from_embeddings(emb(0.8)) < quality_from_embeddings(emb(0.1))).all()


def test_p_zero_is_an_error():
    model, x = tiny("dropout", dropout=0.0), images(1)
    with pytest.raises(ValueError, match=r"quality\.p=None.*backbone.*0\.0"):
        serfiq_quality(model, x, T=5)
    with pytest.raises(ValueError, match=r"quality\.p=0"):
        serfiq_quality(tiny("dropout"), x, T=5, p=0)
    with pytest.raises(ValueError, match=r"quality\.p=1"):
        serfiq_quality(tiny("dropout"), x, T=5, p=1.0)
    # an explicit p on a backbone trained without dropout is allowed (the original v1 used 0.5)
    assert serfiq_quality(model, x, T=5, p=0.5, generator=gen()).shape == (1,)


def test_other_errors():
    model, x = tiny("dropout"), images(1)
    with pytest.raises(ValueError, match="T >= 2"):
        serfiq_quality(model, x, T=1)
    with pytest.raises(ValueError, match=r"normalize.*none.*sigmoid"):
        serfiq_quality(model, x, T=5, normalize="minmax")


def test_normalize_sigmoid_matches_numpy():
    model, x = tiny("dropout"), images()
    raw = serfiq_quality(model, x, T=20, generator=gen())
    scaled = serfiq_quality(model, x, T=20, generator=gen(), normalize="sigmoid", alpha=20.0, r=0.6)
    np.testing.assert_allclose(scaled.numpy(), normalize(raw.double().numpy(), alpha=20.0, r=0.6), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_module_modes_and_state_unchanged(kind):
    model, x = tiny(kind), images(2)
    model.train()
    model.layer2.eval()  # a mixed state must come back as it was
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    q_train_mode = serfiq_quality(model, x, T=10, generator=gen())
    assert {name: m.training for name, m in model.named_modules()} == flags
    for k, v in model.state_dict().items():  # no BN statistics were updated
        assert torch.equal(v, state[k]), k
    model.eval()
    assert torch.equal(q_train_mode, serfiq_quality(model, x, T=10, generator=gen()))
    assert not model.training


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_outside(kind):
    model, x = tiny(kind), images()
    q = serfiq_quality(model, x, T=30, generator=gen())
    with torch.no_grad():
        fmap = model.trunk(x)
        emb = stochastic_embeddings(model, fmap, T=30, generator=gen())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb_autocast = stochastic_embeddings(model, fmap, T=30, generator=gen())
            q_autocast = serfiq_quality(model, x, T=30, generator=gen())
    # the repeated tail is fp32 whatever autocast says: identical embeddings
    assert emb_autocast.dtype == torch.float32
    torch.testing.assert_close(emb_autocast, emb, atol=1e-6, rtol=0)
    # the trunk runs in bf16 under autocast (the caller's choice); the quality barely moves
    assert q_autocast.dtype == torch.float32
    torch.testing.assert_close(q_autocast, q, atol=5e-3, rtol=0)


def test_no_gradients_are_recorded():
    model, x = tiny("dropout"), images(1).requires_grad_(True)
    assert not serfiq_quality(model, x, T=5, generator=gen()).requires_grad
