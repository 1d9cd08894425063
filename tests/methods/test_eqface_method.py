"""EQFace's three steps: step 2 freezes the step-1 backbone (weights and BN statistics), step 3 trains a new
backbone under a frozen teacher, the three paper recipes (experiment=eqface_ms1mv2_r100_step1|2|3) compose at paper
scale and on the SynthFace stand-in, and the chain runs through main.py."""

from __future__ import annotations

import logging
import time
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fiqa.backbones.eqface_resnet import EQFaceQuality
from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.heads.eqface import EQFaceHead
from fiqa.heads.fc import ArcFaceHead
from fiqa.methods.eqface import EQFace
from tests.helpers.run_main import TINY, read_metrics, run_main

C, D = 6, 16
OPTIM = {"optimizer": partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4), "no_decay_bn": True}


def _model(step: int, **kw) -> EQFace:
    torch.manual_seed(step)
    return EQFace(iresnet_tiny(embedding_dim=D), EQFaceHead(C, D), optim=OPTIM, step=step, quality_hidden=32, **kw)


def _save(model: EQFace, path) -> str:
    torch.save({"state_dict": model.state_dict(), "fiqa_config": {}}, path)
    return str(path)


def _loader(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 112, 112, generator=g)
    labels = torch.randint(C, (n,), generator=g)
    items = [{"image": images[i], "label": labels[i], "index": torch.tensor(i)} for i in range(n)]
    return DataLoader(items, batch_size=8)


def _fit(model: EQFace, steps: int = 2) -> None:
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=_loader())


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def step1_ckpt(tmp_path_factory):
    m1 = _model(1)
    _fit(m1)
    return _save(m1, tmp_path_factory.mktemp("eq") / "step1.ckpt"), m1


def test_step2_loads_step1_and_freezes_its_backbone(step1_ckpt):
    path, m1 = step1_ckpt
    m2 = _model(2, step1_ckpt=path)
    assert isinstance(m2.quality_head, EQFaceQuality) and m2.quality_head.fc1.in_features == m2.backbone.feature_dim
    assert not any(p.requires_grad for p in m2.backbone.parameters())
    m2.train()
    assert not m2.backbone.training and m2.quality_head.training and m2.head.training
    head_before = _state(m2.head)
    quality_before = _state(m2.quality_head)
    _fit(m2)
    # the step-1 backbone AND head were loaded; the backbone (weights + BN running stats) never moved
    assert _equal(_state(m2.backbone), _state(m1.backbone))
    assert not _equal(_state(m2.head), head_before) and not _equal(_state(m2.head), _state(m1.head))
    assert not _equal(_state(m2.quality_head), quality_before)
    assert "backbone" not in m2.optimized_modules()
    optimised = {id(p) for g in m2.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in m2.backbone.parameters()}


def test_step2_quality_is_the_mean_over_the_flip(step1_ckpt):
    m2 = _model(2, step1_ckpt=step1_ckpt[0])
    m2.setup("fit")
    m2.eval()
    x = torch.randn(3, 3, 112, 112)
    q = m2(x).quality
    with torch.no_grad():
        q_x = m2.quality_head(m2.backbone(x, return_feature_map=True).feature_map)
        q_f = m2.quality_head(m2.backbone(x.flip(3), return_feature_map=True).feature_map)
    torch.testing.assert_close(q, 0.5 * (q_x + q_f))
    m2.quality_flip = False
    torch.testing.assert_close(m2(x).quality, q_x)
    m1 = step1_ckpt[1].eval()
    out = m1(x)
    torch.testing.assert_close(out.quality, out.embedding.norm(dim=1))  # step 1: the norm (no branch yet)


def test_step3_teacher_is_frozen_and_saved(step1_ckpt, tmp_path):
    m2 = _model(2, step1_ckpt=step1_ckpt[0])
    m2.setup("fit")
    with torch.no_grad():
        m2.quality_head.fc2.weight.normal_()  # a non-trivial branch
    teacher_path = _save(m2, tmp_path / "step2.ckpt")
    m3 = _model(3, teacher_ckpt=teacher_path)
    assert m3.quality_head is None and not any(p.requires_grad for p in m3.teacher.parameters())
    student_before = _state(m3.backbone)
    _fit(m3)
    assert _equal(_state(m3.teacher["backbone"]), _state(m2.backbone))  # weights and BN stats untouched
    assert _equal(_state(m3.teacher["quality"]), _state(m2.quality_head))
    assert not _equal(_state(m3.backbone), student_before)  # the new backbone is trained from scratch
    optimised = {id(p) for g in m3.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in m3.teacher.parameters()}
    assert any(k.startswith("teacher.quality.") for k in m3.state_dict())
    # quality at test time = the teacher's q, image and mirror averaged; the embedding is the student's
    m2.eval(), m3.eval()
    x = torch.randn(2, 3, 112, 112)
    out = m3(x)
    torch.testing.assert_close(out.quality, m2(x).quality)
    torch.testing.assert_close(out.embedding, m3.backbone(x).embedding)
    # rebuilt from its own state_dict without the teacher file (what task=eval does)
    fresh = _model(3, teacher_ckpt=str(tmp_path / "gone.ckpt"))
    fresh.load_state_dict(m3.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x).quality, out.quality)


