"""iResNet (improved ResNet) backbones with InsightFace parameter names.

Topology (InsightFace arcface_torch / CR-FIQA / MagFace): a 3x3 stem, four stages of
pre-activation ``IBasicBlock`` whose first block always has stride 2 (112 -> 56 -> 28 -> 14
-> 7), then ``bn2`` -> flatten -> ``dropout`` -> ``fc`` -> ``features`` (BN1d). The module
and parameter names (``conv1``, ``bn1``, ``prelu``, ``layer{1..4}.{b}.*``, ``bn2``, ``fc``,
``features``) are those of the released checkpoints, so their state_dicts load as is.

The differences between the code bases are constructor arguments: ``bn_eps`` / ``bn_momentum``
(MagFace: 2e-5 / 0.9), ``dropout_kind`` (MagFace: ``dropout2d`` on the 4-D map) and
``freeze_features_bn`` (arcface_torch: ``features.weight`` fixed at 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fiqa.backbones.base import TrunkTailBackbone

DROPOUT_KINDS = ("dropout", "dropout2d")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution (the usual floor arithmetic)."""
    return (size + 2 * padding - kernel) // stride + 1


class IBasicBlock(nn.Module):
    """Pre-activation residual block: bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3,
    plus the (optionally down-sampled) input. No activation after the addition."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=bn_eps, momentum=bn_momentum)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps, momentum=bn_momentum)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=bn_eps, momentum=bn_momentum)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(TrunkTailBackbone):
    """iResNet trunk + InsightFace embedding tail (see the module docstring).

    ``forward(images)`` returns a :class:`~fiqa.types.BackboneOutput`; with
    ``return_feature_map=True`` its ``feature_map`` is the flattened tensor exactly as it
    enters ``dropout``/``fc`` (shape ``(B, feature_dim)``). ``tail(feature_map, stochastic)``
    runs only dropout -> fc -> features, which is what SER-FIQ repeats.
    """

    def __init__(
        self,
        *,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_dim: int = 512,
        input_size: int = 112,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        dropout: float = 0.0,
        dropout_kind: str = "dropout",
        freeze_features_bn: bool = False,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        layers, widths = [int(n) for n in layers], [int(w) for w in widths]
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(
                f"backbone.layers and backbone.widths need 4 entries (one per stage), "
                f"got layers={layers}, widths={widths}"
            )
        if dropout_kind not in DROPOUT_KINDS:
            raise ValueError(
                f"backbone.dropout_kind={dropout_kind!r} is not valid; choose one of {list(DROPOUT_KINDS)}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"backbone.dropout must be in [0, 1), got {dropout}")
        self.dropout_kind = dropout_kind
        self.embedding_dim = int(embedding_dim)
        bn = {"eps": bn_eps, "momentum": bn_momentum}

        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], **bn)
        self.prelu = nn.PReLU(widths[0])
        side = _conv_out(int(input_size), 3, stem_stride, 1)

        inplanes = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths, layers), start=1):
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False),
                nn.BatchNorm2d(planes, **bn),
            )
            stage = [IBasicBlock(inplanes, planes, 2, downsample, bn_eps, bn_momentum)]
            stage += [IBasicBlock(planes, planes, 1, None, bn_eps, bn_momentum) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            inplanes = planes
            # conv2 of block 0 sets the side (its 1x1 skip gives the same)
            side = _conv_out(side, 3, 2, 1)
        if side < 1:
            raise ValueError(f"backbone.input_size={input_size} is too small for 4 stride-2 stages")

        self.map_shape = (widths[-1], side, side)
        self.feature_dim = widths[-1] * side * side
        self.bn2 = nn.BatchNorm2d(widths[-1], **bn)
        self.dropout = nn.Dropout(dropout) if dropout_kind == "dropout" else nn.Dropout2d(dropout)
        self.fc = nn.Linear(self.feature_dim, self.embedding_dim)
        self.features = nn.BatchNorm1d(self.embedding_dim, **bn)

        for m in self.modules():  # arcface_torch init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        if freeze_features_bn:
            self.features.weight.requires_grad_(False)

    def trunk(self, images: Tensor) -> Tensor:
        """Images (B,3,H,W) -> flattened feature map (B, feature_dim), as it enters ``dropout``."""
        x = self.prelu(self.bn1(self.conv1(images)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.bn2(x), 1)

    def drop(self, feature_map: Tensor, p: float) -> Tensor:
        """``dropout`` (flat) or ``dropout2d`` (whole channels of the (C, H, W) map, MagFace)."""
        if self.dropout_kind == "dropout2d":
            return F.dropout2d(feature_map.view(feature_map.shape[0], *self.map_shape), p, training=True).flatten(1)
        return F.dropout(feature_map, p, training=True)


def iresnet18(**kwargs) -> IResNet:
    """iResNet-18: blocks [2,2,2,2]."""
    return IResNet(layers=(2, 2, 2, 2), **kwargs)


def iresnet34(**kwargs) -> IResNet:
    """iResNet-34: blocks [3,4,6,3]."""
    return IResNet(layers=(3, 4, 6, 3), **kwargs)


def iresnet50(**kwargs) -> IResNet:
    """iResNet-50: blocks [3,4,14,3]."""
    return IResNet(layers=(3, 4, 14, 3), **kwargs)


def iresnet100(**kwargs) -> IResNet:
    """iResNet-100: blocks [3,13,30,3]."""
    return IResNet(layers=(3, 13, 30, 3), **kwargs)


def iresnet200(**kwargs) -> IResNet:
    """iResNet-200 (arcface_torch only): blocks [6,26,60,6]."""
    return IResNet(layers=(6, 26, 60, 6), **kwargs)


def iresnet_tiny(**kwargs) -> IResNet:
    """CPU-fast iResNet for tests and laptops: one block per stage, widths 16..128, a stride-2
    stem (112 -> 56 -> ... -> 4x4 map) and a 128-d embedding. Every default is overridable."""
    kwargs.setdefault("layers", (1, 1, 1, 1))
    kwargs.setdefault("widths", (16, 32, 64, 128))
    kwargs.setdefault("embedding_dim", 128)
    kwargs.setdefault("stem_stride", 2)
    return IResNet(**kwargs)
