"""Pseudo-label regression (``method=distill``): a backbone + quality head trained to regress a per-image
quality label of every training image, so that an expensive quality source (SER-FIQ's 100 passes, SDD-FIQA's
similarity distributions, a CSV of another tool) becomes a one-forward model.

    python main.py method=distill method.quality_labels=<qualities.csv>                       # task=quality's CSV
    python main.py method=distill method.quality_labels={source:serfiq,ckpt_path:<FR .ckpt>,p:0.5}

``FaceOutput.quality`` is the head's prediction, ``FaceOutput.embedding`` the backbone's embedding. The labels
come from :mod:`fiqa.methods.labels` (matched by the training reader's keys, or computed once before training
and cached in the run dir, so ``ckpt_path=last`` reuses them), normalised by ``normalize`` (min-max to [0, 1]
by default). A sample without a label (``unmatched: skip``, an SDD identity of one image) is left out of the
loss. The backbone can start from an FR model (``init_ckpt=<model>``, or ``init_backbone: labels``: the
label source's own backbone) and be frozen (``freeze_backbone``), partly trained (``backbone_train_last``:
only its last N parameter tensors, eDifFIQA's ``limit: 100``) or fine-tuned with ``backbone_lr_scale`` x the
head's learning rate. The method needs no margin head (``head: null``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.nn import functional as F

from fiqa.methods.base import FaceModule, param_groups, scaled_lr
from fiqa.types import BackboneOutput
from fiqa.utils.logging import get_logger
from fiqa.utils.precision import full_precision

log = get_logger(__name__)

LOSSES = ("l1", "smooth_l1", "mse")
INIT_BACKBONE = (None, "labels")


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, beta: float = 1.0) -> torch.Tensor:
    """Per-sample regression loss (no reduction): ``l1``, ``smooth_l1`` (``beta``) or ``mse``."""
    if kind == "l1":
        return (pred - target).abs()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    if kind == "mse":
        return (pred - target).square()
    raise ValueError(f"method.loss={kind!r} is not valid; choose one of {list(LOSSES)}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]``; 0 (still in the graph) when nothing is selected."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def quality_mlp(in_dim: int, hidden: int | None) -> nn.Module:
    """``Linear(D, 1)``, or with ``hidden``: ``Linear(D, hidden) -> GELU -> Linear(hidden, 1)`` (eDifFIQA's MLP)."""
    if not hidden:
        return nn.Linear(in_dim, 1)
    return nn.Sequential(nn.Linear(in_dim, int(hidden)), nn.GELU(), nn.Linear(int(hidden), 1))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


class Distill(FaceModule):
    """Args (beyond :class:`FaceModule`'s): see the module docstring and ``conf/method/distill.yaml``.

    quality_labels: a CSV path or ``{source, ...}`` (:func:`fiqa.methods.labels.load_or_compute`).
    label_cache: directory of the computed labels (``${paths.output_dir}/quality_labels``).
    normalize: ``minmax`` | ``rank`` | ``none``.  loss: ``l1`` | ``smooth_l1`` | ``mse``.
    head_hidden: hidden width of the quality MLP (null: one linear layer).
    freeze_backbone / backbone_train_last / backbone_lr_scale: how the backbone trains.
    init_backbone: ``labels``: start the backbone from the label source's FR model (a model source only).
    label_batch_size / label_num_workers: the pass that computes model-source labels.
    """

    #: eDifFIQA also needs the FR model's embedding of every training image
    needs_teacher: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        *,
        quality_labels: Any = None,
        label_cache: str | None = None,
        normalize: str = "minmax",
        loss: str = "smooth_l1",
        smooth_l1_beta: float = 1.0,
        head_hidden: int | None = None,
        freeze_backbone: bool = False,
        backbone_train_last: int | None = None,
        backbone_lr_scale: float = 1.0,
        init_backbone: str | None = None,
        label_batch_size: int = 128,
        label_num_workers: int = 0,
        **face_module_args,
    ):
        quality_labels = _plain(quality_labels)  # plain in the checkpoint's hyper-parameters (weights_only loads)
        if face_module_args.get("quality_head") is None:
            face_module_args["quality_head"] = quality_mlp(backbone.embedding_dim, head_hidden)
        super().__init__(backbone, head, **face_module_args)
        if loss not in LOSSES:
            raise ValueError(f"method.loss={loss!r} is not valid; choose one of {list(LOSSES)}")
        if init_backbone not in INIT_BACKBONE:
            raise ValueError(f"method.init_backbone={init_backbone!r} is not valid; choose null or 'labels'")
        self.quality_labels, self.label_cache, self.normalize = quality_labels, label_cache, normalize
        self.loss_kind, self.beta = loss, float(smooth_l1_beta)
        self.freeze_backbone, self.backbone_lr_scale = bool(freeze_backbone), float(backbone_lr_scale)
        self.init_backbone = init_backbone
        self.label_batch_size, self.label_num_workers = int(label_batch_size), int(label_num_workers)
        params = list(self.backbone.parameters())
        if self.freeze_backbone:
            for p in params:
                p.requires_grad_(False)
        elif backbone_train_last is not None:
            n = int(backbone_train_last)
            if n < 1:
                raise ValueError(f"method.backbone_train_last={backbone_train_last} must be >= 1 (or null: all)")
            for p in params[: max(len(params) - n, 0)]:
                p.requires_grad_(False)
        self.label_set = None  # fiqa.methods.labels.LabelSet, loaded in setup("fit")

    # ---- labels: loaded or computed once, before the first step --------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or self.label_set is not None:
            return
        from fiqa.methods import labels as L

        dm = self.trainer.datamodule if self.trainer is not None else None
        reader = getattr(dm, "train_reader", None)
        if reader is None:
            raise ValueError(f"{type(self).__name__} trains on data.train: this run has no training reader")
        spec = L.spec_of(self.quality_labels)
        if self.init_backbone == "labels" and spec["source"] == "csv":
            raise ValueError("method.init_backbone=labels needs a model label source ({source:...,ckpt_path:...})")
        device = self.trainer.strategy.root_device
        self.label_set = L.load_or_compute(
            self.quality_labels,
            reader,
            self.label_cache,
            self.normalize,
            device=device,
            teacher=self.needs_teacher,
            rank=self.trainer.global_rank,
            batch_size=self.label_batch_size,
            num_workers=self.label_num_workers,
        )
        labels = torch.as_tensor(self.label_set["labels"], dtype=torch.float32)
        self.register_buffer("train_labels", labels, persistent=False)
        lab = self.label_set["labels"]
        ok = np.isfinite(lab)
        log.info(
            f"quality labels of {int(ok.sum())} / {len(ok)} training samples (normalize={self.normalize}): "
            f"mean {float(np.nanmean(lab)):.4g}, std {float(np.nanstd(lab)):.4g}"
        )
        if self.init_backbone == "labels":
            self._init_from_label_model(spec)
        self.prepare_targets(reader)

    def _init_from_label_model(self, spec: Mapping) -> None:
        """The backbone from the label source's FR model (strict). On a resume the checkpoint's weights,
        restored after ``setup``, replace these."""
        from fiqa.methods.loading import load_model

        src = load_model(
            str(spec["ckpt_path"]),
            {},
            bool(spec.get("trust_checkpoint", False)),
            str(spec.get("ckpt_format", "auto")),
            require_quality=False,
            key="method.quality_labels.ckpt_path",
        )
        try:
            self.backbone.load_state_dict(src.backbone.state_dict(), strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"method.init_backbone=labels: the backbone of {spec['ckpt_path']} does not fit this backbone "
                f"({type(self.backbone).__name__}); choose the same backbone=...: {err}"
            ) from None
        log.info(f"backbone initialised from the label source {spec['ckpt_path']}")

    def prepare_targets(self, reader) -> None:
        """Anything a subclass derives from the labels before training (eDifFIQA: the class centres)."""

    # ---- the method API --------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_backbone:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics too
        return self

    def quality(self, out: BackboneOutput) -> torch.Tensor:
        with full_precision(out.embedding):
            return self.quality_head(out.embedding.float()).squeeze(1)

    def batch_labels(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the normalised label of each sample of the batch, whether it has one)."""
        if getattr(self, "train_labels", None) is None:
            raise RuntimeError(f"{type(self).__name__}: the quality labels are loaded in setup('fit') (trainer.fit)")
        y = self.train_labels[batch["index"].to(self.train_labels.device).long()]
        return y, torch.isfinite(y)

    def losses(self, out: BackboneOutput, batch: Mapping[str, torch.Tensor]) -> dict:
        y, ok = self.batch_labels(batch)
        q = self.quality(out)
        per = regression_loss(q, torch.where(ok, y, q.detach()), self.loss_kind, self.beta)
        bs = q.shape[0]
        self.log_dict(
            {"train/quality": q.detach().mean(), "train/label": masked_mean(y.nan_to_num(), ok)}, batch_size=bs
        )
        return {"quality": masked_mean(per, ok)}

    # ---- optimisation: the head at optim.optimizer.lr, the backbone at backbone_lr_scale x it --------
    def optimized_modules(self) -> dict:
        mods = {"quality_head": self.quality_head}
        if any(p.requires_grad for p in self.backbone.parameters()):
            mods["backbone"] = self.backbone
        return mods

    def configure_optimizers(self) -> Any:
        opt_factory = self.optim.get("optimizer")
        if opt_factory is None:
            raise ValueError("optim.optimizer is not set: method=distill sets Adam; choose an optim config")
        kw = getattr(opt_factory, "keywords", {}) or {}
        lr = kw.get("lr")
        dm = self.trainer.datamodule if self.trainer is not None else None
        global_batch = getattr(dm, "batch_size", None)
        if lr is not None and global_batch:
            lr = scaled_lr(lr, global_batch, self.optim.get("lr_ref_batch"))
        wd, no_decay = kw.get("weight_decay", 0.0), bool(self.optim.get("no_decay_bn", True))
        groups = []
        for name, module in self.optimized_modules().items():
            scale = self.backbone_lr_scale if name == "backbone" else 1.0
            for g in param_groups({name: module}, wd, no_decay):
                if g["params"]:
                    groups.append({**g, **({"lr": lr * scale} if lr is not None else {})})
        optimizer = opt_factory(groups, **({"lr": lr} if lr is not None else {}))
        log.info(
            f"optimizer: quality head lr {lr}, backbone "
            + (
                f"lr {lr * self.backbone_lr_scale if lr is not None else None}"
                if "backbone" in self.optimized_modules()
                else "frozen"
            )
        )
        sched_factory = self.optim.get("scheduler")
        if sched_factory is None:
            return optimizer
        skw = {}
        if "total_steps" in inspect.signature(sched_factory).parameters:
            skw["total_steps"] = int(self.trainer.estimated_stepping_batches)
        interval = self.optim.get("interval", "epoch")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": sched_factory(optimizer, **skw), "interval": interval},
        }


class SDDFIQA(Distill):
    """SDD-FIQA's regression (``method=sddfiqa``): :class:`Distill` on the SDD pseudo-labels of an FR model
    (``quality_labels: {source: sdd, ckpt_path: ...}``, :func:`fiqa.quality.sdd.pseudo_labels`) with the
    original's settings (``conf/method/sddfiqa.yaml``); its own class so checkpoints and logs name it."""