def test_head_no_decay_and_errors(tmp_path):
    m1, m1_decayed = _model(1), _model(1, head_no_decay=False)
    _fit(m1, 1), _fit(m1_decayed, 1)
    group_of = {id(p): g["weight_decay"] for g in m1.trainer.optimizers[0].param_groups for p in g["params"]}
    assert group_of[id(m1.head.weight)] == 0.0 and group_of[id(m1.backbone.fc.weight)] == 5e-4
    group_of = {id(p): g["weight_decay"] for g in m1_decayed.trainer.optimizers[0].param_groups for p in g["params"]}
    assert group_of[id(m1_decayed.head.weight)] == 5e-4
    with pytest.raises(ValueError, match="method.step must be one of"):
        _model(4)
    with pytest.raises(ValueError, match="needs head=eqface"):
        EQFace(iresnet_tiny(embedding_dim=D), ArcFaceHead(C, D), step=1)
    with pytest.raises(ValueError, match="method.step1_ckpt"):
        _model(2).setup("fit")
    with pytest.raises(FileNotFoundError, match="method.teacher_ckpt"):
        _model(3, teacher_ckpt=str(tmp_path / "none.ckpt")).setup("fit")
    torch.save({"state_dict": _model(1).state_dict()}, tmp_path / "s1.ckpt")
    with pytest.raises(ValueError, match="holds no 'quality_head"):  # a step-1 checkpoint is not a teacher
        _model(3, teacher_ckpt=str(tmp_path / "s1.ckpt")).setup("fit")
    _model(2).setup("validate")  # the earlier step's file is read only to start training


def test_collapse_warning(caplog):
    m = _model(2)
    with caplog.at_level(logging.WARNING, logger="fiqa.methods.eqface"):
        m._log_quality_stats("val/synth", 100, 0.999, 1e-5)
    assert "collapsed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fiqa.methods.eqface"):
        m._log_quality_stats("val/synth", 100, 0.7, 0.1)
    assert "collapsed" not in caplog.text


def test_experiment_configs_compose(cfg_factory):
    from fiqa.tasks import build as B

    # paper scale as composed (deepcam-cn/FaceQuality config.py / train_*.py; experiments/eqface/README.md)
    for step in (1, 2, 3):
        cfg = cfg_factory(f"experiment=eqface_ms1mv2_r100_step{step}")
        assert cfg.backbone._target_.endswith("eqface_resnet100") and cfg.backbone.dropout == 0.4
        assert cfg.data.num_classes == 85742 and cfg.data.batch_size == 5000 and cfg.data.color == "rgb"
        assert cfg.optim.optimizer._target_ == "torch.optim.SGD" and cfg.optim.optimizer.momentum == 0.9
        assert cfg.optim.scheduler._target_.endswith("cosine_warmup") and cfg.optim.interval == "step"
        assert cfg.optim.scheduler.warmup_fraction == 0.1 and cfg.optim.lr_ref_batch == 5000
        assert cfg.trainer.max_epochs == 10 and cfg.trainer.gradient_clip_val is None
        assert cfg.trainer.precision == "bf16-mixed"
        assert sorted(cfg.val) == ["calfw", "cfp_fp", "cplfw", "lfw"]
        lr, wd, floor = (0.01, 0.0, 1e-3) if step == 2 else (0.05, 5e-4, 2e-4)
        assert (cfg.optim.optimizer.lr, cfg.optim.optimizer.weight_decay) == (lr, wd)
        assert cfg.optim.scheduler.min_factor == pytest.approx(floor)  # lr_min 1e-5 / lr
        assert cfg.run_name == f"eqface_ms1mv2_r100_step{step}-eqface_resnet100"

    small = ["data=synthface", "backbone=iresnet_tiny", "val=[synth]", "data.train.num_identities=4",
             "data.train.images_per_identity=2", "val.synth.dataset.num_pairs=20"]  # fmt: skip
    for step in (1, 2, 3):
        cfg = cfg_factory(f"experiment=eqface_ms1mv2_r100_step{step}", *small)
        assert cfg.method._target_ == "fiqa.methods.eqface.EQFace" and cfg.method.step == step
        assert cfg.head._target_ == "fiqa.heads.eqface.EQFaceHead" and (cfg.head.s, cfg.head.margin) == (64.0, 0.5)
        assert cfg.augment._target_.endswith("eqface_augment") and cfg.backbone._target_.endswith("iresnet_tiny")
        assert cfg.run_name == f"eqface_ms1mv2_r100_step{step}-iresnet_tiny"
        if step == 2:
            assert (cfg.optim.optimizer.lr, cfg.optim.optimizer.weight_decay, cfg.optim.lr_ref_batch) == (0.01, 0, 5000)
            assert cfg.callbacks.model_checkpoint.monitor is None
        _, view = B.build_val(cfg)
        m = B.build_method(cfg, view)
        assert isinstance(m, EQFace) and m.step == step
    cfg = cfg_factory("experiment=eqface_ms1mv2_r100_step3", "backbone=eqface_resnet50", *small[:1], *small[2:])
    assert cfg.backbone._target_.endswith("eqface_resnet50") and cfg.backbone.dropout == 0.4


