"""What every backbone shares: a deterministic ``trunk`` (images -> flattened pre-``fc`` map) and a
stochastic ``tail`` (dropout -> ``fc`` -> ``features``), so SER-FIQ can repeat the tail alone."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fiqa.types import BackboneOutput
from fiqa.utils.precision import full_precision


class TrunkTailBackbone(nn.Module):
    """Subclasses define ``trunk(images)`` and the modules ``dropout``, ``fc`` and ``features``."""

    dropout: nn.Module
    fc: nn.Module
    features: nn.Module

    def trunk(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def tail(self, feature_map: Tensor, stochastic: bool) -> Tensor:
        """dropout (only if ``stochastic``, whatever ``self.training``) -> fc -> features, always in
        float32 (autocast off), as the originals run ``fc`` on ``x.float()``."""
        p = self.dropout.p
        with full_precision(feature_map):
            x = feature_map.float()
            x = self.drop(x, p) if stochastic and p > 0 else x
            return self.features(self.fc(x))

    def drop(self, feature_map: Tensor, p: float) -> Tensor:
        """Dropout on the flat map (always active); backbones with other dropout kinds override it."""
        return F.dropout(feature_map, p, training=True)

    def forward(self, images: Tensor, return_feature_map: bool = False) -> BackboneOutput:
        feature_map = self.trunk(images)
        embedding = self.tail(feature_map, stochastic=self.training)
        return BackboneOutput(embedding=embedding, feature_map=feature_map if return_feature_map else None)
