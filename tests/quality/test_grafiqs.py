"""GraFIQs (fiqa.quality.grafiqs): the BNS-discrepancy gradient against numbers worked out by hand and by
numpy finite differences, every variant batched and per image, the calling contexts (no_grad,
inference_mode), the model left untouched, SynthFace, and task=eval through the real main.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.data.synthface import SynthFacePairs
from fiqa.eval.quality_metrics import quality_spearman
from fiqa.methods.base import FaceModule
from fiqa.methods.grafiqs import GraFIQs
from fiqa.methods.loading import load_model
from fiqa.quality.embed import embed_set
from fiqa.quality.grafiqs import WRT, bn_discrepancy, gradient_magnitude, stage_modules
from tests.helpers.run_main import TINY_VAL, read_metrics, run_main


def bn(c, mean, var, eps=1e-5):
    layer = nn.BatchNorm2d(c, eps=eps).double().eval()
    layer.running_mean.copy_(torch.tensor(mean, dtype=torch.float64))
    layer.running_var.copy_(torch.tensor(var, dtype=torch.float64))
    return layer


# ------------------------------------------------------------------------------------- by hand


def test_one_bn_layer_by_hand():
    # one channel, a 1x2 image x = [1, 3]: mean m = 2, biased var v = 1; running mean 0, running var 2.
    # L = (m - 0)^2 + (v - 2)^2 = 4 + 1 = 5 (MSE over one channel, one layer).
    # dL/dx_j = 2 m * dm/dx_j + 2 (v - 2) dv/dx_j, dm/dx_j = 1/2, dv/dx_j = (x_j - m) (N = 2)
    #   x_1: 2 + 2 (-1)(-1) = 4;  x_2: 2 + 2 (-1)(1) = 0  ->  sum |grad| = 4
    layer = bn(1, [0.0], [2.0])
    x = torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64)
    assert bn_discrepancy(x, layer).tolist() == pytest.approx([5.0])
    out, mag = gradient_magnitude(layer, x, "image")
    assert mag.tolist() == pytest.approx([4.0])
    torch.testing.assert_close(out, layer(x))  # the ordinary eval-mode output


def _numpy_loss(x, layers):
    """L of one image (C, H, W) through a chain of eval-mode BN layers ((rm, rv, w, b, eps) each), numpy."""
    terms = []
    for rm, rv, w, b, eps in layers:
        m, v = x.mean(axis=(1, 2)), x.var(axis=(1, 2))
        terms.append(((m - rm) ** 2).mean() + ((v - rv) ** 2).mean())
        x = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + eps) * w[:, None, None] + b[:, None, None]
    return np.mean(terms)


def test_two_bn_layers_against_numpy_finite_differences():
    # the mean over layers, the affine BN in between, and the per-image statistics of a batch
    rng = np.random.default_rng(0)
    first, second = bn(2, [0.1, -0.3], [0.5, 2.0]), bn(2, [0.2, 0.0], [1.5, 0.7])
    with torch.no_grad():
        first.weight.copy_(torch.tensor([1.3, 0.6], dtype=torch.float64))
        first.bias.copy_(torch.tensor([0.2, -0.1], dtype=torch.float64))
    model = nn.Sequential(first, second)
    spec = [
        (m.running_mean.numpy(), m.running_var.numpy(), m.weight.detach().numpy(), m.bias.detach().numpy(), m.eps)
        for m in (first, second)
    ]
    x = rng.normal(size=(3, 2, 3, 4))
    _, mag = gradient_magnitude(model, torch.from_numpy(x), "image")
    for i in range(3):
        grad, h = np.zeros_like(x[i]), 1e-6
        for idx in np.ndindex(*x[i].shape):
            up, down = x[i].copy(), x[i].copy()
            up[idx] += h
            down[idx] -= h
            grad[idx] = (_numpy_loss(up, spec) - _numpy_loss(down, spec)) / (2 * h)
        assert mag[i].item() == pytest.approx(np.abs(grad).sum(), rel=1e-6)


# ---------------------------------------------------------------------------------- variants


def tiny(seed=0):
    """iresnet_tiny with non-trivial running statistics (a fresh net has mean 0, var 1 everywhere)."""
    torch.manual_seed(seed)
    model = iresnet_tiny()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(n=4, seed=1):
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("wrt", WRT)
def test_every_variant_is_per_image_and_leaves_the_model_alone(wrt):
    model, x = tiny(), images()
    model.features.weight.requires_grad_(False)  # a frozen parameter must stay frozen
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(x).embedding
    emb, mag = gradient_magnitude(model, x, wrt)
    assert mag.shape == (4,) and torch.isfinite(mag).all() and (mag > 0).all()
    torch.testing.assert_close(emb, plain)
    # an image's score does not depend on the batch it is in (nor on the chunking)
    for i in range(4):
        _, alone = gradient_magnitude(model, x[i : i + 1], wrt)
        assert alone.item() == pytest.approx(mag[i].item(), rel=1e-4)
    _, reordered = gradient_magnitude(model, x.flip(0), wrt, chunk=3)
    torch.testing.assert_close(reordered.flip(0), mag, rtol=1e-4, atol=0)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # weights and BN running statistics untouched


def test_variants_differ_and_stage_outputs_are_the_residual_stages():
    model, x = tiny(), images(2)
    assert stage_modules(model) == [model.layer1, model.layer2, model.layer3, model.layer4]
    mags = {wrt: gradient_magnitude(model, x, wrt)[1] for wrt in WRT}
    assert len({round(m[0].item(), 6) for m in mags.values()}) == len(WRT)
    # block4 by hand: its only consumer in L is bn2 (the last BatchNorm2d), so dL/d block4 is that term's
    # gradient divided by the number of BatchNorm2d layers
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        b4 = model.layer4(model.layer3(model.layer2(model.layer1(model.prelu(model.bn1(model.conv1(x)))))))
    b4.requires_grad_(True)
    (g,) = torch.autograd.grad(bn_discrepancy(b4, model.bn2).sum() / n_bn, b4)
    torch.testing.assert_close(mags["block4"], g.abs().flatten(1).sum(1), rtol=1e-4, atol=0)


def test_wrapper_in_no_grad_inference_mode_and_train_mode():
    fm = FaceModule(tiny())  # a bare FR model (no head): what quality=grafiqs wraps
    q = GraFIQs(fm, wrt="block2")
    x = images(3)
    with torch.no_grad():
        ref = q(x)
    with torch.inference_mode():
        inf = q(x)
    fm.train()  # a module left in train mode: scored in eval mode, and put back as it was
    again = q(x)
    assert fm.backbone.training and all(m.training for m in fm.backbone.modules())
    torch.testing.assert_close(inf.quality, ref.quality)
    torch.testing.assert_close(again.quality, ref.quality)
    assert (ref.quality < 0).all()  # quality = -magnitude
    torch.testing.assert_close(ref.embedding, fm.eval()(x).embedding)
    with pytest.raises(ValueError, match="quality.wrt"):
        GraFIQs(fm, wrt="layer2")


def test_errors_name_the_key():
    with pytest.raises(ValueError, match="BatchNorm2d"):
        gradient_magnitude(nn.Conv2d(3, 4, 3), images(1), "image")
    with pytest.raises(ValueError, match="quality.wrt=image"):
        gradient_magnitude(nn.Sequential(nn.BatchNorm2d(3)).eval(), images(1), "block1")


# ---------------------------------------------------------------------------------- SynthFace


def synth_val():
    """The val=synth set of TINY_VAL (200 pairs, 50 identities: 400 images)."""
    return SynthFacePairs(num_pairs=200, num_identities=50)


# Measured (2-core CPU) Spearman(quality = -magnitude, degradation) on these 400 images, per wrt
# (image / block1 / block2 / block3 / block4):
#   trained_run (1 epoch, 16 identities, val acc 0.53):        +0.21 / +0.27 / +0.27 / +0.23 / +0.09
#   8 epochs, 100 identities x 20 (acc 0.87):                  -0.05 / -0.08 / -0.07 / -0.07 / -0.05
#   3 epochs, 100 x 20, nearly clean training (max_level 0.15, acc 0.88): +0.02 / +0.01 / -0.01 / -0.04 / -0.03
# On the barely trained model degraded images get SMALLER gradients (low contrast and blur shrink the
# activations, hence dL/dx); on the better ones the ranking is the paper's way round but near chance, while
# the BNS loss L itself rises with degradation (Spearman +0.16 .. +0.23). So on SynthFace with tiny models
# GraFIQs does not rank degradation clearly: this test states the expectation and fails as measured
# (strict, so it reports when that changes).
@pytest.mark.xfail(strict=True, reason="measured Spearman +0.27 (block2) on the trained_run model: no clear ranking")
def test_default_variant_ranks_synthface_degradation(trained_run):
    model = load_model(str(trained_run / "checkpoints" / "last.ckpt")).eval()
    ds = synth_val()
    out = embed_set(ds, others={"grafiqs": GraFIQs(model)}, batch_size=100)
    rho = quality_spearman(out["grafiqs"], ds.targets()["degradation"])
    assert rho < -0.1, rho


def test_task_eval_quality_grafiqs_through_main(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    run_main("task=eval", f"ckpt_path={ckpt}", "quality=grafiqs", "val=[synth]", *TINY_VAL, "trainer=cpu",
             "data.val_batch_size=64", "data.num_workers=0", "callbacks.progress=null",
             f"hydra.run.dir={tmp_path}")  # fmt: skip
    logged = read_metrics(tmp_path)["val/synth/quality_spearman"]
    # Lightning's validate runs under inference_mode, in batches of 64; task=compare's embed_set under
    # no_grad, in batches of 100: the same per-image qualities, so the same Spearman
    model = load_model(str(ckpt)).eval()
    ds = synth_val()
    out = embed_set(ds, others={"grafiqs": GraFIQs(model)}, batch_size=100)
    assert np.isfinite(out["grafiqs"]).all()
    assert logged == pytest.approx(quality_spearman(out["grafiqs"], ds.targets()["degradation"]), abs=1e-3)
