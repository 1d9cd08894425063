"""method=adaface: composes with its head, augmentation and BGR input; one training step; quality
= the raw embedding norm; the paper recipe (experiment=adaface_ms1mv2_r50)."""

from __future__ import annotations

import pytest
import torch

from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.heads.adaface import AdaFaceHead
from fiqa.methods.adaface import AdaFace
from fiqa.methods.base import param_groups
from fiqa.tasks import build as B
from tests.conftest import compose_cfg

SMALL = ["data.train.num_identities=6", "data.train.images_per_identity=4", "val.synth.dataset.num_pairs=20"]


def _method(num_classes=4, dim=32):
    return AdaFace(iresnet_tiny(embedding_dim=dim), AdaFaceHead(num_classes, dim), channels_last=False)


def test_config_composes_head_augment_and_bgr(tmp_path):
    cfg = compose_cfg(["method=adaface", *SMALL], tmp_path)
    assert cfg.head._target_.endswith("AdaFaceHead") and cfg.augment._target_.endswith("adaface_augment")
    assert (cfg.head.s, cfg.head.margin, cfg.head.h, cfg.head.t_alpha, cfg.head.eps) == (64.0, 0.4, 0.333, 0.01, 1e-3)
    assert cfg.data.color == "bgr" and (cfg.data.normalize_mean, cfg.data.normalize_std) == (127.5, 127.5)
    assert compose_cfg(["method=adaface", "head=cosface"], tmp_path).head._target_.endswith("CosFaceHead")
    _, view = B.build_val(cfg)
    m = B.build_method(cfg, view)
    assert isinstance(m, AdaFace) and isinstance(m.head, AdaFaceHead) and m.head.num_classes == 6
    assert {"head.batch_mean", "head.batch_std", "head.weight"} <= set(m.state_dict())


def test_one_training_step_is_finite_and_moves_the_statistics():
    torch.manual_seed(0)
    m = _method()
    opt = torch.optim.SGD(param_groups({"b": m.backbone, "h": m.head}, 5e-4, True), lr=0.1, momentum=0.9)
    batch = {"image": torch.randn(8, 3, 112, 112), "label": torch.tensor([0, 1, 2, 3] * 2)}
    m.train()
    terms = m.losses(m.embed(batch["image"]), batch)
    assert set(terms) == {"id"} and torch.isfinite(terms["id"])
    assert float(m.head.batch_mean) != 20.0 and float(m.head.batch_std) != 100.0
    w0 = m.head.weight.detach().clone()
    opt.zero_grad()
    terms["id"].backward()
    opt.step()
    assert not torch.equal(w0, m.head.weight.detach())
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_quality_is_the_raw_embedding_norm_and_eval_keeps_statistics():
    m = _method().eval()
    before = m.head.state_dict()
    with torch.no_grad():
        out = m(torch.randn(3, 3, 112, 112))
        m.losses(m.embed(torch.randn(3, 3, 112, 112)), {"label": torch.tensor([0, 1, 2])})
    torch.testing.assert_close(out.quality, out.embedding.norm(dim=1))
    assert all(torch.equal(before[k], v) for k, v in m.head.state_dict().items())


def test_sample_weights_hook():
    class Weighted(AdaFace):
        factor = 1.0

        def sample_weights(self, head_out, batch):
            return torch.full_like(head_out.ms, self.factor)

    torch.manual_seed(0)
    plain = _method().eval()
    weighted = Weighted(plain.backbone, plain.head, channels_last=False).eval()
    batch = {"image": torch.randn(4, 3, 112, 112), "label": torch.tensor([0, 1, 2, 3])}
    with torch.no_grad():
        out = plain.embed(batch["image"])
        ref = plain.losses(out, batch)["id"]
        torch.testing.assert_close(weighted.losses(out, batch)["id"], ref)
        weighted.factor = 0.25
        torch.testing.assert_close(weighted.losses(out, batch)["id"], 0.25 * ref)


def test_needs_the_adaface_head():
    from fiqa.heads.fc import ArcFaceHead

    with pytest.raises(ValueError, match="head=adaface"):
        AdaFace(iresnet_tiny(embedding_dim=8), ArcFaceHead(4, 8))


def test_weight_decay_groups_cover_bn_and_other_1d_params():
    """The original exempts BatchNorm parameters only; optim.no_decay_bn exempts every 1-D one
    (documented difference: PReLU slopes, biases). The class centres are decayed in both."""
    m = _method()
    decay, no_decay = param_groups(m.optimized_modules(), 5e-4, True)
    ids = {id(p) for p in no_decay["params"]}
    assert id(m.head.weight) in {id(p) for p in decay["params"]}
    bn = [
        p
        for mod in m.backbone.modules()
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
        for p in mod.parameters()
    ]
    assert bn and all(id(p) in ids for p in bn)
    prelu = [p for mod in m.backbone.modules() if isinstance(mod, torch.nn.PReLU) for p in mod.parameters()]
    assert prelu and all(id(p) in ids for p in prelu)


def test_paper_recipe(tmp_path):
    cfg = compose_cfg(["experiment=adaface_ms1mv2_r50"], tmp_path)
    assert cfg.backbone._target_.endswith("ir.ir50") and cfg.data.num_classes == 85742
    assert cfg.head._target_.endswith("AdaFaceHead") and cfg.data.color == "bgr"
    assert cfg.augment._target_.endswith("adaface_augment")
    assert cfg.data.batch_size == 512 and cfg.optim.lr_ref_batch == 512 and cfg.optim.optimizer.lr == 0.1
    assert list(cfg.optim.scheduler.milestones) == [12, 20, 24] and cfg.optim.interval == "epoch"
    assert cfg.optim.scheduler._target_.endswith("MultiStepLR") and cfg.optim.optimizer.weight_decay == 5e-4
    assert cfg.trainer.max_epochs == 26 and cfg.seed == 42 and cfg.trainer.precision == "bf16-mixed"


def test_fast_dev_run_through_the_build_path(tmp_path):
    """The whole path (SynthFace reader, AdaFace augmentation, BGR, logging with a trainer)."""
    cfg = compose_cfg(
        [
            "method=adaface",
            *SMALL,
            "trainer=cpu",
            "debug=fdr",
            "data.batch_size=8",
            "data.val_batch_size=20",
            "logger=csv",
            "callbacks=none",
        ],
        tmp_path,
    )
    built = B.build(cfg)
    built.trainer.fit(built.method, datamodule=built.datamodule)
    metrics = built.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and float(metrics["train/norm_ema_mean"]) != 20.0
