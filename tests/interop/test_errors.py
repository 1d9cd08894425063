"""Errors: missing / unexpected / mis-shaped keys listed with counts, unknown layouts listing every
format tried, pickles that need code execution refused without trust_checkpoint."""

import pytest
import torch

from fiqa.interop import (
    FORMATS,
    CheckpointMismatchError,
    UntrustedCheckpointError,
    convert_released,
    load_released,
)
from fiqa.methods.released import ReleasedModel
from tests.interop import originals as O

SIDE = 2
CALLS: list = []


def _record(tag):
    CALLS.append(tag)
    return {"hparams": tag}


class CodeOnLoad:
    """Unpickling this object calls ``_record``: it needs full unpickling (code execution)."""

    def __reduce__(self):
        return (_record, ("ran",))


def _tiny_iresnet(**kw):
    return O.insightface_iresnet((1, 2, 1, 1), O.TINY, emb=8, side=SIDE, **kw)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = _tiny_iresnet()
    del sd["layer2.1.bn3.running_var"]
    sd["layer9.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "m.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        load_released(tmp_path / "m.pth", format="arcface_torch")
    err = info.value
    assert err.missing == ["layer2.1.bn3.running_var"] and err.unexpected == ["layer9.0.extra.weight"]
    msg = str(err)
    assert "1 missing key(s) ['layer2.1.bn3.running_var']" in msg
    assert "1 unexpected key(s) ['layer9.0.extra.weight']" in msg


def test_wrong_arch_lists_first_ten_and_counts():
    sd = O.insightface_iresnet((3, 4, 14, 3), device="meta")  # an r50
    with torch.device("meta"), pytest.raises(CheckpointMismatchError) as info:
        convert_released(sd, format="arcface_torch", arch="iresnet100")
    err = info.value
    assert len(err.missing) == 925 - 475 and not err.unexpected
    assert f"{925 - 475} missing key(s)" in str(err) and f"(+{925 - 475 - 10} more)" in str(err)
    assert "layer2.4.bn1.weight" in err.missing


def test_shape_mismatch_is_listed():
    sd = _tiny_iresnet()
    sd["fc.weight"] = torch.zeros(8, 999)
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight: checkpoint \(8, 999\) vs model \(8, 784\)"):
        convert_released(sd, format="arcface_torch")


def test_explicit_crfiqa_without_qs_names_the_missing_head():
    with pytest.raises(CheckpointMismatchError) as info:
        convert_released(_tiny_iresnet(), format="crfiqa")
    assert info.value.missing == ["qs.weight", "qs.bias"]


def test_magface_unknown_extra_key_is_unexpected_not_dropped():
    state = O.prefixed(_tiny_iresnet(), "features.module.")
    state["parallel_fc.weight"] = torch.zeros(3, 8)  # dropped (classifier)
    state["features.module.se.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_released({"state_dict": state})
    assert info.value.unexpected == ["features.module.se.weight"]


def test_eqface_quality_mismatch_uses_original_names():
    sd = O.eqface_resnet((1, 1, 1, 1), O.TINY, emb=8, side=SIDE)
    qsd = O.eqface_quality(O.TINY[-1] * SIDE * SIDE, hidden=6)
    del qsd["qualtiy.3.weight"]
    with pytest.raises(CheckpointMismatchError) as info:
        convert_released(sd, quality_obj=qsd)
    assert info.value.missing == ["qualtiy.3.weight"]


def test_unknown_layout_lists_every_format_tried(tmp_path):
    torch.save({"weights": {"a.weight": torch.zeros(2)}}, tmp_path / "x.pth")
    with pytest.raises(ValueError) as info:
        load_released(tmp_path / "x.pth")
    msg = str(info.value)
    for name in FORMATS:
        assert f"{name}:" in msg
    assert "Pass format=" in msg


def test_hints_for_a_quality_file_and_a_fiqa_checkpoint():
    with pytest.raises(ValueError, match="quality_path="):
        convert_released(O.eqface_quality(16, hidden=4))
    with pytest.raises(ValueError, match="task=eval"):
        convert_released({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "fiqa_config": {}})
    with pytest.raises(ValueError, match="not QGFace's IR") as err:  # backbone.* alone is not 'a fiqa checkpoint'
        convert_released({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}})
    assert "fiqa (task=train)" not in str(err.value)


def test_refuses_code_execution_without_trust(tmp_path):
    sd = O.prefixed(O.adaface_ir((1, 1, 1, 1), O.TINY, emb=8, side=SIDE), "model.")
    path = tmp_path / "adaface.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": CodeOnLoad()}, path)
    CALLS.clear()
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint=true only if you trust"):
        load_released(path)
    assert CALLS == []  # nothing ran
    r = load_released(path, trust_checkpoint=True)
    assert CALLS == ["ran"] and r.format == "adaface"


def test_bad_arguments_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_released(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_released(tmp_path / "junk.pth")
    sd = _tiny_iresnet(qs=True)
    with pytest.raises(ValueError, match="format='insightface' is not known"):
        convert_released(sd, format="insightface")
    with pytest.raises(ValueError, match="quality_path is only used by"):
        convert_released(sd, quality_obj={"x": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"arch='iresnet99' is not a iResNet depth; choose one of \[18, 34"):
        convert_released(sd, arch="iresnet99")
    with pytest.raises(ValueError, match="expects MagFace's checkpoint dict"):
        convert_released(sd, format="magface")
    with pytest.raises(ValueError, match="a bare state_dict"):
        convert_released({"state_dict": sd}, format="crfiqa")
    with pytest.raises(ValueError, match="cannot infer the iResNet depth"):
        convert_released({k: v for k, v in sd.items() if not k.startswith("layer3.")}, format="crfiqa")


def test_released_model_is_inference_only():
    from fiqa.backbones.ir import IR

    backbone = IR(layers=(1, 1, 1, 1), widths=O.TINY, embedding_dim=8, input_size=32)
    with pytest.raises(ValueError, match="quality_kind='sigmoid' is not valid"):
        ReleasedModel(backbone, quality_kind="sigmoid")
    with pytest.raises(ValueError, match="needs a quality_head"):
        ReleasedModel(backbone, quality_kind="head")
    with pytest.raises(NotImplementedError, match="inference"):
        ReleasedModel(backbone).losses(None, None)
