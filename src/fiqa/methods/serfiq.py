"""SER-FIQ (Terhörst et al., CVPR 2020): training-free quality of any trained FR model.

The trunk runs once; only the stochastic tail (dropout -> fc -> features in eval mode -> L2) is
repeated T times (``fiqa.quality.serfiq_torch``); quality = ``2 sigma(-mean_{i<j} d_ij)`` of the
T unit embeddings. The embedding used for matching is the ordinary deterministic one.

    python main.py method=serfiq ckpt_path=<trained FR model> [quality.T=100 quality.p=0.4]
    python main.py task=eval ckpt_path=<...> quality=serfiq val=[lfw]     # the same, any val sets
"""

from __future__ import annotations

import torch

from fiqa.methods.base import FaceModule
from fiqa.methods.wrappers import QualityWrapper
from fiqa.quality.serfiq_torch import NORMALIZE, quality_from_embeddings, resolve_dropout, stochastic_embeddings
from fiqa.types import FaceOutput


class SERFIQ(QualityWrapper):
    source = "serfiq"

    def __init__(
        self,
        model: FaceModule,
        T: int = 100,
        p: float | None = None,
        normalize: str = "none",
        alpha: float = 130.0,
        r: float = 0.88,
        seed: int = 0,
        chunk: int = 1024,
    ):
        super().__init__(model)
        if not hasattr(self.backbone, "trunk") or not hasattr(self.backbone, "tail"):
            raise ValueError(
                f"quality=serfiq needs a trunk/tail backbone (iResNet, IR ...), got {type(self.backbone).__name__}"
            )
        if normalize not in NORMALIZE:
            raise ValueError(f"quality.normalize={normalize!r} is not valid; choose one of {list(NORMALIZE)}")
        self.p, self.kind = resolve_dropout(self.backbone, p)  # clear error when p is 0 and not given
        self.T, self.normalize, self.alpha, self.r = int(T), normalize, float(alpha), float(r)
        self.seed, self.chunk = int(seed), int(chunk)
        self._generators: dict = {}
        self._embed_input = getattr(model, "embed", None)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def forward(self, images: torch.Tensor) -> FaceOutput:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        feature_map = self.backbone.trunk(images)
        embedding = self.backbone.tail(feature_map, stochastic=False)
        stoch = stochastic_embeddings(
            self.backbone, feature_map, self.T, self.p, self._generator(images.device), self.chunk
        )
        q = quality_from_embeddings(stoch)
        if self.normalize == "sigmoid":
            q = torch.sigmoid(self.alpha * (q - self.r))
        return FaceOutput(embedding=embedding, quality=q.float())
