"""IR backbones in the AdaFace / QGFace layout, so their released checkpoints load as they are.

The topology is the iResNet one (3x3 stem, four stages whose first unit has stride 2, 112 -> 7;
pre-activation units ``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN``), but the
module tree, and so the state_dict, is AdaFace's (``net.py`` ``Backbone``, reference §1.4):

    input_layer  = (Conv2d 3x3, BN2d, PReLU)
    output_layer = (BN2d, Dropout, Flatten, Linear(F, D), BN1d(D, affine=False))
    body.{i}     = IRBlock: res_layer.{0..5}, shortcut_layer

registered in that order (``input_layer``, ``output_layer``, ``body``), which is also the
original's key order. A unit whose input and output widths are equal has a parameter-free
``MaxPool2d(1, stride)`` shortcut (sub-sampling); otherwise a 1x1 conv + BN (``shortcut_layer.{0,1}``).
So only the first unit of stages 2..4 has shortcut keys: ir_50 has 467 keys, ir_101 917, ir_18 179.

The embedding is the raw BN1d output (AdaFace's ``forward`` returns it normalised plus its norm;
here the norm is the quality, as everywhere in fiqa).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fiqa.backbones.base import TrunkTailBackbone

SHORTCUTS = ("auto", "conv", "identity")


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class IRBlock(nn.Module):
    """One IR unit: ``res_layer`` (BN, conv3x3, BN, PReLU, conv3x3 with ``stride``, BN) + shortcut.

    shortcut: ``"auto"`` (AdaFace): max-pool (1x1, ``stride``) when ``in_planes == planes``, else
    conv1x1 + BN; ``"conv"``: always conv1x1 + BN (EQFace's first unit of a stage);
    ``"identity"``: none, the input is added as is (EQFace's other units; needs stride 1).
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        shortcut: str = "auto",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r} is not valid; choose one of {list(SHORTCUTS)}")
        bn = {"eps": bn_eps, "momentum": bn_momentum}
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_planes, **bn),
            nn.Conv2d(in_planes, planes, 3, 1, 1, bias=False),
            nn.BatchNorm2d(planes, **bn),
            nn.PReLU(planes),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes, **bn),
        )
        if shortcut == "identity":
            if stride != 1 or in_planes != planes:
                raise ValueError(f"an identity shortcut needs stride 1 and equal widths, got {in_planes}->{planes}")
            self.shortcut_layer = None
        elif shortcut == "auto" and in_planes == planes:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, **bn)
            )

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut_layer is None else self.shortcut_layer(x)
        return self.res_layer(x) + skip


def check_stages(layers: Sequence[int], widths: Sequence[int], input_size: int) -> tuple[list, list, int]:
    """Validated (layers, widths, side of the final map) of a 4-stage, stride-2-per-stage net."""
    layers, widths = [int(n) for n in layers], [int(w) for w in widths]
    if len(layers) != 4 or len(widths) != 4 or min(layers) < 1:
        raise ValueError(
            f"backbone.layers and backbone.widths need 4 entries (one per stage, >= 1 unit), "
            f"got layers={layers}, widths={widths}"
        )
    side = int(input_size)
    for _ in range(4):
        side = _conv_out(side, 3, 2, 1)
    if side < 1:
        raise ValueError(f"backbone.input_size={input_size} is too small for 4 stride-2 stages")
    return layers, widths, side


def ir_stem(
    net: nn.Module,
    layers: Sequence[int],
    widths: Sequence[int],
    embedding_dim: int,
    input_size: int,
    dropout: float,
    bn: dict,
) -> tuple[list, list, int]:
    """What AdaFace's IR and EQFace's ResNet share: the checked stages and dropout, ``net``'s
    ``embedding_dim``, ``map_shape`` and ``feature_dim``, and its ``input_layer`` (Conv2d 3x3, BN2d,
    PReLU). Returns (layers, widths, side of the final map)."""
    layers, widths, side = check_stages(layers, widths, input_size)
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"backbone.dropout must be in [0, 1), got {dropout}")
    net.embedding_dim = int(embedding_dim)
    net.map_shape = (widths[-1], side, side)
    net.feature_dim = widths[-1] * side * side
    net.input_layer = nn.Sequential(
        nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0], **bn), nn.PReLU(widths[0])
    )
    return layers, widths, side


class IR(TrunkTailBackbone):
    """AdaFace's IR backbone (see the module docstring) as a :class:`TrunkTailBackbone`.

    ``trunk(images)`` = input_layer -> body -> output_layer[0] (BN2d) -> flatten, i.e. the
    (B, F) map as it enters the dropout; ``tail`` = dropout -> Linear -> BN1d (no affine).
    ``dropout``, ``fc`` and ``features`` are views of ``output_layer[1]``, ``[3]`` and ``[4]``,
    so the state_dict keeps the original names.
    """

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
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(widths[-1], **bn),
            nn.Dropout(float(dropout)),
            nn.Flatten(),
            nn.Linear(self.feature_dim, self.embedding_dim),
            nn.BatchNorm1d(self.embedding_dim, affine=False, **bn),
        )
        units, in_planes = [], widths[0]
        for planes, n in zip(widths, layers):
            units.append(IRBlock(in_planes, planes, 2, "auto", bn_eps, bn_momentum))
            units += [IRBlock(planes, planes, 1, "auto", bn_eps, bn_momentum) for _ in range(n - 1)]
            in_planes = planes
        self.body = nn.Sequential(*units)

        for m in self.modules():  # AdaFace init
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def dropout(self) -> nn.Module:
        return self.output_layer[1]

    @property
    def fc(self) -> nn.Module:
        return self.output_layer[3]

    @property
    def features(self) -> nn.Module:
        return self.output_layer[4]

    def trunk(self, images: Tensor) -> Tensor:
        """Images (B,3,H,W) -> flattened feature map (B, feature_dim), as it enters the dropout."""
        return torch.flatten(self.output_layer[0](self.body(self.input_layer(images))), 1)


IR_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def ir18(**kwargs) -> IR:
    """AdaFace ``ir_18``: units [2,2,2,2] (179 keys)."""
    return IR(layers=IR_LAYERS[18], **kwargs)


def ir34(**kwargs) -> IR:
    """AdaFace ``ir_34``: units [3,4,6,3]."""
    return IR(layers=IR_LAYERS[34], **kwargs)


def ir50(**kwargs) -> IR:
    """AdaFace ``ir_50``: units [3,4,14,3] (467 keys)."""
    return IR(layers=IR_LAYERS[50], **kwargs)


def ir101(**kwargs) -> IR:
    """AdaFace ``ir_101``, which is ``num_layers=100``: units [3,13,30,3] (917 keys)."""
    return IR(layers=IR_LAYERS[100], **kwargs)
