"""QGFace (quality-guided joint training, arXiv 2312.17494; shared/reference methods_eqface_qgface_adaface
§2): AdaFace plus a quality partition of every batch by the feature norm.

Each training image comes as two views (``augment=qgface``): ``image`` (high quality, HQ) and
``image_lq`` (down-scaled to 11..56 px with JPEG, cropped, jittered, rotated; LQ). Both go through the
backbone in one batch ``[HQ; LQ]`` (2B images, as the original), then

- ``id``: AdaFace CE on all 2B samples, each sample's logits multiplied by the quality gate
  ``sigmoid(2 s (q - qs))``, ``q = (ms + 1) / 2`` (:class:`~fiqa.heads.qgface.QGFaceHead`): samples below
  ``qs`` get no classification gradient;
- ``con``: ``contrast_weight`` x the contrastive loss between the two views of each image, gated to the
  pairs whose quality is below ``qs``, negatives from a proxy-updated queue gathered across ranks
  (:class:`~fiqa.heads.qgface.QGFaceContrast`).

Warm-up (the original's ``warmup_scaler``): in epoch ``e`` both heads use ``qs * min(1, e / joint_point)``;
``qs = 0`` means no gate (every sample classified, every pair contrasted). Quality at test time = the raw
embedding's norm (FaceModule's default), as AdaFace. ``contrast_weight: 0`` gives the "QS only" ablation,
``quality_scale: 0`` and ``joint_point: 0`` "CL on every pair".

The original's bugs (reference §2.12) and what is done here instead:
1. Its ``configs/`` folder is missing, so it cannot run: every value is chosen and commented in
   ``conf/method/qgface.yaml`` (and ``conf/experiment/qgface_ms1mv2_r50.yaml``).
2. ``os.environ['USER']=='fwang'`` and hard-coded ``sys.path`` entries: no environment or path is read here.
3. ``later_aug=True`` reads one view and then fails to split the batch: not offered; both views always
   train (the augmentation is chosen by the ``augment`` group).
4. ``supervision_mask`` with ``mask_same_class=False`` uses ``min(chunk // B, 1)`` where ``max`` was meant,
   so the sample's own views are not masked: here the own views are always masked, by sample index
   (``mask_same_class`` only adds the other entries of the class).
5. ``acc-cr`` logging pops the wrong key: the logged values are ``train/gate/*``, ``train/norm_{hq,lq}``,
   ``train/queue_filled`` and ``train/quality_scale``, each written once.
6. ``validation_IJB_step`` reads TinyFace's flip / fusion settings; 7. in-framework IJB pooling omits the
   norm weighting; 8. ``validation_list`` must follow a hard-coded order: fiqa's evaluation is
   method-agnostic, each val set carries its own ``flip`` and protocols and is dispatched by name.
9. ``inference.py`` asks for ``ir_50`` while its builder knows ``ir50``: the backbone comes from
   ``backbone=ir50`` (``fiqa.backbones.ir``, AdaFace's key names).
10. The norm statistics start at 0 / 0, so in the first steps every sample has ``ms`` = +1, counts as
    high quality and is classified by accident. Here the EMA is bias-corrected (``head.debias_stats``,
    :class:`~fiqa.heads.qgface.QGFaceHead`): the first batch sets the statistics, so ``q`` follows the
    data's norm distribution from the first step; the warm-up (``joint_point``) is what keeps the gates
    open early, explicitly. (AdaFace's start 20 / 100 instead, ``head.debias_stats=false``, is no fix on
    short runs: with ``t_alpha = 0.01`` the std estimate stays inflated for hundreds of steps, so every
    ``q`` sits just below 0.5 and a gate at ``qs = 0.5`` turns classification off for almost all samples.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fiqa.heads.qgface import QGFaceContrast, QGFaceHead, classification_gate, quality_from_ms
from fiqa.methods.adaface import AdaFace
from fiqa.types import BackboneOutput


class QGFace(AdaFace):
    """Args (beyond FaceModule's): ``quality_scale`` qs in [0, 1]; ``joint_point`` warm-up epochs of qs
    (0: none); ``contrast_weight``; the contrastive head's ``queue_size``, ``contrast_s`` (1 / temperature),
    ``gate`` (sgn|cos|linear), ``quality_select`` (low|mean|high), ``symmetric``, ``mask_same_class``,
    ``detach_hq``, ``positive_margin``, ``rescale_reference`` (0: no rescaling), ``proxy_update`` and
    ``gather`` (all-gather the queue entries across ranks)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        *,
        quality_scale: float = 0.5,
        joint_point: int = 2,
        contrast_weight: float = 1.0,
        queue_size: int = 4096,
        contrast_s: float = 16.0,
        gate: str = "sgn",
        quality_select: str = "low",
        symmetric: bool = True,
        mask_same_class: bool = True,
        detach_hq: bool = False,
        positive_margin: float = 0.0,
        rescale_reference: int = 128,
        proxy_update: bool = True,
        gather: bool = True,
        **face_module_args,
    ):
        if head is not None and not isinstance(head, QGFaceHead):
            raise ValueError(f"method=qgface needs its head (fiqa.heads.qgface.QGFaceHead), got {type(head).__name__}")
        if not 0.0 <= quality_scale <= 1.0:
            raise ValueError(f"method.quality_scale must be in [0, 1], got {quality_scale}")
        if joint_point < 0 or contrast_weight < 0:
            raise ValueError(
                f"method.joint_point and method.contrast_weight must be >= 0, got {joint_point}, {contrast_weight}"
            )
        super().__init__(backbone, head, **face_module_args)
        self.contrast_head = QGFaceContrast(
            backbone.embedding_dim,
            queue_size,
            contrast_s,
            gate,
            quality_select,
            symmetric,
            mask_same_class,
            detach_hq,
            positive_margin,
            rescale_reference,
            proxy_update,
            gather,
        )
        self.set_quality_scale(epoch=0)

    def quality_scale_at(self, epoch: int) -> float:
        """``qs * min(1, epoch / joint_point)`` (``qs`` from the start when ``joint_point`` is 0)."""
        jp = self.hparams.joint_point
        return float(self.hparams.quality_scale) * (min(1.0, epoch / jp) if jp > 0 else 1.0)

    def set_quality_scale(self, epoch: int) -> None:
        qs = self.quality_scale_at(epoch)
        self.contrast_head.quality_scale = qs
        if self.head is not None:
            self.head.quality_scale = qs

    def on_train_epoch_start(self) -> None:
        self.set_quality_scale(self.current_epoch)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The two views as one batch ``[HQ; LQ]`` of 2B images (labels and indices repeated)."""
        if "image_lq" not in batch:
            raise ValueError(
                "method=qgface needs two views per training image (batch key 'image_lq'): keep its "
                "augment=qgface (or another fiqa.data.datamodule.MultiView augment with names [image_lq, image])"
            )
        both = {k: v for k, v in batch.items() if k != "image_lq"}
        both["image"] = torch.cat([batch["image"], batch["image_lq"]])
        both["label"] = torch.cat([batch["label"], batch["label"]])
        both["index"] = torch.cat([batch["index"], batch["index"]])
        return super().training_step(both, batch_idx)

    def losses(self, out: BackboneOutput, batch: Mapping[str, torch.Tensor]) -> dict:
        """``out`` and ``batch`` hold ``[HQ; LQ]`` (2B rows, see :meth:`training_step`)."""
        emb, labels, indices = out.embedding, batch["label"], batch["index"]
        b = emb.shape[0] // 2
        head_out = self.head(emb, labels)
        terms = {"id": self.classification_loss(head_out, batch)}
        gate_id = classification_gate(head_out.ms, self.head.quality_scale, self.head.s)
        stats = {
            "train/norm_hq": head_out.norm[:b].mean(),
            "train/norm_lq": head_out.norm[b:].mean(),
            "train/norm_ema_mean": self.head.batch_mean[0],
            "train/norm_ema_std": self.head.batch_std[0],
            "train/quality_hq": quality_from_ms(head_out.ms[:b]).mean(),
            "train/quality_lq": quality_from_ms(head_out.ms[b:]).mean(),
            "train/gate/id": gate_id.mean() if gate_id is not None else 1.0,
            "train/quality_scale": self.head.quality_scale,
        }
        if self.hparams.contrast_weight > 0:
            class_weight = self.head.weight.detach()
            if self.training:
                self.contrast_head.enqueue(emb, labels, class_weight[labels], indices)
            c = self.contrast_head(
                emb[b:], emb[:b], head_out.ms[b:], head_out.ms[:b], labels[:b], indices[:b], class_weight
            )
            terms["con"] = self.hparams.contrast_weight * c.loss
            stats["train/gate/con"] = c.gate.mean()
            stats["train/queue_filled"] = c.num_negatives
        self.log_dict({k: v.float() if torch.is_tensor(v) else float(v) for k, v in stats.items()}, batch_size=b)
        return terms
