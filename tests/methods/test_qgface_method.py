"""method=qgface: composes with its heads, two-view augmentation and BGR input; the datamodule's two-view
samples (single-view unchanged); a training step on [HQ; LQ] fills the queue and gates; the warm-up of
qs; the paper recipe; and (slow) a trainer=ddp_sim run whose checkpointed queue holds both ranks' entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.data.augment_presets import QGFaceViews
from fiqa.data.datamodule import FaceDataModule, FaceDataset, MultiView
from fiqa.data.synthface import SynthFace
from fiqa.heads.adaface import AdaFaceHead
from fiqa.heads.qgface import QGFaceContrast, QGFaceHead
from fiqa.methods.qgface import QGFace
from fiqa.tasks import build as B
from tests.conftest import compose_cfg
from tests.helpers.run_main import TINY, TINY_VAL, read_metrics, run_main

SMALL = ["data.train.num_identities=6", "data.train.images_per_identity=4", "val.synth.dataset.num_pairs=20"]


def _method(num_classes=4, dim=32, **kw):
    return QGFace(iresnet_tiny(embedding_dim=dim), QGFaceHead(num_classes, dim), channels_last=False, **kw)


def test_config_composes_heads_two_views_and_bgr(tmp_path):
    cfg = compose_cfg(["method=qgface", *SMALL], tmp_path)
    assert cfg.head._target_.endswith("QGFaceHead") and cfg.head.debias_stats is True
    assert (cfg.head.s, cfg.head.margin, cfg.head.h) == (64.0, 0.4, 0.333)
    assert cfg.augment._target_.endswith("MultiView") and list(cfg.augment.names) == ["image_lq", "image"]
    assert cfg.data.color == "bgr"
    built = B.build(cfg)
    m, dm = built.method, built.datamodule
    assert isinstance(m, QGFace) and isinstance(m.contrast_head, QGFaceContrast)
    assert m.contrast_head.queue_size == cfg.method.queue_size == 4096
    keys = set(m.state_dict())
    assert {f"contrast_head.queue_{k}" for k in ("embedding", "proxy", "label", "index", "ptr")} <= keys
    assert {"head.batch_mean", "head.batch_std", "head.weight"} <= keys
    sample = FaceDataset(dm.train_reader, dm.train_transform)[3]
    assert sample["image"].shape == sample["image_lq"].shape == (3, 112, 112) and sample["index"] == 3
    with pytest.raises(ValueError, match="QGFaceHead"):
        QGFace(iresnet_tiny(embedding_dim=32), AdaFaceHead(4, 32), channels_last=False)


def test_paper_recipe_composes(tmp_path):
    cfg = compose_cfg(["experiment=qgface_ms1mv2_r50"], tmp_path)
    assert cfg.method._target_.endswith("QGFace") and cfg.backbone._target_.endswith("ir50")
    assert cfg.data.batch_size == 512 and cfg.trainer.max_epochs == 26 and cfg.data.num_classes == 85742
    assert list(cfg.optim.scheduler.milestones) == [12, 20, 24] and cfg.data.color == "bgr"


def test_datamodule_two_views_and_single_view_unchanged():
    reader = SynthFace(num_identities=3, images_per_identity=2, seed=0)
    views = MultiView(QGFaceViews(flip_p=0.0, crop_p=0.0, photometric_p=0.0, rotation_p=0.0), ["image_lq", "image"])
    two = FaceDataModule(train=reader, augment=views, flip=0.0, color="bgr")
    one = FaceDataModule(train=reader, flip=0.0, color="bgr")
    ds2, ds1 = FaceDataset(reader, two.train_transform), FaceDataset(reader, one.train_transform)
    s2, s1 = ds2[4], ds1[4]
    assert set(s1) == {"image", "label", "index", "degradation", "skipped"}  # single view: as before
    assert set(s2) == set(s1) | {"image_lq"}
    torch.testing.assert_close(s2["image"], s1["image"])  # the HQ view is the image (no flip here)
    assert not torch.equal(s2["image_lq"], s2["image"])  # the LQ view is degraded
    batch = next(iter(torch.utils.data.DataLoader(ds2, batch_size=3)))
    assert batch["image_lq"].shape == batch["image"].shape == (3, 3, 112, 112)
    with pytest.raises(ValueError, match="one of them 'image'"):
        MultiView(views.augment, ["lq", "hq"])
    bad = FaceDataModule(train=reader, augment=MultiView(lambda img, rng: (img,), ["image_lq", "image"]))
    with pytest.raises(ValueError, match="must return 2 views, got 1 views"):
        FaceDataset(reader, bad.train_transform)[0]


def test_data_flip_flips_each_view_independently():
    reader = SynthFace(num_identities=2, images_per_identity=1, seed=0)
    img = reader[0][0]
    views = MultiView(lambda im, rng: (im.copy(), im.copy()), ["image_lq", "image"])
    dm = FaceDataModule(train=reader, augment=views, flip=0.5)
    rng = np.random.default_rng(0)
    flipped = torch.from_numpy(np.ascontiguousarray(img[:, ::-1].transpose(2, 0, 1))).float().sub(127.5).div(127.5)
    kinds = set()
    for _ in range(40):
        out = dm.train_transform(img, rng)
        kinds.add(tuple(bool(torch.equal(out[n], flipped)) for n in ("image_lq", "image")))
    assert kinds == {(False, False), (False, True), (True, False), (True, True)}


def test_training_step_on_both_views_fills_the_queue_and_is_finite():
    torch.manual_seed(0)
    m = _method(queue_size=64, joint_point=0)  # gates on from the start
    m.train()
    batch = {
        "image": torch.randn(6, 3, 112, 112),
        "image_lq": torch.randn(6, 3, 112, 112) * 0.3,
        "label": torch.tensor([0, 1, 2, 3, 0, 1]),
        "index": torch.arange(6) + 50,
        "skipped": torch.zeros(6, dtype=torch.long),
    }
    loss = m.training_step(batch, 0)
    assert torch.isfinite(loss)
    c = m.contrast_head
    assert c.filled == 12 and int(c.queue_ptr) == 12
    assert c.queue_index[:12].tolist() == [*range(50, 56)] * 2  # [HQ; LQ] of the batch
    torch.testing.assert_close(c.queue_proxy[:12], m.head.weight.detach()[batch["label"].repeat(2)])
    assert m.head.quality_scale == c.quality_scale == 0.5
    assert float(m.head.batch_mean) != 20.0  # the statistics moved
    loss.backward()
    assert m.head.weight.grad is not None and all(
        p.grad is not None for p in m.backbone.parameters() if p.requires_grad
    )
    with torch.no_grad():
        out = m(batch["image"])
    torch.testing.assert_close(out.quality, out.embedding.norm(dim=1))  # quality = feature norm
    with pytest.raises(ValueError, match="image_lq"):
        m.training_step({k: v for k, v in batch.items() if k != "image_lq"}, 0)


def test_losses_terms_and_contrast_weight_zero():
    torch.manual_seed(0)
    m = _method(queue_size=32)
    images = torch.randn(8, 3, 112, 112)
    batch = {"label": torch.tensor([0, 1, 2, 3] * 2), "index": torch.tensor([0, 1, 2, 3] * 2)}
    m.train()
    terms = m.losses(m.embed(images), batch)
    assert set(terms) == {"id", "con"} and all(torch.isfinite(v) for v in terms.values())
    off = _method(queue_size=32, contrast_weight=0.0).train()
    assert set(off.losses(off.embed(images), batch)) == {"id"} and off.contrast_head.filled == 0
    m.eval()  # outside training nothing is enqueued
    with torch.no_grad():
        m.losses(m.embed(images), batch)
    assert m.contrast_head.filled == 8


def test_warm_up_of_the_quality_scale():
    m = _method(quality_scale=0.6, joint_point=3)
    assert [m.quality_scale_at(e) for e in range(5)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.6])
    assert m.head.quality_scale == m.contrast_head.quality_scale == 0.0  # epoch 0: no gate
    m.set_quality_scale(2)
    assert m.head.quality_scale == m.contrast_head.quality_scale == pytest.approx(0.4)
    assert _method(quality_scale=0.6, joint_point=0).quality_scale_at(0) == 0.6
    with pytest.raises(ValueError, match="quality_scale"):
        _method(quality_scale=1.5)


@pytest.mark.slow
def test_ddp_sim_trains_with_the_queue_gathered(tmp_path):
    """16 ids x 8 images = 128 images, 2 ranks x 16 per step, 4 steps: a gathered queue of 256 holds both
    views of every training image; rank 0 alone sees half of them, so full coverage needs both ranks."""
    run_main(*TINY, *TINY_VAL, "method=qgface", "trainer=ddp_sim", "method.queue_size=256", f"hydra.run.dir={tmp_path}")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    idx, lab = sd["contrast_head.queue_index"], sd["contrast_head.queue_label"]
    assert sorted(idx.tolist()) == sorted(list(range(128)) * 2)
    assert int(sd["contrast_head.queue_ptr"]) == 0 and (lab >= 0).all()
    assert torch.equal(lab, idx // 8)  # labels stored with their samples (SynthFace: label = index // 8)
    # the checkpoint (queue and all) rebuilds strictly for task=eval
    run_main(
        *TINY,
        *TINY_VAL,
        "task=eval",
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert "val/synth/acc" in read_metrics(tmp_path / "eval")
