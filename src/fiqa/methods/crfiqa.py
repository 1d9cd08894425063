"""CR-FIQA (Boutros et al., CVPR 2023): learn the certainty ratio of each training sample.

Loss = CE(ArcFace logits) + alpha * SmoothL1_beta(CR target, quality), the target taken from the
pre-margin cosines under no_grad; the quality head is Linear(D, 1) on the BN1d embedding and its
gradient flows into the whole backbone (reference §2.1). With ``head.fc=partial`` CCS/NNCCS are
gathered from the shards (:func:`fiqa.quality.crfiqa.target_scores`); the CR loss is on this rank's
samples.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fiqa.heads.partial_fc import cross_entropy
from fiqa.methods.base import FaceModule
from fiqa.quality.crfiqa import check_kind, cr_loss, target_scores
from fiqa.quality.crfiqa import cr_target as certainty_target
from fiqa.types import BackboneOutput
from fiqa.utils.precision import full_precision


class CRFIQA(FaceModule):
    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        *,
        alpha: float = 10.0,
        smooth_l1_beta: float = 0.5,
        cr_target: str = "code",
        cr_eps: float = 1e-9,
        cr_nnccs_min: float = 0.1,
        **face_module_args,
    ):
        if face_module_args.get("quality_head") is None:
            face_module_args["quality_head"] = nn.Linear(backbone.embedding_dim, 1)
        super().__init__(backbone, head, **face_module_args)
        check_kind(cr_target)
        self.alpha, self.beta, self.cr_target, self.cr_eps = (
            float(alpha),
            float(smooth_l1_beta),
            cr_target,
            float(cr_eps),
        )
        self.cr_nnccs_min = float(cr_nnccs_min)

    def quality(self, out: BackboneOutput) -> torch.Tensor:
        with full_precision(out.embedding):
            return self.quality_head(out.embedding.float()).squeeze(1)

    def losses(self, out: BackboneOutput, batch: Mapping[str, torch.Tensor]) -> dict:
        labels = batch["label"]
        head_out = self.head(out.embedding, labels)
        ccs, nnccs = target_scores(head_out, labels)  # this rank's samples, also under Partial FC
        target = certainty_target(ccs, nnccs, self.cr_target, self.cr_eps, self.cr_nnccs_min)
        q = self.quality(out)
        bs = labels.shape[0]
        self.log_dict(
            {"train/ccs": ccs.mean(), "train/nnccs": nnccs.mean(), "train/quality": q.detach().mean()}, batch_size=bs
        )
        return {"id": cross_entropy(head_out, labels), "cr": self.alpha * cr_loss(q, target, self.beta)}
