"""Mixed precision and torch.compile: what stays float32 under autocast, and the trainer options."""

import pytest
import torch
from torch import nn

from fiqa.backbones.iresnet import IResNet
from fiqa.heads.fc import ArcFaceHead
from fiqa.methods.crfiqa import CRFIQA
from fiqa.tasks.build import COMPILE_MODES, compile_backbone
from tests.helpers.run_main import TINY, TINY_VAL, read_metrics, run_main


def tiny_backbone(**kw) -> IResNet:
    torch.manual_seed(0)
    return IResNet(layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), embedding_dim=32, **kw).eval()


def test_embedding_tail_runs_in_float32_under_bf16_autocast():
    bb = tiny_backbone()
    x = torch.randn(4, 3, 112, 112)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bb(x, return_feature_map=True)
    assert out.feature_map.dtype == torch.bfloat16  # the trunk did run under autocast
    assert out.embedding.dtype == torch.float32
    # the tail by hand: the bf16 map cast up, fc and BN1d in float32 with autocast off
    expected = bb.features(bb.fc(out.feature_map.float()))
    torch.testing.assert_close(out.embedding, expected, rtol=0, atol=0)
    # and a bf16 fc would have differed: the check above can fail
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bb.features(bb.fc(out.feature_map))
    assert not torch.equal(low.float(), expected)


def test_dropout2d_tail_keeps_its_kind_and_float32():
    bb = tiny_backbone(dropout=0.5, dropout_kind="dropout2d")
    fmap = torch.randn(3, bb.feature_dim)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bb.tail(fmap, stochastic=True)
    torch.manual_seed(1)
    dropped = torch.nn.functional.dropout2d(fmap.view(3, *bb.map_shape), 0.5, training=True).flatten(1)
    torch.testing.assert_close(got, bb.features(bb.fc(dropped)), rtol=0, atol=0)
    assert got.dtype == torch.float32


def test_crfiqa_quality_and_losses_are_float32_under_autocast():
    bb = tiny_backbone()
    model = CRFIQA(bb, ArcFaceHead(num_classes=5, embedding_dim=32), optim={}, val_sets={}, channels_last=False)
    images, labels = torch.randn(6, 3, 112, 112), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        face = model(images)
        loss = model.training_step({"image": images, "label": labels, "index": torch.arange(6)}, 0)
    assert face.quality.dtype == torch.float32 and face.embedding.dtype == torch.float32
    q_by_hand = model.quality_head(face.embedding).squeeze(1)
    torch.testing.assert_close(face.quality, q_by_hand, rtol=0, atol=0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("bad", ["fast", "yes-please", 3])
def test_bad_compile_option_names_the_key_and_choices(bad):
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"trainer\.compile=.*max-autotune"):
        compile_backbone(model, bad)


def test_compile_false_leaves_the_backbone_eager():
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    for off in (False, None, "false"):
        compile_backbone(model, off)
    assert model.backbone._compiled_call_impl is None
    compile_backbone(model, True)
    assert model.backbone._compiled_call_impl is not None
    assert "default" in COMPILE_MODES


@pytest.mark.slow  # CI time: runs in make test-full
def test_bf16_mixed_training_through_main(tmp_path):
    run_main(*TINY, *TINY_VAL, "trainer.precision=bf16-mixed", f"hydra.run.dir={tmp_path}")
    m = read_metrics(tmp_path)
    assert 0.0 <= m["val/synth/acc"] <= 1.0 and m["val/synth/quality_spearman"] == m["val/synth/quality_spearman"]


@pytest.mark.slow
def test_compiled_backbone_trains_and_checkpoints_load(tmp_path):
    """torch.compile on CPU (inductor needs a C++ compiler): the run trains and its checkpoint keeps
    the plain parameter names, so task=eval loads it without compile."""
    run_main(*TINY, *TINY_VAL, "trainer.compile=true", f"hydra.run.dir={tmp_path}/train")
    ckpt = sorted((tmp_path / "train" / "checkpoints").glob("*.ckpt"))[0]
    keys = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"].keys()
    assert not any("_orig_mod" in k for k in keys)
    run_main("task=eval", f"ckpt_path={ckpt}", *TINY_VAL, "trainer=cpu", f"hydra.run.dir={tmp_path}/eval")
    assert "val/synth/acc" in read_metrics(tmp_path / "eval")


@pytest.mark.slow
def test_compiled_backbone_keeps_one_static_graph_per_training_batch_and_evaluates_eager():
    """trainer.compile: every training batch size gets its own static graph (dynamo's default would turn
    the batch dimension symbolic at the second size, and that slower graph would then serve every size),
    without graph breaks under autocast; evaluation runs eager and compiles nothing; the outputs equal the
    eager backbone's."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    bb = tiny_backbone()
    model = CRFIQA(bb, ArcFaceHead(num_classes=5, embedding_dim=32), optim={}, val_sets={}, channels_last=False)
    compile_backbone(model, True)
    model.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as under trainer.precision=bf16-mixed
        for b in (2, 3, 4):
            model.embed(torch.randn(b, 3, 112, 112))
    assert counters["stats"]["unique_graphs"] == 3  # with dynamic shapes: 2 (the size-4 call reuses the symbolic one)
    # and one graph per call: the float32 tail's autocast switch does not break it (torch 2.11 could not
    # trace torch.amp.is_autocast_available, and broke the graph there)
    assert not counters["graph_break"], dict(counters["graph_break"])
    model.eval()
    x = torch.randn(5, 3, 112, 112)
    with torch.no_grad():
        got = model.embed(x).embedding
        want = model.backbone.forward(x).embedding  # the plain module, no compile involved
    assert counters["stats"]["unique_graphs"] == 3
    torch.testing.assert_close(got, want, rtol=0, atol=0)
