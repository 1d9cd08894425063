"""EQFace's ResNet ("FaceQuality", ``models/model_resnet.py``) and its quality branch, in the
original module tree so ``backbone.pth`` loads as it is (reference methods_eqface_qgface_adaface §3.4).

    input_layer   = (Conv2d 3x3, BN2d, PReLU)
    layer{1..4}.j = IRBlock (the AdaFace unit); unit 0 of every stage has stride 2 and ALWAYS a
                    conv1x1 + BN shortcut (even 64 -> 64); the other units add the input as is
    output_layer  = (BN2d, Dropout, Flatten)
    feature_layer = (Linear(F, D), BN1d(D))          # affine, unlike AdaFace

ResNet-100 has 925 keys. The quality branch :class:`EQFaceQuality` reads the flattened
``output_layer`` output (25,088-d, dropout off), not the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fiqa.backbones.base import TrunkTailBackbone
from fiqa.backbones.ir import IRBlock, ir_stem

EQFACE_LAYERS = {34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


class EQFaceResNet(TrunkTailBackbone):
    """EQFace's IR-ResNet as a :class:`TrunkTailBackbone`: ``trunk`` = input_layer -> layers ->
    BN2d -> flatten; ``tail`` = dropout -> ``feature_layer`` (``fc`` = ``feature_layer[0]``,
    ``features`` = ``feature_layer[1]``, ``dropout`` = ``output_layer[1]``)."""

    def __init__(
        self,
        *,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.4,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        bn = {"eps": bn_eps, "momentum": bn_momentum}
        layers, widths, _ = ir_stem(self, layers, widths, embedding_dim, input_size, dropout, bn)
        in_planes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, layers), start=1):
            units = [IRBlock(in_planes, planes, 2, "conv", bn_eps, bn_momentum)]
            units += [IRBlock(planes, planes, 1, "identity", bn_eps, bn_momentum) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*units))
            in_planes = planes
        self.output_layer = nn.Sequential(nn.BatchNorm2d(widths[-1], **bn), nn.Dropout(float(dropout)), nn.Flatten())
        self.feature_layer = nn.Sequential(
            nn.Linear(self.feature_dim, self.embedding_dim), nn.BatchNorm1d(self.embedding_dim, **bn)
        )

        for m in self.modules():  # EQFace init
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def dropout(self) -> nn.Module:
        return self.output_layer[1]

    @property
    def fc(self) -> nn.Module:
        return self.feature_layer[0]

    @property
    def features(self) -> nn.Module:
        return self.feature_layer[1]

    def trunk(self, images: Tensor) -> Tensor:
        """Images (B,3,H,W) -> flattened feature map (B, feature_dim): EQFace's ``fc`` output."""
        x = self.input_layer(images)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.output_layer[0](x), 1)


def eqface_resnet34(**kwargs) -> EQFaceResNet:
    return EQFaceResNet(layers=EQFACE_LAYERS[34], **kwargs)


def eqface_resnet50(**kwargs) -> EQFaceResNet:
    return EQFaceResNet(layers=EQFACE_LAYERS[50], **kwargs)


def eqface_resnet100(**kwargs) -> EQFaceResNet:
    """The released EQFace backbone: units [3,13,30,3], 925 keys."""
    return EQFaceResNet(layers=EQFACE_LAYERS[100], **kwargs)


def eqface_resnet152(**kwargs) -> EQFaceResNet:
    return EQFaceResNet(layers=EQFACE_LAYERS[152], **kwargs)


class EQFaceQuality(nn.Module):
    """EQFace's quality branch: Linear(F, hidden, no bias) -> BN1d -> ReLU -> Linear(hidden, 2,
    no bias) -> softmax; the quality is the first probability, in (0, 1), higher = better.

    Input: the flattened pre-``fc`` map of the backbone it was trained with (``trunk`` output).
    The original names (``qualtiy.0/1/3``) are mapped to ``fc1``/``bn``/``fc2`` by
    :mod:`fiqa.interop`.
    """

    def __init__(self, in_features: int, hidden: int = 512, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(int(in_features), int(hidden), bias=False)
        self.bn = nn.BatchNorm1d(int(hidden), eps=bn_eps)
        self.fc2 = nn.Linear(int(hidden), 2, bias=False)
        for m in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(m.weight)

    def probabilities(self, feature_map: Tensor) -> Tensor:
        """(B, F) -> (B, 2) softmax."""
        return F.softmax(self.fc2(F.relu(self.bn(self.fc1(feature_map)))), dim=1)

    def forward(self, feature_map: Tensor) -> Tensor:
        """(B, F) -> (B,) quality = softmax(...)[:, 0]."""
        return self.probabilities(feature_map)[:, 0]
