"""eDifFIQA (Babnik et al., IEEE T-BIOM 2024): an FR backbone + an MLP quality head regressing quality
labels that are shifted by the image's distance to its identity's high-quality centre, with a consistency
term that keeps the backbone's embeddings those of the original FR model. Facts, from LSIbabnikz/eDifFIQA:

* model (``model/ediffiqa.py``, ``model/mlp.py``, ``configs/ediffiqa{L,M,S}_config.yaml``): the FR backbone
  (``base_model``: iresnet100 L, iresnet50 M, iresnet18 S) -> its raw embedding ``feat`` -> ``MLP``
  ``Linear(512, 1024) -> GELU -> Linear(1024, 1)``; the quality is the MLP output, the embedding ``feat``;
* input (the configs' ``transformations``): Resize 112, ToTensor, Normalize(0.5, 0.5): RGB in [-1, 1], no
  flip or other augmentation;
* training (``configs/train_config.yaml``): 3 epochs, batch 128, seed 42069, AMP; Adam with two groups,
  ``mlp`` lr 1e-3 and ``base_model`` lr 1e-4 restricted to its LAST 100 parameter tensors (``limit: 100``,
  ``utils.construct_optimizer``: ``list(params)[-limit:]``); gradient norm clipped to 5 (``train.py``);
  10 % of the images held out for validation (``dataset.construct_datasets``, val_split 0.1);
* labels (``dataset.construct_datasets``): the prior quality scores min-max normalised to [0, 1];
* class centres (``prepare_data.py``, beta 0.2): the threshold is the quality at rank ``int(0.2 N)`` of all
  images sorted by quality (descending); an identity's centre is the mean of the FR model's (raw)
  embeddings of its images at or above it; an identity with fewer than 10 such images is discarded, and so
  are all its images (they leave the training list);
* loss (``train.py`` ``train``, ``loss.py`` ``ExtendedL1``, ``train_config.yaml`` ``loss``):
  ``ad = 1 - cos(e, c_id)`` (``CosineEmbeddingLoss`` with target 1, under no_grad), the student's current
  embedding ``e`` against its identity's centre; quality term ``L1(q, clamp(y - 0.5 ad, 0, 1))`` (epsilon
  0.5); consistency term ``mean(1 - cos(e, t))`` with ``t`` the precomputed embedding of the same image by
  the original FR model (the frozen teacher, ``embeddings[img_name]`` in ``dataset.WrapperDataset``);
  total ``theta * consistency + (1 - theta) * quality`` with theta 0.5.

Here: the teacher embeddings come from the label pass (:mod:`fiqa.methods.labels`, ``teacher=True``: one
unflipped pass of the FR model over the training images, cached in the run dir as float16), the student
starts from the same FR model (``init_backbone: labels``), and the centres are rebuilt from the cache at
each start (cheap). Differences: the gradient clip covers the trainable parameters only (the original clips
over all, including the frozen first tensors whose gradients it computes but never applies); no validation
split is held out of the training set (validation runs on ``val`` sets).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.nn import functional as F

from fiqa.methods.distill import Distill, _plain, masked_mean
from fiqa.types import BackboneOutput
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


def class_centres(
    teacher: np.ndarray, raw: np.ndarray, identity: np.ndarray, num_classes: int, beta: float, min_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """eDifFIQA's centres: ``(centres (C, D) float32, kept (C,) bool)``. The threshold is the quality at
    position ``int(beta N)`` of the labelled images sorted by quality, highest first; a class keeps its
    centre (the mean raw teacher embedding of its images at or above it) with at least ``min_images`` of them."""
    ok = np.isfinite(raw)
    srt = np.sort(raw[ok])[::-1]
    thr = srt[min(int(beta * srt.size), srt.size - 1)]
    chosen = ok & (np.nan_to_num(raw, nan=-np.inf) >= thr)
    d = teacher.shape[1]
    sums = np.zeros((num_classes, d), np.float64)
    counts = np.bincount(identity[chosen], minlength=num_classes)[:num_classes]
    idx = np.flatnonzero(chosen)
    for lo in range(0, idx.size, 65536):  # the memory-mapped teacher, in blocks
        part = idx[lo : lo + 65536]
        np.add.at(sums, identity[part], np.asarray(teacher[part], np.float64))
    kept = counts >= int(min_images)
    centres = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return centres, kept


class EDifFIQA(Distill):
    """Args (beyond :class:`Distill`'s): ``theta`` (consistency weight; the quality term gets 1 - theta),
    ``epsilon`` (label shift), ``centre_beta`` (fraction of the set that is "high quality"),
    ``centre_min_images`` (fewer chosen images: the identity and its images are left out)."""

    needs_teacher = True

    def __init__(
        self,
        *args,
        theta: float = 0.5,
        epsilon: float = 0.5,
        centre_beta: float = 0.2,
        centre_min_images: int = 10,
        **kwargs,
    ):
        if "quality_labels" in kwargs:  # plain in the checkpoint's hyper-parameters (weights_only loads)
            kwargs["quality_labels"] = _plain(kwargs["quality_labels"])
        kwargs.setdefault("loss", "l1")
        kwargs.setdefault("head_hidden", 1024)
        super().__init__(*args, **kwargs)
        if not 0.0 <= theta <= 1.0:
            raise ValueError(f"method.theta={theta} must be in [0, 1]")
        self.theta, self.epsilon = float(theta), float(epsilon)
        self.centre_beta, self.centre_min_images = float(centre_beta), int(centre_min_images)

    def prepare_targets(self, reader) -> None:
        from fiqa.methods.labels import identities

        ident = identities(reader)
        num_classes = int(getattr(reader, "num_classes", ident.max() + 1))
        centres, kept = class_centres(
            self.label_set["teacher"],
            self.label_set["raw"],
            ident,
            num_classes,
            self.centre_beta,
            self.centre_min_images,
        )
        if not kept.any():
            raise ValueError(
                f"eDifFIQA: no identity has {self.centre_min_images} images among the top {self.centre_beta:.0%} "
                f"by quality; lower method.centre_min_images"
            )
        self.register_buffer("centres", torch.from_numpy(centres), persistent=False)
        self.register_buffer("centre_kept", torch.from_numpy(kept), persistent=False)
        n_out = int((~kept[ident]).sum())
        log.info(
            f"eDifFIQA: {int(kept.sum())} / {num_classes} identities keep a centre; {n_out} images of the others "
            f"are left out of the loss (prepare_data.py: fewer than {self.centre_min_images} chosen images)"
        )

    def losses(self, out: BackboneOutput, batch: Mapping[str, torch.Tensor]) -> dict:
        y, ok = self.batch_labels(batch)
        ident = batch["label"].long()
        ok = ok & self.centre_kept[ident]
        e = out.embedding.float()
        idx = batch["index"].detach().cpu().numpy()
        teacher = torch.from_numpy(np.asarray(self.label_set["teacher"][idx], np.float32)).to(e.device)
        with torch.no_grad():
            ad = 1.0 - F.cosine_similarity(e, self.centres[ident], dim=1)
            target = torch.clamp(y.nan_to_num() - self.epsilon * ad, 0.0, 1.0)
        q = self.quality(out)
        quality = masked_mean((q - target).abs(), ok)
        consistency = masked_mean(1.0 - F.cosine_similarity(e, teacher, dim=1), ok)
        bs = q.shape[0]
        self.log_dict(
            {"train/quality": q.detach().mean(), "train/target": masked_mean(target, ok), "train/ad": ad.mean()},
            batch_size=bs,
        )
        return {"quality": (1.0 - self.theta) * quality, "consistency": self.theta * consistency}
