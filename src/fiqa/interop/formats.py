"""The released checkpoints of the originals, one ``detect`` + ``convert`` per format.

Format           File (container)                                 Our modules
``arcface_torch`` bare iResNet state_dict (iresnet18..200)         IResNet, ``features.weight`` frozen (== 1)
``crfiqa``        ``{step}backbone.pth``: bare, iResNet + ``qs.*``  IResNet + quality head Linear(D, 1) (``qs``)
``magface``       ``{'state_dict': ..}``, ``module.features.`` or    IResNet, BN eps 2e-5 / momentum 0.9, Dropout2d;
                  ``features.module.`` prefix                      ``fc`` / ``parallel_fc`` (classifier) dropped
``adaface``       Lightning ``.ckpt``: ``state_dict`` with ``model.`` IR (ir18/34/50/101); ``head.*`` dropped
``qgface``        Lightning ``.ckpt``: ``state_dict`` with ``backbone.`` IR (AdaFace's); heads/queues dropped
``eqface``        ``backbone.pth`` (+ ``quality.pth``), ``module.``  EQFaceResNet (+ EQFaceQuality, ``qualtiy.*``)
``arcface_torch_mbf`` / ``arcface_torch_vit``: arcface_torch's MobileFaceNet and ViT ``model.pt``
                  (:mod:`fiqa.interop.formats_arcface_torch`)    ArcFaceMobileFaceNet, ArcFaceViT

Each original's input convention (reference data_and_eval §8) travels with the weights in
:class:`Released`: channel order and the per-channel mean/std on the 0..255 pixel scale.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fiqa.backbones.eqface_resnet import EQFACE_LAYERS, EQFaceQuality, EQFaceResNet
from fiqa.backbones.ir import IR, IR_LAYERS
from fiqa.backbones.iresnet import IResNet
from fiqa.interop.checkpoints import KeyMap, arch_depth, common_prefix, is_tensor_dict, load_mapped, stage_units

QUALITY_KINDS = ("head", "norm", "eqface")
WIDTHS = (64, 128, 256, 512)
IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}
ADAFACE_LAYERS = {**IR_LAYERS, 101: IR_LAYERS[100]}  # AdaFace's 'ir_101' is num_layers=100
MAGFACE_PREFIXES = ("module.features.", "features.module.")
MINUS1_1 = ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))  # (x - 127.5) / 127.5
UNIT_1 = ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0))  # x / 255 (MagFace)


@dataclass
class Released:
    """A released model, loaded into fiqa modules (all in ``eval()`` mode).

    backbone: images -> :class:`~fiqa.types.BackboneOutput` (a ``TrunkTailBackbone``).
    quality_head: CR-FIQA's Linear(D, 1) on the embedding, EQFace's quality branch on the
        flattened pre-fc map, or None.
    quality_kind: ``"head"`` (CR-FIQA), ``"norm"`` (embedding norm: MagFace, AdaFace, ArcFace)
        or ``"eqface"``.
    color: the channel order the original was trained on (``"rgb"`` | ``"bgr"``).
    normalize_mean, normalize_std: per channel, on the 0..255 scale: input = (pixel - mean) / std.
    """

    backbone: nn.Module
    quality_head: nn.Module | None
    quality_kind: str
    color: str
    normalize_mean: tuple[float, float, float]
    normalize_std: tuple[float, float, float]
    format: str
    arch: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Format:
    """``detect(obj) -> None`` when ``obj`` has this layout, else the reason it has not;
    ``convert(obj, arch, quality_obj, source, quality_source) -> Released``."""

    name: str
    detect: Callable[[Any], str | None]
    convert: Callable[..., Released]
    quality_file: bool = False


def describe(obj: Any) -> str:
    if is_tensor_dict(obj):
        return f"a state_dict of {len(obj)} tensors, first keys {list(obj)[:5]}"
    if isinstance(obj, Mapping):
        return f"a dict with keys {list(obj)[:10]}"
    return f"a {type(obj).__name__}"


def _bare(obj: Any, fmt: str, what: str, source: str) -> Mapping[str, Tensor]:
    if not is_tensor_dict(obj):
        raise ValueError(f"{source}: format={fmt} expects {what} (a bare state_dict), got {describe(obj)}")
    return obj


def _wrapped(obj: Any, fmt: str, what: str, source: str) -> Mapping[str, Tensor]:
    if not (isinstance(obj, Mapping) and is_tensor_dict(obj.get("state_dict"))):
        raise ValueError(f"{source}: format={fmt} expects {what} ({{'state_dict': {{...}}}}), got {describe(obj)}")
    return obj["state_dict"]


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _cannot_infer(family: str, source: str, why: str, archs) -> ValueError:
    return ValueError(f"{source}: cannot infer the {family} depth from the keys ({why}); pass arch= (one of {archs})")


def _contiguous(units: Mapping[int, list[int]], stages, family: str, source: str, archs) -> tuple[int, ...]:
    if sorted(units) != list(stages) or any(u != list(range(len(u))) for u in units.values()):
        raise _cannot_infer(family, source, f"units per stage {dict(units)}", archs)
    return tuple(len(units[s]) for s in stages)


def _spec(prefix: str, table: Mapping[int, tuple], layers, widths, fc_shape, rename=None) -> tuple[str, dict]:
    """(arch name, constructor kwargs) inferred from the keys: the depth's name for a standard net."""
    emb, fc_in = (int(n) for n in fc_shape)
    kwargs = {"layers": tuple(layers), "widths": tuple(widths), "embedding_dim": emb}
    kwargs["input_size"] = _input_size(fc_in, widths[-1])
    if tuple(widths) == WIDTHS and emb == 512 and kwargs["input_size"] == 112:
        for depth, ls in table.items():
            if tuple(ls) == tuple(layers):
                return f"{prefix}{(rename or {}).get(depth, depth)}", kwargs
    size = "" if kwargs["input_size"] == 112 else f", input_size={kwargs['input_size']}"
    return f"{prefix}(layers={list(layers)}, widths={list(widths)}, embedding_dim={emb}{size})", kwargs


