"""arcface_torch MobileFaceNet (mbf) and ViT checkpoints -> fiqa modules, strictly.

The state_dicts are built here from arcface_torch's key patterns (insightface
``recognition/arcface_torch/backbones/{mobilefacenet,vit,__init__}.py``: names, registration order,
shapes), independently of fiqa's modules; the reference forwards are transcriptions of its
``forward`` with plain ``torch.nn.functional`` ops. Full sizes are checked on the meta device
(shapes only) against the parameter counts of arcface_torch's own models."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from fiqa.backbones.arcface_mbf import ArcFaceMobileFaceNet
from fiqa.backbones.arcface_vit import ArcFaceViT
from fiqa.interop.checkpoints import CheckpointMismatchError
from fiqa.interop.formats import FORMATS, _detect_iresnet
from fiqa.interop.formats_arcface_torch import (
    EXTRA_FORMATS,
    _detect_mbf,
    _detect_vit,
    convert_arcface_torch_mbf,
    convert_arcface_torch_vit,
)
from fiqa.methods.released import to_face_module
from fiqa.quality.serfiq_torch import serfiq_quality
from tests.interop import originals as O

MBF_HIDDEN = {1: 128, 2: 128, 3: 128, 4: 256, 5: 256, 6: 512, 7: 256}  # DepthWise ``groups``, never scaled
ALL_FORMATS = {**FORMATS, **{f.name: f for f in EXTRA_FORMATS}}


# ---- state_dicts from the key patterns ---------------------------------------------------------
class _Builder:
    """Tensors in insertion order; random but well scaled (fan-in weights, BN/LN near identity)."""

    def __init__(self, device: str = "cpu", seed: int = 0):
        self.sd: OrderedDict = OrderedDict()
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)

    def _rand(self, shape, scale=1.0, shift=0.0):
        if self.device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=self.gen) * scale + shift

    def w(self, name, *shape, scale=None):
        fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
        self.sd[name] = self._rand(shape, (fan_in**-0.5) if scale is None else scale)

    def bn(self, name, n):
        self.sd[f"{name}.weight"] = self._rand((n,), 0.1, 1.0)
        self.sd[f"{name}.bias"] = self._rand((n,), 0.1)
        self.sd[f"{name}.running_mean"] = self._rand((n,), 0.1)
        var = self._rand((n,))
        self.sd[f"{name}.running_var"] = var if self.device == "meta" else torch.rand(n, generator=self.gen) + 0.5
        self.sd[f"{name}.num_batches_tracked"] = torch.tensor(11, device=self.device)

    def ln(self, name, n):
        self.sd[f"{name}.weight"] = self._rand((n,), 0.1, 1.0)
        self.sd[f"{name}.bias"] = self._rand((n,), 0.1)


def mbf_state(scale=2, blocks=(1, 4, 6, 2), num_features=512, gdc=7, device="cpu"):
    """arcface_torch ``MobileFaceNet``: ConvBlock/LinearBlock ``layers.{0,1[,2]}``, DepthWise
    ``layers.{0,1,2}``, Residual ``layers.{j}``; the ModuleList ``layers.0..7``, ``conv_sep``, GDC ``features``."""
    b = _Builder(device, seed=5)

    def block(p, cin, cout, k, groups=1, act=True):
        b.w(f"{p}.layers.0.weight", cout, cin // groups, k, k)
        b.bn(f"{p}.layers.1", cout)
        if act:
            b.sd[f"{p}.layers.2.weight"] = b._rand((cout,), 0.05, 0.25)  # PReLU

    def depthwise(p, cin, cout, hidden):
        block(f"{p}.layers.0", cin, hidden, 1)
        block(f"{p}.layers.1", hidden, hidden, 3, groups=hidden)
        block(f"{p}.layers.2", hidden, cout, 1, act=False)

    def residual(p, c, n, hidden):
        for j in range(n):
            depthwise(f"{p}.layers.{j}", c, c, hidden)

    c1, c2 = 64 * scale, 128 * scale
    block("layers.0", 3, c1, 3)
    if blocks[0] == 1:
        block("layers.1", c1, c1, 3, groups=64)
    else:
        residual("layers.1", c1, blocks[0], MBF_HIDDEN[1])
    depthwise("layers.2", c1, c1, MBF_HIDDEN[2])
    residual("layers.3", c1, blocks[1], MBF_HIDDEN[3])
    depthwise("layers.4", c1, c2, MBF_HIDDEN[4])
    residual("layers.5", c2, blocks[2], MBF_HIDDEN[5])
    depthwise("layers.6", c2, c2, MBF_HIDDEN[6])
    residual("layers.7", c2, blocks[3], MBF_HIDDEN[7])
    block("conv_sep", c2, 512, 1)
    block("features.layers.0", 512, 512, gdc, groups=512, act=False)
    b.w("features.layers.2.weight", num_features, 512)
    b.bn("features.layers.3", num_features)
    return b.sd


def vit_state(embed_dim=16, depth=2, num_features=8, patch=9, img=112, device="cpu"):
    """arcface_torch ``VisionTransformer`` (norm_layer="ln", qkv_bias=False, mlp_ratio 4), in its
    state_dict order: own parameters (pos_embed, mask_token), patch_embed, blocks (norm1, norm2,
    attn, mlp), norm, feature."""
    b = _Builder(device, seed=6)
    e, n = embed_dim, (img // patch) ** 2
    b.w("pos_embed", 1, n, e, scale=0.5)
    b.w("mask_token", 1, 1, e, scale=0.02)
    b.w("patch_embed.proj.weight", e, 3, patch, patch)
    b.w("patch_embed.proj.bias", e, scale=0.1)
    for i in range(depth):
        p = f"blocks.{i}"
        b.ln(f"{p}.norm1", e)
        b.ln(f"{p}.norm2", e)
        b.w(f"{p}.attn.qkv.weight", 3 * e, e)
        b.w(f"{p}.attn.proj.weight", e, e)
        b.w(f"{p}.attn.proj.bias", e, scale=0.1)
        b.w(f"{p}.mlp.fc1.weight", 4 * e, e)
        b.w(f"{p}.mlp.fc1.bias", 4 * e, scale=0.1)
        b.w(f"{p}.mlp.fc2.weight", e, 4 * e)
        b.w(f"{p}.mlp.fc2.bias", e, scale=0.1)
    b.ln("norm", e)
    b.w("feature.0.weight", e, n * e)
    b.bn("feature.1", e)
    b.w("feature.2.weight", num_features, e)
    b.bn("feature.3", num_features)
    return b.sd


# ---- arcface_torch's forward, transcribed with functional ops ----------------------------------
def _bn(x, sd, p, eps=1e-5):
    w, b = sd[f"{p}.weight"], sd[f"{p}.bias"]
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], w, b, training=False, eps=eps)


def _block(x, sd, p, stride=1, act=True):
    """ConvBlock / LinearBlock: conv (groups from the shapes, 'same' padding) -> BN [-> PReLU]."""
    w = sd[f"{p}.layers.0.weight"]
    groups = x.shape[1] // w.shape[1]
    x = _bn(F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups), sd, f"{p}.layers.1")
    return F.prelu(x, sd[f"{p}.layers.2.weight"]) if act else x


def _depthwise(x, sd, p, stride, residual):
    y = _block(x, sd, f"{p}.layers.0")
    y = _block(y, sd, f"{p}.layers.1", stride=stride)
    y = _block(y, sd, f"{p}.layers.2", act=False)
    return x + y if residual else y


def mbf_reference(sd, images):
    x = _block(images, sd, "layers.0", stride=2)
    if "layers.1.layers.0.weight" in sd:
        x = _block(x, sd, "layers.1")
    for i in (1, 2, 3, 4, 5, 6, 7):
        if i in (2, 4, 6):
            x = _depthwise(x, sd, f"layers.{i}", 2, residual=False)
            continue
        j = 0
        while f"layers.{i}.layers.{j}.layers.0.layers.0.weight" in sd:
            x = _depthwise(x, sd, f"layers.{i}.layers.{j}", 1, residual=True)
            j += 1
    x = _block(x, sd, "conv_sep")
    w = sd["features.layers.0.layers.0.weight"]
    x = _bn(F.conv2d(x, w, groups=512), sd, "features.layers.0.layers.1").flatten(1)
    return _bn(F.linear(x, sd["features.layers.2.weight"]), sd, "features.layers.3")


def vit_reference(sd, images, heads=8):
    w = sd["patch_embed.proj.weight"]
    e, patch = w.shape[0], w.shape[-1]
    x = F.conv2d(images, w, sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    x = x + sd["pos_embed"]
    bsz, n, _ = x.shape
    i = 0
    while f"blocks.{i}.attn.qkv.weight" in sd:
        p = f"blocks.{i}"
        y = F.layer_norm(x, (e,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], 1e-5)
        q, k, v = F.linear(y, sd[f"{p}.attn.qkv.weight"]).reshape(bsz, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(bsz, n, e)  # scale (e/heads)^-0.5
        x = x + F.linear(o, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
        y = F.layer_norm(x, (e,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], 1e-5)
        y = F.relu6(F.linear(y, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"]))
        x = x + F.linear(y, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
        i += 1
    x = F.layer_norm(x, (e,), sd["norm.weight"], sd["norm.bias"], 1e-5).reshape(bsz, n * e)
    x = _bn(F.linear(x, sd["feature.0.weight"]), sd, "feature.1", eps=2e-5)
    return _bn(F.linear(x, sd["feature.2.weight"]), sd, "feature.3", eps=2e-5)


def _images(n=3, size=112, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _check_released(r, fmt, arch, sd):
    assert (r.format, r.arch, r.quality_kind, r.quality_head, r.color) == (fmt, arch, "norm", None, "rgb")
    assert (r.normalize_mean, r.normalize_std) == ((127.5,) * 3, (127.5,) * 3)
    assert not r.backbone.training and r.backbone.dropout.p == 0.0
    ours = r.backbone.state_dict()
    assert list(ours) == list(sd)  # the same names in the same order
    for key, value in sd.items():
        assert torch.equal(ours[key], value), key


def _check_contract(backbone, images, reference, feature_dim):
    with torch.no_grad():
        out = backbone(images, return_feature_map=True)
        assert out.feature_map.shape == (images.shape[0], feature_dim) == (images.shape[0], backbone.feature_dim)
        assert out.embedding.shape == reference.shape and reference.std() > 0.1
        torch.testing.assert_close(out.embedding, reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backbone.tail(out.feature_map, stochastic=False), out.embedding)
        torch.testing.assert_close(backbone(images).embedding, out.embedding, rtol=0, atol=0)  # deterministic


# ---- mbf -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scale,blocks,feats,size,arch",
    [
        (2, (1, 4, 6, 2), 512, 112, "mbf"),
        (2, (2, 1, 2, 1), 8, 32, "mbf(scale=2, blocks=[2, 1, 2, 1], num_features=8, input_size=32)"),
        (4, (2, 1, 1, 1), 16, 32, "mbf(scale=4, blocks=[2, 1, 1, 1], num_features=16, input_size=32)"),
    ],
)
def test_mbf_strict_load_and_output_parity(scale, blocks, feats, size, arch):
    sd = mbf_state(scale, blocks, feats, gdc=size // 16)  # 112 -> 7x7 GDC; 32 -> 2x2 (fast)
    sd["layers.5.layers.0.layers.1.layers.0.weight"][3].fill_(0.7)  # marker: stage 5, unit 0, depthwise conv
    r = convert_arcface_torch_mbf(sd, None, None, "model.pt")
    _check_released(r, "arcface_torch_mbf", arch, sd)
    assert isinstance(r.backbone, ArcFaceMobileFaceNet) and (r.backbone.scale, r.backbone.blocks) == (scale, blocks)
    assert torch.all(r.backbone.layers[5].layers[0].layers[1].layers[0].weight[3] == 0.7)
    images = _images(2, size)
    reference = mbf_reference(sd, images)
    _check_contract(r.backbone, images, reference, 512)
    # fiqa's input convention is arcface_torch's: no re-mapping, quality = ||embedding||
    out = to_face_module(r, channels_last=False)(images)
    torch.testing.assert_close(out.quality, reference.norm(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arch,scale,blocks,keys,params",
    [("mbf", 2, (1, 4, 6, 2), 333, 2_059_520), ("mbf_large", 4, (2, 8, 12, 4), 606, 6_314_880)],
)
def test_mbf_full_size_inferred_and_by_name(arch, scale, blocks, keys, params):
    sd = mbf_state(scale, blocks, device="meta")
    assert len(sd) == keys
    assert sum(v.numel() for k, v in sd.items() if "running_" not in k and "num_batches" not in k) == params
    with torch.device("meta"):
        r = convert_arcface_torch_mbf(sd, None, None, "model.pt")
        assert convert_arcface_torch_mbf(sd, arch, None, "model.pt").arch == arch
    assert r.arch == arch and len(r.backbone.state_dict()) == keys
    assert sum(p.numel() for p in r.backbone.parameters()) == params


# ---- ViT -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "embed_dim,depth,feats,img,arch",
    [
        (16, 2, 8, 112, "vit(embed_dim=16, depth=2, num_features=8)"),
        (32, 3, 12, 36, "vit(embed_dim=32, depth=3, num_features=12, img_size=36, patch_size=9)"),
    ],
)
def test_vit_strict_load_and_output_parity(embed_dim, depth, feats, img, arch):
    sd = vit_state(embed_dim, depth, feats, img=img)
    sd["blocks.1.mlp.fc2.weight"][0].fill_(-0.3)  # marker
    r = convert_arcface_torch_vit(sd, None, None, "model.pt")
    _check_released(r, "arcface_torch_vit", arch, sd)
    b = r.backbone
    assert isinstance(b, ArcFaceViT) and (b.embed_dim, b.depth, b.num_heads) == (embed_dim, depth, 8)
    assert torch.all(b.blocks[1].mlp.fc2.weight[0] == -0.3)
    images = _images(size=img)
    _check_contract(b, images, vit_reference(sd, images), (img // 9) ** 2 * embed_dim)
    out = to_face_module(r, channels_last=True)(images)  # fiqa's default memory format
    torch.testing.assert_close(out.embedding, vit_reference(sd, images), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"{img}x{img}"):
        b(_images(1, size=img + 9))


def test_vit_masking_only_in_training_and_always_ten_percent():
    """arcface_torch calls random_masking(x) without its ratio: 0.1 whenever mask_ratio > 0."""
    sd = vit_state(16, 2, 8)
    b = convert_arcface_torch_vit(sd, None, None, "model.pt").backbone
    b.mask_ratio = 0.05  # vit_b_dp005_mask_005's setting: still 0.1 applied
    images = _images(2)
    with torch.no_grad():
        eval_map = b.trunk(images)
        b.train()
        train_map = b.trunk(images).view(2, 144, 16)
    b.eval()
    is_token = (train_map == sd["mask_token"].view(1, 1, 16)).all(dim=2)
    assert is_token.sum(dim=1).tolist() == [144 - int(144 * 0.9)] * 2  # 15 of 144 tokens dropped
    assert not (eval_map.view(2, 144, 16) == sd["mask_token"].view(1, 1, 16)).all(dim=2).any()
    b.mask_ratio = 0.0
    b.train()
    with torch.no_grad():
        torch.testing.assert_close(b.trunk(images), eval_map)


@pytest.mark.parametrize(
    "arch,embed_dim,depth,keys,params,twins",
    [
        ("vit_t", 256, 12, 150, 19_137_792, ["vit_t_dp005_mask0"]),
        ("vit_s", 512, 12, 150, 76_023_296, ["vit_s_dp005_mask_0"]),
        ("vit_b", 512, 24, 282, 113_833_472, ["vit_b_dp005_mask_005"]),
        ("vit_l_dp005_mask_005", 768, 24, 282, 255_684_352, []),
        ("vit_h", 1024, 48, 546, None, []),
    ],
)
def test_vit_full_size_inferred(arch, embed_dim, depth, keys, params, twins):
    sd = vit_state(embed_dim, depth, 512, device="meta")
    assert len(sd) == keys and tuple(sd["pos_embed"].shape) == (1, 144, embed_dim)
    assert tuple(sd["feature.0.weight"].shape) == (embed_dim, 144 * embed_dim)
    with torch.device("meta"):
        r = convert_arcface_torch_vit(sd, None, None, "model.pt")
    assert r.arch == arch and len(r.backbone.state_dict()) == keys
    assert params is None or sum(p.numel() for p in r.backbone.parameters()) == params
    if twins:
        assert any(twins[0] in n for n in r.notes)
    for twin in twins:  # the drop-path / mask variants: same keys, training settings from arcface_torch
        with torch.device("meta"):
            rt = convert_arcface_torch_vit(sd, twin, None, "model.pt")
        assert rt.arch == twin and rt.backbone.blocks[-1].drop_path == pytest.approx(0.05)


def test_vit_arch_override_mismatch_is_strict():
    sd = vit_state(16, 2, 8)
    with pytest.raises(CheckpointMismatchError, match="patch_embed.proj.weight: checkpoint"):
        convert_arcface_torch_vit(sd, "vit_t", None, "model.pt")
    with pytest.raises(ValueError, match="vit_t_dp005_mask0"):
        convert_arcface_torch_vit(sd, "vit_x", None, "model.pt")


# ---- mismatches and layouts ------------------------------------------------------------------
@pytest.mark.parametrize(
    "build,convert,key",
    [
        (lambda: mbf_state(2, (1, 1, 1, 1), 8), convert_arcface_torch_mbf, "layers.5.layers.0.layers.2.layers.1.bias"),
        (lambda: vit_state(16, 2, 8), convert_arcface_torch_vit, "blocks.1.norm2.bias"),
    ],
)
def test_missing_or_misshaped_key(build, convert, key):
    sd = build()
    del sd[key]
    with pytest.raises(CheckpointMismatchError, match="1 missing key") as err:
        convert(sd, None, None, "model.pt")
    assert err.value.missing == [key] and "model.pt" in str(err.value)
    sd = build()
    sd[key] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match="another shape") as err:
        convert(sd, None, None, "model.pt")
    assert [k for k, _, _ in err.value.mismatched] == [key]
    sd = build()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match="unexpected") as err:
        convert(sd, None, None, "model.pt")
    assert err.value.unexpected == ["extra.weight"]


def test_layouts_that_match_nothing_name_what_was_found():
    sd = vit_state(16, 3, 8)
    for k in [k for k in sd if k.startswith("blocks.1.")]:
        del sd[k]
    with pytest.raises(ValueError, match=r"blocks: units \[0, 2\]"):
        convert_arcface_torch_vit(sd, None, None, "model.pt")
    sd = mbf_state(2, (1, 1, 1, 1), 8)
    sd["layers.0.layers.0.weight"] = torch.zeros(100, 3, 3, 3)
    with pytest.raises(ValueError, match="100 output channels"):
        convert_arcface_torch_mbf(sd, None, None, "model.pt")
    with pytest.raises(ValueError, match=r"\['mbf', 'mbf_large'\]"):
        convert_arcface_torch_mbf(sd, "mbf_small", None, "model.pt")
    with pytest.raises(ValueError, match="bare state_dict"):
        convert_arcface_torch_vit({"state_dict_backbone": vit_state(16, 1, 8)}, None, None, "ckpt.pt")


def test_detection_is_exclusive():
    mbf, vit = mbf_state(2, (1, 1, 1, 1), 8), vit_state(16, 1, 8)
    iresnet = O.insightface_iresnet((1, 1, 1, 1), O.TINY, emb=8, side=2)
    crfiqa = O.insightface_iresnet((1, 1, 1, 1), O.TINY, emb=8, side=2, qs=True)
    assert _detect_mbf(mbf) is None and _detect_vit(vit) is None
    for other in (vit, iresnet, crfiqa):
        assert "features.layers.2.weight" in _detect_mbf(other)
    for other in (mbf, iresnet, crfiqa):
        assert "patch_embed.proj.weight" in _detect_vit(other)
    for ours in (mbf, vit):
        assert _detect_iresnet(ours, with_qs=False) is not None and _detect_iresnet(ours, with_qs=True) is not None
    for ours, name in ((mbf, "arcface_torch_mbf"), (vit, "arcface_torch_vit")):
        assert [n for n, f in ALL_FORMATS.items() if f.detect(ours) is None] == [name]
    assert [n for n, f in ALL_FORMATS.items() if f.detect(iresnet) is None] == ["arcface_torch"]
    assert "not a bare state_dict" in _detect_vit({"state_dict": vit})


def test_serfiq_runs_on_both():
    """SER-FIQ uses the backbone's dropout/fc/features: the GDC Linear + BN1d, the ViT's feature head."""
    gen = torch.Generator().manual_seed(0)
    for r in (
        convert_arcface_torch_mbf(mbf_state(2, (1, 1, 1, 1), 8, gdc=2), None, None, "m"),
        convert_arcface_torch_vit(vit_state(16, 1, 8), None, None, "v"),
    ):
        size = 32 if isinstance(r.backbone, ArcFaceMobileFaceNet) else 112
        q = serfiq_quality(r.backbone, _images(2, size), T=4, p=0.3, generator=gen)
        assert q.shape == (2,) and bool(torch.all((q > 0) & (q <= 1)))
        assert not r.backbone.training


@pytest.mark.skipif("arcface_torch_vit" not in FORMATS, reason="EXTRA_FORMATS not registered in FORMATS yet")
def test_load_released_auto(tmp_path):
    from fiqa.interop import load_released

    for sd, name in ((mbf_state(2, (1, 1, 1, 1), 8), "arcface_torch_mbf"), (vit_state(16, 1, 8), "arcface_torch_vit")):
        torch.save(sd, tmp_path / "model.pt")
        assert load_released(tmp_path / "model.pt").format == name
