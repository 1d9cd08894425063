"""QMagFace (Terhörst et al., WACV 2023): MagFace training, then the quality-aware comparison score
``s' = min(0, beta*s - alpha) * min(q1, q2) + s`` (``fiqa.quality.qmagface``) on every val set.

``alpha, beta``: fixed (``method.alpha/beta`` or ``method.preset=magface18|50|100``), or fitted by the
paper's procedure on ``method.fit_images`` training images before every validation during training
(seeded; the values are buffers, so the checkpoint keeps them and ``task=eval`` reuses them).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fiqa.eval.sets import qmagface_pair_scores
from fiqa.methods.magface import MagFace
from fiqa.quality import qmagface
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


class QMagFace(MagFace):
    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        *,
        lambda_g: float = 35.0,
        quality_flip: bool = False,
        alpha: float | None = None,
        beta: float | None = None,
        preset: str | None = None,
        fit_images: int = 2048,
        fit_seed: int = 0,
        **face_module_args,
    ):
        super().__init__(backbone, head, lambda_g=lambda_g, quality_flip=quality_flip, **face_module_args)
        if (alpha is None) != (beta is None):
            raise ValueError("method.alpha and method.beta go together (or use method.preset, or neither to fit them)")
        if preset is not None and alpha is None:
            alpha, beta = qmagface.get_preset(preset)
        self.fixed = alpha is not None
        self.register_buffer("alpha", torch.tensor(float(alpha) if alpha is not None else 0.0, dtype=torch.float64))
        self.register_buffer("beta", torch.tensor(float(beta) if beta is not None else 0.0, dtype=torch.float64))
        self.fit_images, self.fit_seed = int(fit_images), int(fit_seed)

    def pair_similarity(self, name: str, embeddings: np.ndarray, qualities: np.ndarray) -> np.ndarray:
        return qmagface_pair_scores(embeddings, qualities, float(self.alpha), float(self.beta))

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        t = self.trainer
        if self.fixed or self.fit_images <= 0 or t is None or t.sanity_checking or t.state.fn != "fit":
            return
        dm = t.datamodule
        if dm is None or dm.train_reader is None:
            return
        self.refit(dm.train_reader, dm.to_input)

    @torch.no_grad()
    def refit(self, reader, to_input, batch_size: int = 256) -> tuple[float, float]:
        """Fit alpha, beta on ``fit_images`` seeded training images (their raw embeddings and magnitudes)."""
        rng = np.random.default_rng(self.fit_seed)
        idx = np.sort(rng.choice(len(reader), size=min(self.fit_images, len(reader)), replace=False))
        was_training = self.training
        self.eval()
        embs, labels = [], []
        try:
            for b in range(0, len(idx), batch_size):
                samples = [reader[int(i)] for i in idx[b : b + batch_size]]
                x = torch.stack([to_input(img) for img, _, _ in samples]).to(self.device)
                embs.append(self.embed(x).embedding.float().cpu().numpy())
                labels += [int(lab) for _, lab, _ in samples]
        finally:
            self.train(was_training)
        emb = np.concatenate(embs)
        try:
            alpha, beta = qmagface.fit(emb, np.asarray(labels), np.linalg.norm(emb, axis=1), seed=self.fit_seed)
        except ValueError as err:
            log.warning(f"QMagFace: fitting alpha, beta on {len(idx)} training images failed ({err}); keeping "
                        f"alpha={float(self.alpha):.4g}, beta={float(self.beta):.4g}")  # fmt: skip
            return float(self.alpha), float(self.beta)
        self.alpha.fill_(float(alpha))
        self.beta.fill_(float(beta))
        log.info(f"QMagFace: alpha={alpha:.5g}, beta={beta:.5g} fitted on {len(idx)} training images")
        return float(alpha), float(beta)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer is not None and not self.trainer.sanity_checking:
            self.log("val/qmagface_alpha", float(self.alpha), add_dataloader_idx=False)
            self.log("val/qmagface_beta", float(self.beta), add_dataloader_idx=False)