def _input_size(fc_in: int, width: int) -> int:
    """The input side giving a ``fc_in = width * side**2`` map after 4 stride-2 stages (112 -> 7)."""
    side = round((fc_in / max(width, 1)) ** 0.5)
    return 16 * side if side > 0 and width * side * side == fc_in else 112


def _eval(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.eval()


# ---- iResNet: arcface_torch, CR-FIQA, MagFace ------------------------------------------------
def _iresnet_spec(state: Mapping[str, Tensor], arch: str | None, source: str) -> tuple[str, dict]:
    if arch is not None:
        depth = arch_depth(arch, IRESNET_LAYERS, "iResNet")
        return f"iresnet{depth}", {"layers": IRESNET_LAYERS[depth]}
    archs = [f"iresnet{d}" for d in IRESNET_LAYERS]
    if "fc.weight" not in state:
        raise _cannot_infer("iResNet", source, "no 'fc.weight'", archs)
    units = stage_units(state, r"layer([1-4])\.(\d+)\.conv1\.weight")
    layers = _contiguous(units, (1, 2, 3, 4), "iResNet", source, archs)
    widths = tuple(int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in (1, 2, 3, 4))
    return _spec("iresnet", IRESNET_LAYERS, layers, widths, state["fc.weight"].shape)


def _detect_iresnet(obj: Any, with_qs: bool) -> str | None:
    if not is_tensor_dict(obj):
        return f"not a bare state_dict ({describe(obj)})"
    if not {"conv1.weight", "layer1.0.conv1.weight", "fc.weight", "features.running_mean"} <= set(obj):
        return "no iResNet keys (conv1.weight, layer1.0.conv1.weight, fc.weight, features.*)"
    has_qs = any(k.startswith("qs.") for k in obj)
    if has_qs != with_qs:
        return "has qs.* (a CR-FIQA checkpoint)" if has_qs else "no qs.* (the CR-FIQA quality head)"
    return None


def convert_arcface_torch(obj, arch, quality_obj, source, quality_source=None) -> Released:
    state = _bare(obj, "arcface_torch", "an arcface_torch iResNet state_dict", source)
    name, spec = _iresnet_spec(state, arch, source)
    backbone = IResNet(**spec, dropout=0.0, freeze_features_bn=True)
    load_mapped(state, KeyMap((("", "backbone", ""),)), {"backbone": backbone}, source=source, target_name=name)
    notes = ["dropout p=0 as in arcface_torch train_v2; set backbone.dropout.p (e.g. 0.4) for SER-FIQ"]
    w = backbone.features.weight
    if not w.is_meta and not bool(torch.all(w == 1)):
        w.requires_grad_(True)
        notes.append("features.weight is not all 1 (not an arcface_torch training?): left trainable")
    _eval(backbone)
    return Released(backbone, None, "norm", "rgb", *MINUS1_1, "arcface_torch", name, notes)


def convert_crfiqa(obj, arch, quality_obj, source, quality_source=None) -> Released:
    state = _bare(obj, "crfiqa", "CR-FIQA's {step}backbone.pth", source)
    name, spec = _iresnet_spec(state, arch, source)
    backbone = IResNet(**spec, dropout=0.4)
    head = nn.Linear(backbone.embedding_dim, 1)
    keymap = KeyMap((("qs.", "quality_head", ""), ("", "backbone", "")))
    targets = {"backbone": backbone, "quality_head": head}
    load_mapped(state, keymap, targets, source=source, target_name=f"{name} + qs (CR-FIQA)")
    _eval(backbone, head)
    notes = ["quality = qs(embedding), raw and unbounded (no sigmoid); dropout p=0.4 as in CR-FIQA training"]
    return Released(backbone, head, "head", "rgb", *MINUS1_1, "crfiqa", name, notes)


def _magface_classifier(key: str) -> bool:
    return re.match(r"(module\.)?(parallel_)?fc\.", key) is not None


def _detect_magface(obj: Any) -> str | None:
    if not (isinstance(obj, Mapping) and is_tensor_dict(obj.get("state_dict"))):
        return f"no top-level 'state_dict' of tensors ({describe(obj)})"
    if not any(k.startswith(MAGFACE_PREFIXES) for k in obj["state_dict"]):
        return f"no key starts with {' or '.join(MAGFACE_PREFIXES)}"
    return None


def convert_magface(obj, arch, quality_obj, source, quality_source=None) -> Released:
    state = _wrapped(obj, "magface", "MagFace's checkpoint dict", source)
    prefix = max(MAGFACE_PREFIXES, key=lambda p: sum(k.startswith(p) for k in state))
    name, spec = _iresnet_spec(_strip(state, prefix), arch, source)
    backbone = IResNet(**spec, bn_eps=2e-5, bn_momentum=0.9, dropout=0.4, dropout_kind="dropout2d")
    dropped = load_mapped(
        state,
        KeyMap(((prefix, "backbone", ""),)),
        {"backbone": backbone},
        source=source,
        target_name=f"{name} (MagFace)",
        drop=_magface_classifier,
    )
    notes = [f"key prefix {prefix!r}; dropped the classifier {dropped}", "input BGR, x/255 (no mean/std)"]
    if isinstance(obj.get("arch"), str):
        notes.append(f"the checkpoint names its arch {obj['arch']!r}")
    _eval(backbone)
    return Released(backbone, None, "norm", "bgr", *UNIT_1, "magface", name, notes)


# ---- AdaFace IR ------------------------------------------------------------------------------
def _ir_spec(state: Mapping[str, Tensor], arch: str | None, source: str) -> tuple[str, dict]:
    archs = ["ir18", "ir34", "ir50", "ir101"]
    if arch is not None:
        depth = arch_depth(arch, ADAFACE_LAYERS, "AdaFace IR")
        return f"ir{101 if depth == 100 else depth}", {"layers": ADAFACE_LAYERS[depth]}
    units = stage_units(state, r"body\.(\d+)\.res_layer\.1\.weight").get(0, [])
    convs = stage_units(state, r"body\.(\d+)\.shortcut_layer\.0\.weight").get(0, [])
    if not units or units != list(range(len(units))) or len(convs) != 3 or convs[0] == 0:
        raise _cannot_infer("AdaFace IR", source, f"{len(units)} units, conv shortcuts at {convs}", archs)
    if "output_layer.3.weight" not in state or "input_layer.0.weight" not in state:
        raise _cannot_infer("AdaFace IR", source, "no input_layer.0.weight / output_layer.3.weight", archs)
    bounds = [0, *convs, len(units)]
    layers = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    widths = (int(state["input_layer.0.weight"].shape[0]),)
    widths += tuple(int(state[f"body.{p}.res_layer.1.weight"].shape[0]) for p in convs)
    return _spec("ir", IR_LAYERS, layers, widths, state["output_layer.3.weight"].shape, rename={100: 101})


def _detect_adaface(obj: Any) -> str | None:
    if not (isinstance(obj, Mapping) and is_tensor_dict(obj.get("state_dict"))):
        return f"no top-level 'state_dict' of tensors ({describe(obj)})"
    if "model.input_layer.0.weight" not in obj["state_dict"]:
        return "no 'model.input_layer.0.weight' in its state_dict"
    return None


def convert_adaface(obj, arch, quality_obj, source, quality_source=None) -> Released:
    state = _wrapped(obj, "adaface", "an AdaFace Lightning .ckpt", source)
    name, spec = _ir_spec(_strip(state, "model."), arch, source)
    backbone = IR(**spec, dropout=0.4)
    dropped = load_mapped(
        state,
        KeyMap((("model.", "backbone", ""),)),
        {"backbone": backbone},
        source=source,
        target_name=f"{name} (AdaFace)",
        drop=lambda k: k.startswith("head."),
    )
    notes = [f"dropped {len(dropped)} head.* key(s) (margin head state)", "input BGR, (x - 127.5) / 127.5"]
    _eval(backbone)
    return Released(backbone, None, "norm", "bgr", *MINUS1_1, "adaface", name, notes)


# ---- QGFace (its Lightning trainer: AdaFace's IR under backbone.*) -----------------------------
QGFACE_PREFIX = "backbone."


def _detect_qgface(obj: Any) -> str | None:
    if not (isinstance(obj, Mapping) and is_tensor_dict(obj.get("state_dict"))):
        return f"no top-level 'state_dict' of tensors ({describe(obj)})"
    if "fiqa_config" in obj:
        return "a fiqa task=train checkpoint (it holds fiqa_config): load it with ckpt_format=fiqa"
    if QGFACE_PREFIX + "input_layer.0.weight" not in obj["state_dict"]:
        return f"no '{QGFACE_PREFIX}input_layer.0.weight' in its state_dict"
    return None


def convert_qgface(obj, arch, quality_obj, source, quality_source=None) -> Released:
    state = _wrapped(obj, "qgface", "a QGFace Lightning .ckpt", source)
    name, spec = _ir_spec(_strip(state, QGFACE_PREFIX), arch, source)
    backbone = IR(**spec, dropout=0.4)
    dropped = load_mapped(
        state,
        KeyMap(((QGFACE_PREFIX, "backbone", ""),)),
        {"backbone": backbone},
        source=source,
        target_name=f"{name} (QGFace)",
        drop=lambda k: not k.startswith(QGFACE_PREFIX),  # heads, queues, a MoCo copy: training state
    )
    kinds = sorted({k.split(".")[0] for k in dropped})
    notes = [f"dropped {len(dropped)} training key(s) ({', '.join(kinds)})", "input BGR, (x - 127.5) / 127.5"]
    _eval(backbone)
    return Released(backbone, None, "norm", "bgr", *MINUS1_1, "qgface", name, notes)


# ---- EQFace ----------------------------------------------------------------------------------
def _eqface_spec(state: Mapping[str, Tensor], arch: str | None, source: str) -> tuple[str, dict]:
    if arch is not None:
        depth = arch_depth(arch, EQFACE_LAYERS, "EQFace ResNet")
        return f"eqface_resnet{depth}", {"layers": EQFACE_LAYERS[depth]}
    archs = [f"eqface_resnet{d}" for d in EQFACE_LAYERS]
    if "feature_layer.0.weight" not in state:
        raise _cannot_infer("EQFace ResNet", source, "no feature_layer.0.weight", archs)
    units = stage_units(state, r"layer([1-4])\.(\d+)\.res_layer\.1\.weight")
    layers = _contiguous(units, (1, 2, 3, 4), "EQFace ResNet", source, archs)
    widths = tuple(int(state[f"layer{s}.0.res_layer.1.weight"].shape[0]) for s in (1, 2, 3, 4))
    return _spec("eqface_resnet", EQFACE_LAYERS, layers, widths, state["feature_layer.0.weight"].shape)


def _detect_eqface(obj: Any) -> str | None:
    if not is_tensor_dict(obj):
        return f"not a bare state_dict ({describe(obj)})"
    prefix = common_prefix(obj, ("module.", "")) or ""
    if not {prefix + "input_layer.0.weight", prefix + "feature_layer.0.weight"} <= set(obj):
        return "no input_layer.0.weight / feature_layer.0.weight"
    return None


def convert_eqface(obj, arch, quality_obj, source, quality_source=None, require_quality=True) -> Released:
    state = _bare(obj, "eqface", "EQFace's backbone.pth", source)
    prefix = common_prefix(state, ("module.", "")) or ""
    name, spec = _eqface_spec(_strip(state, prefix), arch, source)
    backbone = EQFaceResNet(**spec, dropout=0.4)
    keymap = KeyMap(((prefix, "backbone", ""),))
    load_mapped(state, keymap, {"backbone": backbone}, source=source, target_name=f"{name} (EQFace)")
    notes = ["input RGB, (x - 127.5) / 127.5 (EQFace training; its test script divides by 128)"]
    if quality_obj is None:
        if require_quality:
            raise ValueError(
                f"{source}: an EQFace backbone.pth has no quality of its own: its quality is the separate "
                f"quality branch, quality.pth. Pass it: quality_path=<quality.pth> (Python: "
                f"fiqa.quality.score(images, backbone, quality_path=...); command line: quality_ckpt_path=...). "
                f"To use the embeddings with another quality, choose it (quality=norm|serfiq|random)."
            )
        notes.append("no quality_path (quality.pth) given: quality = embedding norm (replaced by the caller)")
        _eval(backbone)
        return Released(backbone, None, "norm", "rgb", *MINUS1_1, "eqface", name, notes)
    qsource = quality_source or "quality checkpoint"
    qstate = _bare(quality_obj, "eqface", "EQFace's quality.pth", qsource)
    qp = common_prefix(qstate, ("module.", "")) or ""
    first = qstate.get(qp + "qualtiy.0.weight")
    head = EQFaceQuality(backbone.feature_dim, hidden=int(first.shape[0]) if first is not None else 512)
    rules = tuple((f"{qp}qualtiy.{i}.", "quality_head", f"{ours}.") for i, ours in ((0, "fc1"), (1, "bn"), (3, "fc2")))
    load_mapped(qstate, KeyMap(rules), {"quality_head": head}, source=qsource, target_name="EQFace's quality branch")
    notes.append("quality = softmax(quality branch(flattened pre-fc map))[:, 0], in (0, 1)")
    _eval(backbone, head)
    return Released(backbone, head, "eqface", "rgb", *MINUS1_1, "eqface", name, notes)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("arcface_torch", lambda o: _detect_iresnet(o, with_qs=False), convert_arcface_torch),
        Format("crfiqa", lambda o: _detect_iresnet(o, with_qs=True), convert_crfiqa),
        Format("magface", _detect_magface, convert_magface),
        Format("adaface", _detect_adaface, convert_adaface),
        Format("qgface", _detect_qgface, convert_qgface),
        Format("eqface", _detect_eqface, convert_eqface, quality_file=True),
    )
}

# arcface_torch's MobileFaceNet and ViT (their module imports the names above, hence at the end)
from fiqa.interop.formats_arcface_torch import EXTRA_FORMATS  # noqa: E402

FORMATS.update({f.name: f for f in EXTRA_FORMATS})
