"""MobileFaceNet, TimmBackbone and the conf/backbone/*.yaml files."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fiqa.backbones import IR, EQFaceResNet, IResNet, MobileFaceNet, TimmBackbone
from fiqa.types import BackboneOutput

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"
BIG = {
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "ir50",
    "ir101",
    "eqface_resnet50",
    "eqface_resnet100",
}  # structure on the meta device only


def _images(n=2, size=112):
    return torch.rand(n, 3, size, size) * 2 - 1


def _check_contract(model, n=2, size=112):
    out = model(_images(n, size))
    assert isinstance(out, BackboneOutput) and out.feature_map is None
    assert out.embedding.shape == (n, model.embedding_dim)
    out = model(_images(n, size), return_feature_map=True)
    assert out.feature_map.shape == (n, model.feature_dim)
    model.eval()
    images = _images(n, size)
    out = model(images, return_feature_map=True)
    assert torch.allclose(model.tail(out.feature_map, stochastic=False), out.embedding, atol=1e-6)
    return out


# ---------------------------------------------------------------- MobileFaceNet
def test_mobilefacenet_contract():
    torch.manual_seed(0)
    model = MobileFaceNet()
    assert model.embedding_dim == 512 and model.feature_dim == 512
    _check_contract(model)
    assert model.gdc[0].kernel_size == (7, 7) and model.gdc[0].groups == 512
    assert model.fc.bias is None


def test_mobilefacenet_paper_size():
    # Chen et al. 2018: 0.99M parameters with a 128-d embedding
    n = sum(p.numel() for p in MobileFaceNet(embedding_dim=128).parameters())
    assert 0.95e6 < n < 1.05e6


def test_mobilefacenet_width_and_size():
    model = MobileFaceNet(embedding_dim=64, width_mult=0.5, input_size=96)
    assert model.gdc[0].kernel_size == (6, 6)  # 96 -> 48 -> 24 -> 12 -> 6
    out = model(_images(2, 96), return_feature_map=True)
    assert out.embedding.shape == (2, 64) and out.feature_map.shape == (2, 512)


def test_mobilefacenet_dropout_tail():
    torch.manual_seed(0)
    model = MobileFaceNet(embedding_dim=32, dropout=0.5).eval()
    fmap = model(_images(), return_feature_map=True).feature_map
    assert not torch.allclose(model.tail(fmap, stochastic=True), model.tail(fmap, stochastic=True))
    assert torch.equal(model.tail(fmap, stochastic=False), model.tail(fmap, stochastic=False))


# ---------------------------------------------------------------- timm
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050"])
def test_timm_contract(name):
    torch.manual_seed(0)
    model = TimmBackbone(name, embedding_dim=64)
    _check_contract(model)


def test_timm_feature_dim_and_pool_mode():
    flat = TimmBackbone("resnet18", embedding_dim=32)
    assert flat.feature_dim == 512 * 4 * 4  # 112 / 32 = 3.5 -> 4x4 map, flattened
    pooled = TimmBackbone("resnet18", embedding_dim=32, feature_mode="pool")
    assert pooled.feature_dim == 512
    assert pooled(_images()).embedding.shape == (2, 32)
    with pytest.raises(ValueError, match=r"backbone\.feature_mode"):
        TimmBackbone("resnet18", feature_mode="mean")


def test_timm_vit_gets_img_size():
    model = TimmBackbone("vit_tiny_patch16_224", embedding_dim=32, depth=1)
    assert model.feature_dim == (1 + 7 * 7) * 192  # class token + 7x7 patches, flattened
    assert model(_images()).embedding.shape == (2, 32)


def test_timm_measuring_leaves_bn_stats():
    model = TimmBackbone("resnet18")
    assert int(model.trunk_model.bn1.num_batches_tracked) == 0
    assert model.training


def test_timm_pretrained_without_path():
    with pytest.raises(
        ValueError,
        match=r"downloads are disabled.*backbone\.checkpoint_path=<local file>",
    ):
        TimmBackbone("resnet18", pretrained=True)


def test_timm_unknown_model():
    with pytest.raises(ValueError, match=r"backbone\.model_name.*timm\.list_models\('resnet\*'\)"):
        TimmBackbone("resnet_does_not_exist")


def test_timm_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    source = TimmBackbone("mobilenetv3_small_050")
    path = tmp_path / "trunk.pth"
    torch.save({"state_dict": source.trunk_model.state_dict()}, path)
    torch.manual_seed(1)
    loaded = TimmBackbone("mobilenetv3_small_050", pretrained=True, checkpoint_path=str(path))
    for key, value in source.trunk_model.state_dict().items():
        assert torch.equal(value, loaded.trunk_model.state_dict()[key]), key


def test_timm_checkpoint_that_matches_nothing(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"no key matched.*missing.*unexpected.*encoder\.weight"):
        TimmBackbone("resnet18", checkpoint_path=str(path))
    with pytest.raises(FileNotFoundError, match=r"backbone\.checkpoint_path"):
        TimmBackbone("resnet18", checkpoint_path=str(tmp_path / "absent.pth"))


# ---------------------------------------------------------------- conf/backbone
CONF_FILES = sorted(CONF.glob("*.yaml"))


def test_all_backbone_configs_present():
    names = {p.stem for p in CONF_FILES}
    expected = {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"}
    assert expected | {"iresnet_tiny", "mobilefacenet", "timm"} <= names


@pytest.mark.parametrize("path", CONF_FILES, ids=[p.stem for p in CONF_FILES])
def test_instantiate_config(path):
    cfg = OmegaConf.load(path)
    for key in (
        "embedding_dim",
        "dropout",
        "input_size",
    ):  # shared keys, so sweeps work
        assert key in cfg, key
    if path.stem.startswith("iresnet"):
        for key in ("dropout_kind", "bn_eps", "freeze_features_bn"):
            assert key in cfg, key
    if path.stem in BIG:
        with torch.device("meta"):
            model = instantiate(cfg)
        assert isinstance(model, (IResNet, IR, EQFaceResNet)) and model.feature_dim == 25088
        return
    torch.manual_seed(0)
    model = instantiate(cfg)
    assert model.embedding_dim == cfg.embedding_dim
    model(_images(2))  # one train-mode step
    _check_contract(model)
