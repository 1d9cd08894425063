"""Each original's checkpoint layout -> fiqa modules: auto-detection, depth inference, every
tensor in the right place (markers and a full bijection check), the input convention, and the
full-size key counts (meta tensors: shapes only)."""

import pytest
import torch
import torch.nn.functional as F

from fiqa.backbones.eqface_resnet import EQFaceQuality, EQFaceResNet
from fiqa.backbones.ir import IR
from fiqa.backbones.iresnet import IResNet
from fiqa.interop import convert_released, load_released
from fiqa.methods.released import to_face_module
from tests.interop import originals as O

TINY_LAYERS = (2, 1, 3, 2)
SIDE = 2  # tiny maps: input 32 -> 2x2 (the released nets: 112 -> 7x7)


def _save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _assert_lands(module, original, mapping=lambda k: k):
    """Every original tensor sits, unchanged, under its mapped name in ``module``."""
    ours = module.state_dict()
    assert len(ours) == len(original)
    for key, value in original.items():
        torch.testing.assert_close(ours[mapping(key)], value.to(ours[mapping(key)].dtype), msg=key)


# ---- arcface_torch ---------------------------------------------------------------------------
def test_arcface_torch_auto(tmp_path):
    sd = O.insightface_iresnet(TINY_LAYERS, O.TINY, emb=8, side=SIDE)
    sd["layer3.2.conv2.weight"].fill_(7.0)  # marker
    r = load_released(_save(tmp_path, sd))
    assert r.format == "arcface_torch" and r.quality_kind == "norm" and r.quality_head is None
    assert r.arch == "iresnet(layers=[2, 1, 3, 2], widths=[4, 8, 12, 16], embedding_dim=8, input_size=32)"
    assert isinstance(r.backbone, IResNet) and not r.backbone.training
    assert torch.all(r.backbone.layer3[2].conv2.weight == 7.0)
    _assert_lands(r.backbone, sd)
    assert not r.backbone.features.weight.requires_grad  # fixed at 1 as in arcface_torch
    assert r.backbone.dropout.p == 0.0 and r.backbone.bn1.eps == 1e-5
    assert (r.color, r.normalize_mean, r.normalize_std) == ("rgb", (127.5,) * 3, (127.5,) * 3)


def test_arcface_torch_with_trained_features_bn_stays_trainable(tmp_path):
    sd = O.insightface_iresnet((1, 1, 1, 1), O.TINY, emb=8, side=SIDE)
    sd["features.weight"] = torch.full((8,), 0.5)
    r = load_released(_save(tmp_path, sd), format="arcface_torch")
    assert r.backbone.features.weight.requires_grad
    assert any("not all 1" in n for n in r.notes)


@pytest.mark.parametrize(
    "depth,layers,keys", [(18, (2, 2, 2, 2), 187), (50, (3, 4, 14, 3), 475), (200, (6, 26, 60, 6), None)]
)
def test_arcface_torch_full_size_depth_inferred(depth, layers, keys):
    sd = O.insightface_iresnet(layers, device="meta")
    with torch.device("meta"):
        r = convert_released(sd)
    assert (r.format, r.arch) == ("arcface_torch", f"iresnet{depth}")
    assert keys is None or len(r.backbone.state_dict()) == keys


# ---- CR-FIQA ---------------------------------------------------------------------------------
def test_crfiqa_auto_backbone_and_qs(tmp_path):
    sd = O.insightface_iresnet(TINY_LAYERS, O.TINY, emb=8, side=SIDE, qs=True)
    sd["qs.bias"].fill_(3.25)
    r = load_released(_save(tmp_path, sd, "32572backbone.pth"))
    assert (r.format, r.quality_kind, r.color) == ("crfiqa", "head", "rgb")
    torch.testing.assert_close(r.quality_head.weight, sd["qs.weight"])
    assert r.quality_head.bias.item() == 3.25
    backbone_sd = {k: v for k, v in sd.items() if not k.startswith("qs.")}
    _assert_lands(r.backbone, backbone_sd)
    assert r.backbone.features.weight.requires_grad  # trainable in CR-FIQA
    # quality = qs(BN1d embedding), raw
    model = to_face_module(r, channels_last=False)
    images = torch.randn(3, 3, 32, 32)
    out = model(images)
    emb = r.backbone(images).embedding
    torch.testing.assert_close(out.quality, F.linear(emb, sd["qs.weight"], sd["qs.bias"]).squeeze(1))
    torch.testing.assert_close(out.embedding, emb)


