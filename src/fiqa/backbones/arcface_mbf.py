"""arcface_torch's MobileFaceNet (``mbf``, ``mbf_large``) with its parameter names, so its
released ``model.pt`` state_dicts load strictly.

Facts (insightface ``recognition/arcface_torch/backbones/mobilefacenet.py`` and ``__init__.py``,
commit 7fadd420):

* ``get_model("mbf")`` = ``MobileFaceNet(fp16, num_features, blocks=(1, 4, 6, 2), scale=2)``,
  ``get_model("mbf_large")`` = ``blocks=(2, 8, 12, 4), scale=4``; ``num_features`` is the config's
  ``embedding_size`` (512 in every ``configs/*mbf*.py``), ``fp16=True`` in those configs.
* ``ConvBlock`` = ``layers: Sequential(Conv2d(bias=False), BatchNorm2d, PReLU(out))``;
  ``LinearBlock`` = ``layers: Sequential(Conv2d(bias=False), BatchNorm2d)``;
  ``DepthWise(in, out, residual, stride, groups)`` = ``layers: Sequential(ConvBlock(in -> groups, 1x1),
  ConvBlock(groups -> groups, 3x3, stride, groups=groups), LinearBlock(groups -> out, 1x1))``, plus the
  input when ``residual``; ``Residual(c, n, groups)`` = ``layers: Sequential(n x DepthWise(c, c, True,
  stride 1, groups))``. The hidden width ``groups`` is NOT scaled with ``scale``.
* ``layers`` is a ModuleList (s = scale):
  ``0`` ConvBlock(3 -> 64s, 3x3, s2, p1);
  ``1`` ConvBlock(64s -> 64s, 3x3, s1, p1, groups=64) if ``blocks[0] == 1`` else
  Residual(64s, blocks[0], groups=128);
  ``2`` DepthWise(64s -> 64s, s2, groups=128); ``3`` Residual(64s, blocks[1], groups=128);
  ``4`` DepthWise(64s -> 128s, s2, groups=256); ``5`` Residual(128s, blocks[2], groups=256);
  ``6`` DepthWise(128s -> 128s, s2, groups=512); ``7`` Residual(128s, blocks[3], groups=256).
  Keys: ``layers.0.layers.0.weight``, ``layers.2.layers.1.layers.0.weight``,
  ``layers.3.layers.0.layers.0.layers.0.weight`` (stage 3, unit 0, expand conv), ...
* ``conv_sep`` = ConvBlock(128s -> 512, 1x1); ``features`` = ``GDC``: ``layers: Sequential(
  LinearBlock(512 -> 512, 7x7, groups=512), Flatten, Linear(512, num_features, bias=False),
  BatchNorm1d(num_features))`` (keys ``features.layers.0.layers.{0,1}.*``, ``features.layers.2.weight``,
  ``features.layers.3.*``; BN eps 1e-5 everywhere; ``features.layers.3.weight`` is trained, not frozen).
* ``forward``: ``with torch.cuda.amp.autocast(self.fp16)`` around the ``layers`` loop only (so with
  ``fp16=False`` it also switches a caller's CUDA autocast off there), then
  ``conv_sep(x.float() if fp16 else x)`` and ``features`` outside it. There is no dropout.
* Sizes (arcface_torch's own models, counted): ``mbf`` 333 state_dict keys, 2,059,520 parameters;
  ``mbf_large`` 606 keys, 6,314,880 parameters (num_features 512).

fiqa's contract (:class:`~fiqa.backbones.base.TrunkTailBackbone`): ``trunk`` = ``layers`` ->
``conv_sep`` -> the GDC conv-BN -> flatten, ``(B, 512)``; ``tail`` = ``dropout`` (ours, p=0 by
default: where SER-FIQ drops) -> ``fc`` (a property: ``features.layers[2]``, the GDC Linear) ->
``features`` (the GDC module, whose own ``forward`` applies only its final BatchNorm1d, so that
``features(fc(x))`` is the embedding as in every fiqa backbone; :meth:`GDC.pool` runs its conv part).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fiqa.backbones.base import TrunkTailBackbone

LAST_CHANNELS = 512  # conv_sep / GDC width, fixed in arcface_torch (not scaled)
# the hidden (``groups``) widths of layers.1 (when a Residual), 2..7, fixed in arcface_torch
STEM_GROUPS = 64  # layers.1 when blocks[0] == 1: a grouped (not depthwise) 3x3 ConvBlock
HIDDEN = {1: 128, 2: 128, 3: 128, 4: 256, 5: 256, 6: 512, 7: 256}


class ConvBlock(nn.Module):
    """``layers``: Conv2d (no bias) -> BatchNorm2d -> PReLU(out)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """``layers``: Conv2d (no bias) -> BatchNorm2d (no activation)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """1x1 ConvBlock to ``hidden`` -> 3x3 depthwise ConvBlock (stride) -> 1x1 LinearBlock to ``cout``
    (+ the input when ``residual``)."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, hidden, 1),
            ConvBlock(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),
            LinearBlock(hidden, cout, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``layers``: ``n`` residual stride-1 DepthWise units of width ``c``."""

    def __init__(self, c: int, n: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(c, c, hidden, 1, residual=True) for _ in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """``layers``: LinearBlock(512, 7x7 depthwise) -> Flatten -> Linear(512, D, no bias) -> BatchNorm1d(D).

    :meth:`pool` runs the first two (the trunk's end); ``forward`` runs the last one only (the
    ``features`` step of fiqa's tail; the Linear is the backbone's ``fc``).
    """

    def __init__(self, num_features: int, kernel: int = 7):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(LAST_CHANNELS, LAST_CHANNELS, kernel, groups=LAST_CHANNELS),
            nn.Flatten(),
            nn.Linear(LAST_CHANNELS, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def pool(self, x: Tensor) -> Tensor:
        return self.layers[1](self.layers[0](x))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers[3](x)


def _cuda_autocast(x: Tensor, enabled: bool) -> contextlib.AbstractContextManager:
    """arcface_torch's ``torch.cuda.amp.autocast(enabled)`` (float16): only CUDA tensors feel it, so
    on other devices it is skipped (no 'CUDA is not available' warning)."""
    if not x.is_cuda:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16, enabled=enabled)


class ArcFaceMobileFaceNet(TrunkTailBackbone):
    """arcface_torch's MobileFaceNet (see the module docstring for the layout and the facts).

    ``scale`` and ``blocks`` as in arcface_torch (``mbf``: 2, (1, 4, 6, 2); ``mbf_large``: 4,
    (2, 8, 12, 4)); ``num_features`` = D; ``fp16`` as its ``fp16`` argument (autocast around
    ``layers`` on CUDA); ``input_size`` sets the GDC kernel (112 -> 7x7); ``dropout`` is fiqa's
    (before the GDC Linear; arcface_torch has none).
    """

    def __init__(
        self,
        num_features: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        fp16: bool = False,
        input_size: int = 112,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 0:
            raise ValueError(f"backbone.blocks needs 4 non-negative entries (arcface_torch mbf), got {list(blocks)}")
        if int(scale) < 1:
            raise ValueError(f"backbone.scale must be a positive integer, got {scale}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"backbone.dropout must be in [0, 1), got {dropout}")
        s = int(scale)
        side = int(input_size)
        for _ in range(4):  # layers.0, 2, 4, 6 have stride 2 (3x3, padding 1)
            side = (side - 1) // 2 + 1
        self.scale, self.blocks, self.fp16, self.input_size = s, blocks, bool(fp16), int(input_size)
        self.embedding_dim = int(num_features)
        self.feature_dim = LAST_CHANNELS

        c1, c2 = 64 * s, 128 * s
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, 3, stride=2, padding=1))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, 3, stride=1, padding=1, groups=STEM_GROUPS))
        else:
            self.layers.append(Residual(c1, blocks[0], HIDDEN[1]))
        self.layers.extend(
            [
                DepthWise(c1, c1, HIDDEN[2], 2, residual=False),
                Residual(c1, blocks[1], HIDDEN[3]),
                DepthWise(c1, c2, HIDDEN[4], 2, residual=False),
                Residual(c2, blocks[2], HIDDEN[5]),
                DepthWise(c2, c2, HIDDEN[6], 2, residual=False),
                Residual(c2, blocks[3], HIDDEN[7]),
            ]
        )
        self.conv_sep = ConvBlock(c2, LAST_CHANNELS, 1)
        self.features = GDC(self.embedding_dim, kernel=side)
        self.dropout = nn.Dropout(dropout)

        for m in self.modules():  # arcface_torch's _initialize_weights
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def fc(self) -> nn.Linear:
        """The GDC's Linear (``features.layers.2``): fiqa's ``fc`` step of the tail."""
        return self.features.layers[2]

    def trunk(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> the flattened GDC conv-BN output (B, 512), as it enters ``fc``."""
        x = images
        with _cuda_autocast(x, self.fp16):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.float() if self.fp16 else x)
        return self.features.pool(x)


#: arcface_torch ``get_model`` names -> our constructor arguments.
MBF_ARCHS: dict[str, dict] = {
    "mbf": {"scale": 2, "blocks": (1, 4, 6, 2)},
    "mbf_large": {"scale": 4, "blocks": (2, 8, 12, 4)},
}


def arcface_mbf(**kwargs) -> ArcFaceMobileFaceNet:
    """arcface_torch ``get_model("mbf")``: scale 2, blocks (1, 4, 6, 2)."""
    return ArcFaceMobileFaceNet(**{**MBF_ARCHS["mbf"], **kwargs})


def arcface_mbf_large(**kwargs) -> ArcFaceMobileFaceNet:
    """arcface_torch ``get_model("mbf_large")``: scale 4, blocks (2, 8, 12, 4)."""
    return ArcFaceMobileFaceNet(**{**MBF_ARCHS["mbf_large"], **kwargs})
