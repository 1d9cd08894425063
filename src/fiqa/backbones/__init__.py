"""Face backbones: images (B,3,H,W) in [-1,1] -> BackboneOutput(embedding, feature_map).

Every backbone has ``embedding_dim`` (D), ``feature_dim`` (F), ``trunk(images) -> (B,F)``,
``tail(feature_map, stochastic) -> (B,D)`` and ``forward(images, return_feature_map=False)``.
"""

from fiqa.backbones.eqface_resnet import EQFaceQuality, EQFaceResNet, eqface_resnet100
from fiqa.backbones.ir import IR, IRBlock, ir18, ir34, ir50, ir101
from fiqa.backbones.iresnet import (
    IBasicBlock,
    IResNet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    iresnet200,
    iresnet_tiny,
)
from fiqa.backbones.mobilefacenet import MobileFaceNet
from fiqa.backbones.timm_backbone import TimmBackbone

__all__ = [
    "EQFaceQuality",
    "EQFaceResNet",
    "IR",
    "IRBlock",
    "eqface_resnet100",
    "ir18",
    "ir34",
    "ir50",
    "ir101",
    "IBasicBlock",
    "IResNet",
    "MobileFaceNet",
    "TimmBackbone",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "iresnet_tiny",
]