def test_crfiqa_r100_has_927_keys():
    sd = O.insightface_iresnet((3, 13, 30, 3), qs=True, device="meta")
    assert len(sd) == 927
    with torch.device("meta"):
        r = convert_released(sd)
    assert (r.format, r.arch) == ("crfiqa", "iresnet100")
    assert len(r.backbone.state_dict()) + len(r.quality_head.state_dict()) == 927


# ---- MagFace ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prefix,classifier", [("module.features.", "module.fc.weight"), ("features.module.", "parallel_fc.weight")]
)
def test_magface_both_prefixes(tmp_path, prefix, classifier):
    sd = O.insightface_iresnet(TINY_LAYERS, O.TINY, emb=8, side=SIDE)
    sd["features.weight"] = torch.rand(8) + 0.5
    sd["bn2.running_mean"].fill_(-2.5)  # marker
    state = O.prefixed(sd, prefix)
    state[classifier] = torch.randn(8, 11)
    ckpt = {"epoch": 25, "arch": "iresnet100", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}
    r = load_released(_save(tmp_path, ckpt, "magface_epoch_00025.pth"))
    assert (r.format, r.quality_kind, r.color) == ("magface", "norm", "bgr")
    assert (r.normalize_mean, r.normalize_std) == ((0.0,) * 3, (255.0,) * 3)
    assert torch.all(r.backbone.bn2.running_mean == -2.5)
    _assert_lands(r.backbone, sd)
    b = r.backbone
    assert b.bn1.eps == 2e-5 and b.bn1.momentum == 0.9 and b.dropout_kind == "dropout2d" and b.dropout.p == 0.4
    assert any(classifier in n for n in r.notes)
    # fiqa's (x - 127.5)/127.5 input is re-mapped to MagFace's x/255; quality = ||embedding||
    model = to_face_module(r, channels_last=False)
    pixels = torch.randint(0, 256, (2, 3, 32, 32)).float()
    out = model((pixels - 127.5) / 127.5)
    expected = b(pixels / 255.0).embedding
    torch.testing.assert_close(out.embedding, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.quality, expected.norm(dim=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prefix", ["module.features.", "features.module."])
def test_magface_r100_925_keys(prefix):
    sd = O.insightface_iresnet((3, 13, 30, 3), device="meta")
    assert len(sd) == 925
    state = O.prefixed(sd, prefix)
    state["parallel_fc.weight" if prefix.startswith("features") else "module.fc.weight"] = torch.empty(
        (85744, 512), device="meta"
    )
    with torch.device("meta"):
        r = convert_released({"state_dict": state, "epoch": 25})
    assert (r.format, r.arch, len(r.backbone.state_dict())) == ("magface", "iresnet100", 925)


# ---- AdaFace ---------------------------------------------------------------------------------
def _adaface_ckpt(sd, num_classes=13):
    state = O.prefixed(sd, "model.")
    state["head.kernel"] = torch.randn(sd["output_layer.3.weight"].shape[0], num_classes)
    state["head.t"] = torch.zeros(1)
    state["head.batch_mean"] = torch.ones(1) * 20
    state["head.batch_std"] = torch.ones(1) * 100
    return {"epoch": 25, "global_step": 100, "pytorch-lightning_version": "1.8.6", "state_dict": state}


def test_adaface_auto_and_bn1d_without_affine(tmp_path):
    sd = O.adaface_ir(TINY_LAYERS, O.TINY, emb=8, side=SIDE)
    sd["body.4.res_layer.4.weight"].fill_(-1.5)  # marker: stage 3, unit 1 (body.3 opens stage 3)
    r = load_released(_save(tmp_path, _adaface_ckpt(sd), "adaface_ir50_ms1mv2.ckpt"))
    assert (r.format, r.quality_kind, r.color) == ("adaface", "norm", "bgr")
    assert r.arch == "ir(layers=[2, 1, 3, 2], widths=[4, 8, 12, 16], embedding_dim=8, input_size=32)"
    assert isinstance(r.backbone, IR)
    assert torch.all(r.backbone.body[4].res_layer[4].weight == -1.5)
    _assert_lands(r.backbone, sd)
    # hand-built tail: Linear then (z - running_mean) / sqrt(running_var + eps), no affine
    images = torch.randn(2, 3, 32, 32)
    out = to_face_module(r, channels_last=False)(images)
    flat = r.backbone.trunk(images)
    z = F.linear(flat, sd["output_layer.3.weight"], sd["output_layer.3.bias"])
    expected = (z - sd["output_layer.4.running_mean"]) / torch.sqrt(sd["output_layer.4.running_var"] + 1e-5)
    torch.testing.assert_close(out.embedding, expected)
    torch.testing.assert_close(out.quality, expected.norm(dim=1))


@pytest.mark.parametrize(
    "name,layers,keys", [("ir50", (3, 4, 14, 3), 467), ("ir101", (3, 13, 30, 3), 917), ("ir18", (2, 2, 2, 2), 179)]
)
def test_adaface_full_size_counts(name, layers, keys):
    sd = O.adaface_ir(layers, device="meta")
    assert len(sd) == keys
    ckpt = {"state_dict": {**O.prefixed(sd, "model."), "head.kernel": torch.empty((512, 70722), device="meta")}}
    with torch.device("meta"):
        r = convert_released(ckpt)
    assert (r.format, r.arch, len(r.backbone.state_dict())) == ("adaface", name, keys)
    with torch.device("meta"):
        assert convert_released(ckpt, format="adaface", arch="ir_101" if name == "ir101" else name).arch == name


# ---- EQFace ----------------------------------------------------------------------------------
def test_eqface_backbone_and_quality(tmp_path):
    sd = O.eqface_resnet(TINY_LAYERS, O.TINY, emb=8, side=SIDE)
    feature_dim = O.TINY[-1] * SIDE * SIDE
    qsd = O.eqface_quality(feature_dim, hidden=6)
    qsd["qualtiy.3.weight"].fill_(0.0)
    qsd["qualtiy.3.weight"][0] = 0.3  # marker
    path = _save(tmp_path, O.prefixed(sd, "module."), "backbone.pth")
    qpath = _save(tmp_path, O.prefixed(qsd, "module."), "quality.pth")
    r = load_released(path, quality_path=qpath)
    assert (r.format, r.quality_kind, r.color) == ("eqface", "eqface", "rgb")
    assert isinstance(r.backbone, EQFaceResNet) and isinstance(r.quality_head, EQFaceQuality)
    _assert_lands(r.backbone, sd)
    names = {"qualtiy.0.": "fc1.", "qualtiy.1.": "bn.", "qualtiy.3.": "fc2."}
    _assert_lands(r.quality_head, qsd, lambda k: names[k[:10]] + k[10:])
    assert torch.all(r.quality_head.fc2.weight[0] == 0.3)
    # quality = softmax(branch(flattened pre-fc map))[:, 0], by hand
    images = torch.randn(3, 3, 32, 32)
    out = to_face_module(r, channels_last=False)(images)
    flat = r.backbone.trunk(images)
    h = F.batch_norm(
        flat @ qsd["qualtiy.0.weight"].T,
        qsd["qualtiy.1.running_mean"],
        qsd["qualtiy.1.running_var"],
        qsd["qualtiy.1.weight"],
        qsd["qualtiy.1.bias"],
        eps=1e-5,
    )
    z = h.clamp(min=0) @ qsd["qualtiy.3.weight"].T
    torch.testing.assert_close(out.quality, torch.softmax(z, dim=1)[:, 0])
    assert ((out.quality > 0) & (out.quality < 1)).all()


def test_eqface_without_quality_file_is_an_error_unless_the_quality_is_replaced(tmp_path):
    """EQFace's backbone.pth alone has no quality: an error that names quality.pth, never a silent norm;
    a caller that replaces the quality (quality=serfiq|norm) may load it with require_quality=False."""
    sd = O.eqface_resnet((1, 1, 1, 1), O.TINY, emb=8, side=SIDE)  # no module. prefix
    path = _save(tmp_path, sd)
    with pytest.raises(ValueError, match=r"no quality of its own.*quality\.pth.*quality_path="):
        load_released(path, format="eqface")
    with pytest.raises(ValueError, match="quality_path="):
        load_released(path)  # auto-detected: the same
    r = load_released(path, format="eqface", require_quality=False)
    assert r.quality_head is None and r.quality_kind == "norm"
    assert any("quality_path" in n for n in r.notes)


def test_eqface_resnet100_925_and_quality_7_keys():
    sd = O.prefixed(O.eqface_resnet((3, 13, 30, 3), device="meta"), "module.")
    qsd = O.prefixed(O.eqface_quality(25088, device="meta"), "module.")
    assert (len(sd), len(qsd)) == (925, 7)
    with torch.device("meta"):
        r = convert_released(sd, quality_obj=qsd)
    assert (r.format, r.arch, len(r.backbone.state_dict())) == ("eqface", "eqface_resnet100", 925)
    assert len(r.quality_head.state_dict()) == 7