@pytest.mark.slow  # 30-60 s on 2 cores: make test-full (CI time)
def test_three_steps_chain_through_main(tmp_path):
    """step 1 -> step 2 (step1_ckpt) -> step 3 (teacher_ckpt) -> task=eval of step 3, tiny settings."""
    start = time.monotonic()
    # the paper recipes on the SynthFace stand-in: CPU fp32, lr as given (not scaled to the paper's 5000 images)
    small = [*TINY, "data=synthface", "val=[synth]", "trainer.precision=32-true", "optim.lr_ref_batch=null",
             "val.synth.dataset.num_pairs=100", "val.synth.dataset.num_identities=30",
             "callbacks.quality_plots=null"]  # fmt: skip
    runs = {s: tmp_path / f"step{s}" for s in (1, 2, 3)}
    run_main("experiment=eqface_ms1mv2_r100_step1", *small, f"hydra.run.dir={runs[1]}")
    run_main("experiment=eqface_ms1mv2_r100_step2", f"method.step1_ckpt={runs[1] / 'checkpoints/last.ckpt'}", *small,
             f"hydra.run.dir={runs[2]}")  # fmt: skip
    run_main("experiment=eqface_ms1mv2_r100_step3", f"method.teacher_ckpt={runs[2] / 'checkpoints/last.ckpt'}", *small,
             f"hydra.run.dir={runs[3]}")  # fmt: skip
    sd = {s: torch.load(runs[s] / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
          for s in (1, 2, 3)}  # fmt: skip
    for k, v in sd[1].items():
        if k.startswith("backbone."):  # frozen in step 2 (BN stats included), the teacher of step 3
            assert torch.equal(sd[2][k], v), k
            assert torch.equal(sd[3]["teacher." + k], v), k
    for k, v in sd[2].items():
        if k.startswith("quality_head."):
            assert torch.equal(sd[3]["teacher.quality." + k[len("quality_head.") :]], v), k
    assert not torch.equal(sd[3]["backbone.fc.weight"], sd[1]["backbone.fc.weight"])
    m2, m3 = read_metrics(runs[2]), read_metrics(runs[3])
    assert m2["val/synth/acc"] == pytest.approx(read_metrics(runs[1])["val/synth/acc"], abs=1e-6)  # same backbone
    assert m3["val/synth/quality_spearman"] == pytest.approx(m2["val/synth/quality_spearman"], abs=1e-6)
    assert np.isfinite(m3["val/synth/quality_std"]) and 0 <= m3["val/synth/quality_mean"] <= 1
    run_main("task=eval", f"ckpt_path={runs[3] / 'checkpoints/last.ckpt'}", "trainer=cpu", "data.num_workers=0",
             "callbacks.progress=null", "callbacks.quality_plots=null", "val.synth.dataset.num_pairs=100",
             "val.synth.dataset.num_identities=30", f"hydra.run.dir={tmp_path / 'eval'}")  # fmt: skip
    e = read_metrics(tmp_path / "eval")
    for k in ("val/synth/acc", "val/synth/quality_spearman"):
        assert e[k] == pytest.approx(m3[k], abs=1e-6), k
    print(f"EQFace chain: {time.monotonic() - start:.0f} s")
