"""arcface_torch's released MobileFaceNet and ViT checkpoints (``model.pt``: a bare state_dict,
``torch.save(backbone.module.state_dict())`` in ``recognition/arcface_torch/train_v2.py``).

Format               Keys (arcface_torch names)                                    Our modules
``arcface_torch_mbf`` ``layers.{0..7}.*``, ``conv_sep.*``, ``features.layers.{0,2,3}.*`` ArcFaceMobileFaceNet
``arcface_torch_vit`` ``pos_embed``, ``mask_token``, ``patch_embed.proj.*``,             ArcFaceViT
                      ``blocks.{i}.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}.*``,
                      ``norm.*``, ``feature.{0,1,2,3}.*``

The variant is inferred from the key shapes: mbf ``scale`` = ``layers.0.layers.0.weight``'s
out-channels / 64, ``blocks`` = the unit counts of ``layers.{1,3,5,7}`` (``layers.1`` a plain
ConvBlock = 1), ``num_features`` = ``features.layers.2.weight``'s rows; ViT ``embed_dim`` =
``patch_embed.proj.weight``'s out-channels, ``patch_size`` its kernel, ``depth`` = the number of
``blocks.{i}``, the MLP width from ``mlp.fc1``, ``num_features`` from ``feature.2.weight``.
``num_heads`` is not in the weights: 8, as in every arcface_torch ViT. ``arch=`` (an arcface_torch
``get_model`` name) overrides the inference; ``num_features`` then still comes from the keys (it is
the training config's ``embedding_size``, not part of the name). Input as arcface_torch's
``inference.py``: RGB, ``(x / 255 - 0.5) / 0.5`` = ``(x - 127.5) / 127.5``; quality = embedding norm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fiqa.backbones.arcface_mbf import MBF_ARCHS, ArcFaceMobileFaceNet
from fiqa.backbones.arcface_vit import VIT_ARCHS, ArcFaceViT
from fiqa.interop.checkpoints import KeyMap, is_tensor_dict, load_mapped, stage_units
from fiqa.interop.formats import MINUS1_1, Format, Released, _bare, describe

MBF_FORMAT, VIT_FORMAT = "arcface_torch_mbf", "arcface_torch_vit"
MBF_KEYS = ("layers.0.layers.0.weight", "conv_sep.layers.0.weight", "features.layers.2.weight")
MBF_KEYS += ("features.layers.3.running_mean",)
VIT_KEYS = ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "feature.0.weight")
VIT_KEYS += ("feature.3.running_mean",)
VIT_HEADS = 8  # every arcface_torch get_model ViT; not recoverable from the weights
STANDARD_SIZE, VIT_PATCH = 112, 9
DEFAULT_FEATURES = 512  # arcface_torch's num_features default (config.embedding_size)
IDENTITY = KeyMap((("", "backbone", ""),))


def _detect(obj: Any, required: tuple[str, ...], what: str) -> str | None:
    if not is_tensor_dict(obj):
        return f"not a bare state_dict ({describe(obj)})"
    missing = [k for k in required if k not in obj]
    if missing:
        return f"no arcface_torch {what} keys (lacks {missing}; needs {list(required)})"
    return None


def _detect_mbf(obj: Any) -> str | None:
    """None when ``obj`` is an arcface_torch MobileFaceNet state_dict, else why not."""
    return _detect(obj, MBF_KEYS, "MobileFaceNet")


def _detect_vit(obj: Any) -> str | None:
    """None when ``obj`` is an arcface_torch ViT state_dict, else why not."""
    return _detect(obj, VIT_KEYS, "ViT")


def _need(state: Mapping[str, Tensor], keys: tuple[str, ...], family: str, source: str, archs) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"{source}: cannot infer the arcface_torch {family} variant: no {missing} among the keys "
            f"(found {describe(state)}); pass arch= (one of {list(archs)})"
        )


def _units(state: Mapping[str, Tensor], pattern: str, what: str, source: str, archs) -> int:
    units = stage_units(state, pattern).get(0, [])
    if units != list(range(len(units))):
        raise ValueError(
            f"{source}: {what}: units {units} are not numbered 0..n-1; cannot infer the variant, pass arch= "
            f"(one of {list(archs)})"
        )
    return len(units)


def _features(state: Mapping[str, Tensor], key: str) -> int:
    return int(state[key].shape[0]) if key in state and state[key].dim() == 2 else DEFAULT_FEATURES


# ---- MobileFaceNet ---------------------------------------------------------------------------
def _mbf_spec(state: Mapping[str, Tensor], arch: str | None, source: str) -> tuple[str, dict]:
    num_features = _features(state, "features.layers.2.weight")
    gdc = state.get("features.layers.0.layers.0.weight")
    input_size = 16 * int(gdc.shape[-1]) if gdc is not None and gdc.dim() == 4 else STANDARD_SIZE
    if arch is not None:
        if arch not in MBF_ARCHS:
            raise ValueError(f"arch={arch!r} is not an arcface_torch MobileFaceNet; choose one of {list(MBF_ARCHS)}")
        return arch, {**MBF_ARCHS[arch], "num_features": num_features, "input_size": input_size}
    _need(state, ("layers.0.layers.0.weight", "features.layers.2.weight"), "MobileFaceNet", source, MBF_ARCHS)
    stem = int(state["layers.0.layers.0.weight"].shape[0])
    if stem % 64:
        raise ValueError(
            f"{source}: layers.0.layers.0.weight has {stem} output channels, not 64 * scale (arcface_torch mbf: "
            f"128, mbf_large: 256); pass arch= (one of {list(MBF_ARCHS)})"
        )
    unit = r"layers\.{}\.layers\.(\d+)\.layers\.0\.layers\.0\.weight"
    first = 1 if "layers.1.layers.0.weight" in state else _units(state, unit.format(1), "layers.1", source, MBF_ARCHS)
    blocks = (first,) + tuple(_units(state, unit.format(i), f"layers.{i}", source, MBF_ARCHS) for i in (3, 5, 7))
    spec = {"scale": stem // 64, "blocks": blocks, "num_features": num_features, "input_size": input_size}
    if num_features == DEFAULT_FEATURES and input_size == STANDARD_SIZE:
        for name, std in MBF_ARCHS.items():
            if std["scale"] == spec["scale"] and tuple(std["blocks"]) == blocks:
                return name, spec
    size = "" if input_size == STANDARD_SIZE else f", input_size={input_size}"
    return f"mbf(scale={stem // 64}, blocks={list(blocks)}, num_features={num_features}{size})", spec


def convert_arcface_torch_mbf(obj, arch, quality_obj, source, quality_source=None) -> Released:
    """An arcface_torch MobileFaceNet ``model.pt`` -> :class:`ArcFaceMobileFaceNet` (strict, every key)."""
    state = _bare(obj, MBF_FORMAT, "an arcface_torch MobileFaceNet state_dict (model.pt)", source)
    name, spec = _mbf_spec(state, arch, source)
    backbone = ArcFaceMobileFaceNet(**spec, fp16=False, dropout=0.0)
    load_mapped(state, IDENTITY, {"backbone": backbone}, source=source, target_name=f"{name} (arcface_torch)")
    backbone.eval()
    notes = [
        "fp16=False as in arcface_torch inference.py (set backbone.fp16=True for its training-time CUDA autocast "
        "around layers.*)",
        "arcface_torch's mbf has no dropout: backbone.dropout.p=0; set it (e.g. 0.4) for SER-FIQ (it drops before "
        "the GDC Linear, features.layers.2)",
    ]
    return Released(backbone, None, "norm", "rgb", *MINUS1_1, MBF_FORMAT, name, notes)


# ---- ViT -------------------------------------------------------------------------------------
def _vit_spec(state: Mapping[str, Tensor], arch: str | None, source: str) -> tuple[str, dict]:
    num_features = _features(state, "feature.2.weight")
    if arch is not None:
        if arch not in VIT_ARCHS:
            raise ValueError(f"arch={arch!r} is not an arcface_torch ViT; choose one of {list(VIT_ARCHS)}")
        return arch, {**VIT_ARCHS[arch], "num_features": num_features}
    needed = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight", "feature.2.weight")
    _need(state, needed, "ViT", source, VIT_ARCHS)
    if "blocks.0.norm1.bn.weight" in state:
        raise ValueError(
            f"{source}: blocks.0.norm1.bn.* is a norm_layer='bn' ViT, which no arcface_torch get_model name builds; "
            f"fiqa's ArcFaceViT has LayerNorms (norm_layer='ln': vit_t, vit_s, vit_b, ...)"
        )
    proj, pos = state["patch_embed.proj.weight"], state["pos_embed"]
    if proj.dim() != 4 or proj.shape[-1] != proj.shape[-2] or pos.dim() != 3:
        raise ValueError(
            f"{source}: patch_embed.proj.weight {tuple(proj.shape)} / pos_embed {tuple(pos.shape)} are not a square "
            f"patch conv (E, 3, p, p) and (1, N, E); pass arch= (one of {list(VIT_ARCHS)})"
        )
    embed_dim, patch, in_channels = int(proj.shape[0]), int(proj.shape[-1]), int(proj.shape[1])
    side = math.isqrt(int(pos.shape[1]))
    if side * side != int(pos.shape[1]):
        raise ValueError(f"{source}: pos_embed {tuple(pos.shape)}: {pos.shape[1]} patches is not a square grid")
    img_size = STANDARD_SIZE if STANDARD_SIZE // patch == side else side * patch
    depth = _units(state, r"blocks\.(\d+)\.attn\.qkv\.weight", "blocks", source, VIT_ARCHS)
    hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    qkv_bias = "blocks.0.attn.qkv.bias" in state
    if embed_dim % VIT_HEADS:
        raise ValueError(f"{source}: embed_dim {embed_dim} (patch_embed.proj.weight) is not divisible by 8 heads")
    spec = {"embed_dim": embed_dim, "depth": depth, "num_heads": VIT_HEADS, "mlp_hidden_dim": hidden}
    spec |= {"qkv_bias": qkv_bias, "img_size": img_size, "patch_size": patch, "in_channels": in_channels}
    spec["num_features"] = num_features
    standard = (img_size, patch, in_channels, hidden, qkv_bias, num_features)
    if standard == (STANDARD_SIZE, VIT_PATCH, 3, 4 * embed_dim, False, DEFAULT_FEATURES):
        for name, std in VIT_ARCHS.items():  # the plain name first: the variants differ in training only
            if (std["embed_dim"], std["depth"]) == (embed_dim, depth):
                train = {k: std[k] for k in ("drop_path_rate", "mask_ratio", "using_checkpoint") if k in std}
                return name, {**spec, **train}
    extra = "" if hidden == 4 * embed_dim else f", mlp_hidden_dim={hidden}"
    extra += ", qkv_bias=True" if qkv_bias else ""
    extra += "" if (img_size, patch) == (STANDARD_SIZE, VIT_PATCH) else f", img_size={img_size}, patch_size={patch}"
    extra += "" if in_channels == 3 else f", in_channels={in_channels}"
    return f"vit(embed_dim={embed_dim}, depth={depth}, num_features={num_features}{extra})", spec


def convert_arcface_torch_vit(obj, arch, quality_obj, source, quality_source=None) -> Released:
    """An arcface_torch ViT ``model.pt`` -> :class:`ArcFaceViT` (strict, every key)."""
    state = _bare(obj, VIT_FORMAT, "an arcface_torch ViT state_dict (model.pt)", source)
    name, spec = _vit_spec(state, arch, source)
    backbone = ArcFaceViT(**spec, amp=True, dropout=0.0)
    load_mapped(state, IDENTITY, {"backbone": backbone}, source=source, target_name=f"{name} (arcface_torch)")
    backbone.eval()
    notes = [
        "num_heads=8 (not stored in the weights; every arcface_torch ViT uses 8)",
        "as in arcface_torch, on CUDA attn.qkv/attn.proj/mlp run under float16 autocast (backbone.amp=False: "
        "float32 throughout)",
        "arcface_torch's ViT has no dropout: backbone.dropout.p=0; set it for SER-FIQ (it drops before feature.0)",
    ]
    if arch is None and name in VIT_ARCHS:
        size = (spec["embed_dim"], spec["depth"])
        twins = [n for n, s in VIT_ARCHS.items() if n != name and (s["embed_dim"], s["depth"]) == size]
        if twins:
            notes.append(
                f"{name} and {twins} have the same keys and eval outputs (drop-path/masking differ in training "
                f"only); pass arch= to pick one for fine-tuning"
            )
    return Released(backbone, None, "norm", "rgb", *MINUS1_1, VIT_FORMAT, name, notes)


EXTRA_FORMATS = [
    Format(MBF_FORMAT, _detect_mbf, convert_arcface_torch_mbf),
    Format(VIT_FORMAT, _detect_vit, convert_arcface_torch_vit),
]
