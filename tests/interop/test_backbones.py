"""IR (AdaFace) and EQFace ResNet backbones: the originals' key names, order, counts and shapes;
forward passes against hand-built references (BN1d without affine, EQFace's quality softmax)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fiqa.backbones.base import TrunkTailBackbone
from fiqa.backbones.eqface_resnet import EQFaceQuality, EQFaceResNet, eqface_resnet100
from fiqa.backbones.ir import IR, IRBlock, ir18, ir34, ir50, ir101
from tests.interop import originals as O


def _meta(factory, **kw):
    with torch.device("meta"):
        return factory(**kw)


def _shapes(sd):
    return [(k, tuple(v.shape)) for k, v in sd.items()]


@pytest.mark.parametrize(
    "factory,layers,keys,params",
    [
        (ir18, (2, 2, 2, 2), 179, None),
        (ir34, (3, 4, 6, 3), None, None),
        (ir50, (3, 4, 14, 3), 467, 43_585_600),
        (ir101, (3, 13, 30, 3), 917, 65_150_912),
    ],
    ids=["ir18", "ir34", "ir50", "ir101"],
)
def test_ir_keys_equal_adaface_in_order(factory, layers, keys, params):
    model = _meta(factory)
    original = O.adaface_ir(layers, device="meta")
    assert _shapes(model.state_dict()) == _shapes(original)  # names, order and shapes
    if keys is not None:
        assert len(original) == keys
    if params is not None:  # reference: 43.6 M / 65.2 M
        assert sum(p.numel() for p in model.parameters()) == params


def test_ir_conv_shortcuts_where_adaface_has_them():
    sd = _meta(ir50).state_dict()
    assert sorted({int(k.split(".")[1]) for k in sd if "shortcut_layer" in k}) == [3, 7, 21]
    sd = _meta(ir101).state_dict()
    assert sorted({int(k.split(".")[1]) for k in sd if "shortcut_layer" in k}) == [3, 16, 46]
    model = _meta(ir18)
    pool = model.body[0].shortcut_layer
    assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 1 and pool.stride == 2
    assert isinstance(model.body[1].shortcut_layer, nn.MaxPool2d) and model.body[1].shortcut_layer.stride == 1
    assert "output_layer.4.weight" not in model.state_dict()  # BN1d without affine


def test_eqface_resnet100_keys_equal_the_original():
    model = _meta(eqface_resnet100)
    original = O.eqface_resnet((3, 13, 30, 3), device="meta")
    assert len(original) == 925
    assert _shapes(model.state_dict()) == _shapes(original)
    assert sum(p.numel() for p in model.parameters()) == 65_156_160
    assert model.layer1[0].shortcut_layer is not None  # conv shortcut even for 64 -> 64
    assert model.layer1[1].shortcut_layer is None


def _tiny_ir(**kw):
    torch.manual_seed(0)
    return IR(layers=(1, 2, 1, 1), widths=O.TINY, embedding_dim=8, input_size=32, **kw)


def test_ir_is_a_trunk_tail_backbone_and_bn1d_has_no_affine():
    model = _tiny_ir()
    assert isinstance(model, TrunkTailBackbone)
    bn1d = model.features
    bn1d.running_mean.uniform_(-1, 1)
    bn1d.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    out = model(x, return_feature_map=True)
    flat = out.feature_map
    assert flat.shape == (3, model.feature_dim) == (3, 16 * 2 * 2)
    # hand-built: BN2d -> flatten (trunk), then Linear, then (z - mean) / sqrt(var + eps), no affine
    z = F.linear(flat, model.output_layer[3].weight, model.output_layer[3].bias)
    expected = (z - bn1d.running_mean) / torch.sqrt(bn1d.running_var + bn1d.eps)
    torch.testing.assert_close(out.embedding, expected)
    torch.testing.assert_close(model.tail(flat, stochastic=False), out.embedding)


def test_ir_stochastic_tail_for_serfiq():
    model = _tiny_ir(dropout=0.5).eval()
    images = torch.randn(2, 3, 32, 32)
    flat = model.trunk(images)
    a, b = model.tail(flat, stochastic=True), model.tail(flat, stochastic=True)
    assert not torch.allclose(a, b)  # dropout on although the model is in eval mode
    torch.testing.assert_close(model.tail(flat, stochastic=False), model(images).embedding)
    assert model.dropout.p == 0.5 and model.fc is model.output_layer[3]


def test_ir_block_math():
    torch.manual_seed(0)
    pool = IRBlock(4, 4, 2).eval()
    conv = IRBlock(4, 8, 2).eval()
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(pool(x), pool.res_layer(x) + x[:, :, ::2, ::2])
    torch.testing.assert_close(conv(x), conv.res_layer(x) + conv.shortcut_layer(x))
    with pytest.raises(ValueError, match="identity shortcut"):
        IRBlock(4, 8, 1, "identity")


def test_eqface_quality_branch_softmax():
    torch.manual_seed(0)
    q = EQFaceQuality(in_features=20, hidden=6).eval()
    q.bn.running_mean.uniform_(-1, 1)
    q.bn.running_var.uniform_(0.5, 2)
    q.bn.weight.data.uniform_(0.5, 1.5)
    q.bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(5, 20)
    h = x @ q.fc1.weight.T
    h = (h - q.bn.running_mean) / torch.sqrt(q.bn.running_var + 1e-5) * q.bn.weight + q.bn.bias
    z = torch.clamp(h, min=0) @ q.fc2.weight.T
    expected = torch.exp(z[:, 0]) / torch.exp(z).sum(1)  # = sigmoid(z0 - z1)
    torch.testing.assert_close(q(x), expected)
    torch.testing.assert_close(q(x), torch.sigmoid(z[:, 0] - z[:, 1]))
    assert q.fc1.bias is None and q.fc2.bias is None


def test_eqface_resnet_forward_shapes():
    torch.manual_seed(0)
    model = EQFaceResNet(layers=(1, 1, 2, 1), widths=O.TINY, embedding_dim=8, input_size=32).eval()
    out = model(torch.randn(2, 3, 32, 32), return_feature_map=True)
    assert out.embedding.shape == (2, 8) and out.feature_map.shape == (2, 16 * 4)
    torch.testing.assert_close(model.tail(out.feature_map, stochastic=False), out.embedding)
