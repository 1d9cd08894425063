"""State_dicts with exactly the originals' key names, order and shapes, written from the key
patterns of the references (methods_crfiqa_serfiq_magface_qmagface §1, methods_eqface_qgface_adaface
§1.4 and §3.4), independently of fiqa's modules. ``device="meta"`` gives shapes only (full sizes),
otherwise random values (tiny widths for speed)."""

from __future__ import annotations

from collections import OrderedDict

import torch

FULL = (64, 128, 256, 512)
TINY = (4, 8, 12, 16)


class _Builder:
    def __init__(self, device: str = "cpu", seed: int = 0):
        self.sd: OrderedDict = OrderedDict()
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)

    def w(self, name: str, *shape: int) -> None:
        if self.device == "meta":
            self.sd[name] = torch.empty(shape, device="meta")
        else:
            self.sd[name] = torch.randn(shape, generator=self.gen) * 0.1

    def bn(self, name: str, n: int, affine: bool = True) -> None:
        if affine:
            self.w(f"{name}.weight", n)
            self.w(f"{name}.bias", n)
        self.w(f"{name}.running_mean", n)
        self.w(f"{name}.running_var", n)
        if self.device != "meta":
            self.sd[f"{name}.running_var"] = torch.rand(n, generator=self.gen) + 0.5
        self.sd[f"{name}.num_batches_tracked"] = torch.tensor(7, device=self.device)


def insightface_iresnet(layers, widths=FULL, emb=512, side=7, qs=False, device="cpu"):
    """arcface_torch / CR-FIQA / MagFace iResNet keys (IBasicBlock; downsample on block 0)."""
    b = _Builder(device)
    b.w("conv1.weight", widths[0], 3, 3, 3)
    b.bn("bn1", widths[0])
    b.w("prelu.weight", widths[0])
    inp = widths[0]
    for s, (planes, n) in enumerate(zip(widths, layers), start=1):
        for j in range(n):
            cin = inp if j == 0 else planes
            p = f"layer{s}.{j}"
            b.bn(f"{p}.bn1", cin)
            b.w(f"{p}.conv1.weight", planes, cin, 3, 3)
            b.bn(f"{p}.bn2", planes)
            b.w(f"{p}.prelu.weight", planes)
            b.w(f"{p}.conv2.weight", planes, planes, 3, 3)
            b.bn(f"{p}.bn3", planes)
            if j == 0:
                b.w(f"{p}.downsample.0.weight", planes, cin, 1, 1)
                b.bn(f"{p}.downsample.1", planes)
        inp = planes
    b.bn("bn2", widths[-1])
    b.w("fc.weight", emb, widths[-1] * side * side)
    b.w("fc.bias", emb)
    b.bn("features", emb)
    if device != "meta":
        b.sd["features.weight"] = torch.ones(emb)  # arcface_torch: fixed at 1
    if qs:
        b.w("qs.weight", 1, emb)
        b.w("qs.bias", 1)
    return b.sd


def _res_layer(b: _Builder, p: str, cin: int, d: int) -> None:
    b.bn(f"{p}.res_layer.0", cin)
    b.w(f"{p}.res_layer.1.weight", d, cin, 3, 3)
    b.bn(f"{p}.res_layer.2", d)
    b.w(f"{p}.res_layer.3.weight", d)
    b.w(f"{p}.res_layer.4.weight", d, d, 3, 3)
    b.bn(f"{p}.res_layer.5", d)


def adaface_ir(layers, widths=FULL, emb=512, side=7, device="cpu"):
    """AdaFace ``Backbone`` keys, in its order: input_layer, output_layer, body."""
    b = _Builder(device, seed=1)
    b.w("input_layer.0.weight", widths[0], 3, 3, 3)
    b.bn("input_layer.1", widths[0])
    b.w("input_layer.2.weight", widths[0])
    b.bn("output_layer.0", widths[-1])
    b.w("output_layer.3.weight", emb, widths[-1] * side * side)
    b.w("output_layer.3.bias", emb)
    b.bn("output_layer.4", emb, affine=False)
    i, inp = 0, widths[0]
    for d, n in zip(widths, layers):
        for j in range(n):
            cin = inp if j == 0 else d
            _res_layer(b, f"body.{i}", cin, d)
            if cin != d:
                b.w(f"body.{i}.shortcut_layer.0.weight", d, cin, 1, 1)
                b.bn(f"body.{i}.shortcut_layer.1", d)
            i += 1
        inp = d
    return b.sd


def eqface_resnet(layers, widths=FULL, emb=512, side=7, device="cpu"):
    """EQFace ``ResNet`` keys: conv shortcut on unit 0 of every stage."""
    b = _Builder(device, seed=2)
    b.w("input_layer.0.weight", widths[0], 3, 3, 3)
    b.bn("input_layer.1", widths[0])
    b.w("input_layer.2.weight", widths[0])
    inp = widths[0]
    for s, (d, n) in enumerate(zip(widths, layers), start=1):
        for j in range(n):
            cin = inp if j == 0 else d
            _res_layer(b, f"layer{s}.{j}", cin, d)
            if j == 0:
                b.w(f"layer{s}.0.shortcut_layer.0.weight", d, cin, 1, 1)
                b.bn(f"layer{s}.0.shortcut_layer.1", d)
        inp = d
    b.bn("output_layer.0", widths[-1])
    b.w("feature_layer.0.weight", emb, widths[-1] * side * side)
    b.w("feature_layer.0.bias", emb)
    b.bn("feature_layer.1", emb)
    return b.sd


def eqface_quality(in_features, hidden=512, device="cpu"):
    """EQFace ``FaceQuality`` keys (the ``qualtiy`` typo is the original's)."""
    b = _Builder(device, seed=3)
    b.w("qualtiy.0.weight", hidden, in_features)
    b.bn("qualtiy.1", hidden)
    b.w("qualtiy.3.weight", 2, hidden)
    return b.sd


def prefixed(sd, prefix):
    return OrderedDict((prefix + k, v) for k, v in sd.items())
