"""FaceModule: the LightningModule every method subclasses.

A method is backbone + head (+ quality); ``forward(images) -> FaceOutput(embedding, quality)``.
Subclasses override :meth:`losses` and :meth:`quality` only. The training/validation steps,
the gather and de-duplication of validation outputs across ranks, the protocol dispatch and
the optimiser set-up live here, once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from fiqa.eval.sets import evaluate_set, pair_similarity_of
from fiqa.heads import partial_fc, partial_fc_module
from fiqa.types import BackboneOutput, FaceOutput
from fiqa.utils.launch import release_spawned_process_group_at_exit
from fiqa.utils.logging import get_logger
from fiqa.utils.precision import full_precision

log = get_logger(__name__)


def scaled_lr(lr: float, global_batch: int, lr_ref_batch: int | None) -> float:
    """The learning rate for ``global_batch`` when ``lr`` was set for ``lr_ref_batch`` (linear
    scaling, as arcface_torch and CR-FIQA: lr/512 * batch * world). ``None`` disables it."""
    return lr if not lr_ref_batch else lr * global_batch / lr_ref_batch


def param_groups(modules: Mapping[str, nn.Module], weight_decay: float, no_decay_bn: bool) -> list:
    """Parameter groups; with ``no_decay_bn`` the 1-D parameters (norm weights/biases, biases,
    PReLU slopes) get no weight decay."""
    decay, no_decay = [], []
    for module in modules.values():
        for p in module.parameters():
            if p.requires_grad:
                (no_decay if no_decay_bn and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


ISO_SCALE_KEY = "fiqa_iso_scale"  # checkpoint key of FaceModule.iso_scale


class FaceModule(L.LightningModule):
    """Args:
    backbone: images -> BackboneOutput.
    head: a margin head (embedding, labels) -> HeadOutput.
    optim: ``{"optimizer": partial, "scheduler": partial|None, "interval": "epoch"|"step",
        "lr_ref_batch": int|None, "no_decay_bn": bool}`` (the ``optim`` config group).
    val_sets: ``{name: {"flip": bool, "protocols": {key: partial}}}`` (the ``val`` group);
        validation dataloader ``i`` is ``list(val_sets)[i]``.
    quality_head: an optional module on the embedding (CR-FIQA ...).
    channels_last: run the backbone in channels-last memory format (faster on CPU and GPU).

    A subclass takes its own arguments by keyword and passes these through untouched:
    ``def __init__(self, backbone, head=None, *, my_arg=1.0, **face_module_args)`` ->
    ``super().__init__(backbone, head, **face_module_args)`` (CONTRIBUTING.md, "Adding a method").
    """

    #: set by ``trainer.compile`` (:func:`fiqa.tasks.build.compile_backbone`): evaluation then runs eager
    compiled_backbone: bool = False
    #: what the network is fed, ``{"color": "rgb"|"bgr", "mean", "std"}`` on the 0..255 scale: set by
    #: :func:`fiqa.methods.loading.build_method` (from ``data.*``) and by :class:`fiqa.methods.released.ReleasedModel`;
    #: every scoring path reads it (:func:`fiqa.quality.scoring.input_convention_of`), none guesses it
    input_convention: dict | None = None

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        optim: Mapping | None = None,
        val_sets: Mapping[str, Mapping] | None = None,
        quality_head: nn.Module | None = None,
        channels_last: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "head", "optim", "val_sets", "quality_head", "model"])
        self.backbone, self.head, self.quality_head = backbone, head, quality_head
        self.optim = dict(optim or {})
        self.val_sets = dict(val_sets or {})
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # name -> {"embeddings", "qualities", "indices", "curves"} of the last validation (numpy)
        self.val_results: dict = {}
        self._val_buffers: dict = {}
        # the 0-100 mapping of this model's quality (fiqa.quality.iso_scale.IsoScale.to_dict), fitted on
        # the images of the last validation and stored in the checkpoint (task=quality score.scale=iso)
        self.iso_scale: dict | None = None

    # ---- the method API -----------------------------------------------------------------
    def quality(self, out: BackboneOutput) -> torch.Tensor:
        """Scalar quality per image, higher = better. Default: the embedding norm."""
        return out.embedding.float().norm(dim=1)

    def pair_similarity(self, name: str, embeddings: np.ndarray, qualities: np.ndarray) -> np.ndarray | None:
        """The comparison score of the pairs (rows 2p, 2p+1) of val set ``name``, or None for the cosine
        of the embeddings (the default). ``val.<set>.score=qmagface``: QMagFace's quality-aware score with
        ``val.<set>.qmagface.{preset | alpha, beta}``."""
        return pair_similarity_of(name, self.val_sets.get(name, {}), embeddings, qualities)

    def losses(self, out: BackboneOutput, batch: Mapping[str, torch.Tensor]) -> dict:
        """Named loss terms (summed for the step). Default: CE on the margin logits (full or Partial FC)."""
        return {"id": partial_fc.cross_entropy(self.head(out.embedding, batch["label"]), batch["label"])}

    def embed(self, images: torch.Tensor) -> BackboneOutput:
        """The backbone on ``images`` (channels_last when enabled: ~20 % faster convolutions). Outside
        training a compiled backbone (``trainer.compile``) runs eager: evaluation batches of other sizes
        would otherwise recompile it and make its graph dynamic (:func:`fiqa.tasks.build.compile_backbone`)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.training or not self.compiled_backbone or torch.compiler.is_compiling():
            return self.backbone(images)
        with torch.compiler.set_stance("force_eager"):
            return self.backbone(images)

    def forward(self, images: torch.Tensor) -> FaceOutput:
        out = self.embed(images)
        return FaceOutput(embedding=out.embedding, quality=self.quality(out))

    # ---- Partial FC (head.fc=partial): sharding, clipping, the optimizer state of the shard ------
    def setup(self, stage: str) -> None:
        """Shards a Partial FC head over the ranks (the process group is up now, DDP not yet wrapped)."""
        partial_fc_module.setup_module(self)
        release_spawned_process_group_at_exit()  # trainer=ddp_sim: see there

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, except by norm with a sharded head: the norm over all ranks' shards. Clipping
        by norm also checks the norm: a non-finite gradient (with a finite loss) is handled as a non-finite
        loss is (:meth:`_nonfinite`), before the optimizer could write it into the weights. (Not under
        ``precision=16-mixed``, whose gradient scaler skips such steps itself.)"""
        total = partial_fc_module.clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
        by_norm = gradient_clip_val and gradient_clip_algorithm in (None, "norm")
        if total is None and by_norm:
            params = list(self.trainer.precision_plugin.main_params(optimizer))
            total = torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
        elif total is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            if self.on_nonfinite == "skip":  # a skip must catch a non-finite gradient without clipping too
                grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                total = torch.nn.utils.get_total_norm(grads) if grads else None
        if total is None or getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        norm = float(total)
        if not math.isfinite(norm) and self._nonfinite("gradient norm", norm, self._batch_indices):
            for group in optimizer.param_groups:  # skip: no gradient, so the optimizer leaves every weight
                for p in group["params"]:
                    p.grad = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        partial_fc_module.gather_optimizer_state(self, checkpoint)  # the shard's momentum as the full (C, D)
        if self.iso_scale is not None:
            checkpoint[ISO_SCALE_KEY] = dict(self.iso_scale)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.iso_scale = checkpoint.get(ISO_SCALE_KEY)

    def on_train_start(self) -> None:
        partial_fc_module.shard_optimizer_state(self)  # after a resume: this rank's rows of the (C, D) state

    # ---- training -----------------------------------------------------------------------
    #: ``trainer.on_nonfinite``: ``error`` (stop, the default) or ``skip`` (no optimizer step for that batch,
    #: counted as ``train/nonfinite_skipped``); set by :func:`fiqa.tasks.build.build_trainer`
    on_nonfinite: str = "error"

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        # skip mode: the forward pass of a batch that is then skipped must not leave its non-finite
        # activations in the BatchNorm running statistics, so the buffers are kept to be put back
        kept = [b.detach().clone() for b in self.buffers()] if self.on_nonfinite == "skip" else None
        out = self.embed(batch["image"])
        with full_precision(batch["image"]):  # heads, quality heads and losses in float32 (utils.precision)
            terms = self.losses(out, batch)
        loss = sum(terms.values())
        bs = batch["image"].shape[0]
        self._batch_indices = batch.get("index") if isinstance(batch, Mapping) else None
        value = float(loss.detach())
        bad = not math.isfinite(value)
        if self._trainer is not None and self._trainer.world_size > 1:  # every rank stops or skips together
            flag = torch.tensor([1.0 if bad else 0.0], device=loss.device)
            bad = bool(self.trainer.strategy.reduce(flag, reduce_op="sum").item() > 0)
        if bad:
            what = {k: float(v) for k, v in terms.items()} if not math.isfinite(value) else "finite here, not on a peer"
            if self._nonfinite(f"loss {value} ({what})", value, self._batch_indices):
                with torch.no_grad():
                    for b, k in zip(self.buffers(), kept):
                        b.copy_(k)
                return None
        self._last_finite = (int(self.global_step), value)
        self.log_dict({f"train/loss/{k}": v.detach() for k, v in terms.items()}, batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        return loss

    _last_finite: tuple[int, float] | None = None
    _batch_indices: torch.Tensor | None = None
    nonfinite_skipped: int = 0

    def _nonfinite(self, what: str, value: float, indices) -> bool:
        """A non-finite loss or gradient at this step: raise (``error``) or count it and return True (``skip``).
        The message names the step, the batch's sample indices and the last finite loss; no checkpoint is
        written from the weights, which the optimizer has not touched."""
        idx = [] if indices is None else [int(i) for i in indices.detach().flatten().tolist()]
        shown = ", ".join(map(str, idx[:16])) + (f", ... ({len(idx)} in all)" if len(idx) > 16 else "")
        last = (
            f"the last finite loss was {self._last_finite[1]:.6g} at step {self._last_finite[0]}"
            if self._last_finite
            else "no finite loss before it in this process"
        )
        where = f"step {self.global_step} (epoch {self.current_epoch})"
        if self.on_nonfinite == "skip":
            self.nonfinite_skipped += 1
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), rank_zero_only=True)
            log.warning(
                f"trainer.on_nonfinite=skip: non-finite {what} at {where}, batch skipped "
                f"({self.nonfinite_skipped} so far); samples [{shown}]; {last}"
            )
            return True
        raise FloatingPointError(
            f"non-finite training {what} at {where}; the batch's sample indices (data set positions): [{shown}]; "
            f"{last}. Training stops before the optimizer step, so the weights and the last checkpoint are "
            f"intact (resume with ckpt_path=last after lowering optim.optimizer.lr or raising "
            f"trainer.gradient_clip_val); trainer.on_nonfinite=skip skips such batches and counts them"
        )

    def optimized_modules(self) -> dict:
        return {
            name: m
            for name, m in (("backbone", self.backbone), ("head", self.head), ("quality_head", self.quality_head))
            if m is not None
        }

    def configure_optimizers(self) -> Any:
        opt_factory: Callable = self.optim.get("optimizer")
        if opt_factory is None:
            raise ValueError("optim.optimizer is not set: choose an optim config, e.g. optim=sgd_multistep")
        base_lr = opt_factory.keywords.get("lr") if hasattr(opt_factory, "keywords") else None
        dm = self.trainer.datamodule if self.trainer is not None else None
        global_batch = getattr(dm, "batch_size", None)
        kwargs = {}
        if base_lr is not None and global_batch:
            kwargs["lr"] = scaled_lr(base_lr, global_batch, self.optim.get("lr_ref_batch"))
            log.info(
                f"learning rate {kwargs['lr']:.5g} = optim.optimizer.lr {base_lr:g} x global batch "
                f"{global_batch} / optim.lr_ref_batch {self.optim.get('lr_ref_batch')}"
            )
        wd = opt_factory.keywords.get("weight_decay", 0.0) if hasattr(opt_factory, "keywords") else 0.0
        groups = param_groups(self.optimized_modules(), wd, bool(self.optim.get("no_decay_bn", True)))
        optimizer = opt_factory(groups, **kwargs)
        sched_factory = self.optim.get("scheduler")
        if sched_factory is None:
            return optimizer
        skw = {}
        if "total_steps" in inspect.signature(sched_factory).parameters:
            skw["total_steps"] = int(self.trainer.estimated_stepping_batches)
        interval = self.optim.get("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ValueError(f"optim.interval must be 'epoch' or 'step', got {interval!r}")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": sched_factory(optimizer, **skw), "interval": interval},
        }

    # ---- validation: embed, gather across ranks, de-duplicate, run the protocols ---------
    def on_validation_epoch_start(self) -> None:
        self._val_buffers = {}

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self._val_name(dataloader_idx)
        images = batch["image"]
        out = self(images)
        emb = out.embedding.float()
        if self.val_sets.get(name, {}).get("flip", True):
            # insightface flip fusion: the sum of the RAW embeddings of the image and its mirror
            emb = emb + self(images.flip(3)).embedding.float()
        buf = self._val_buffers.setdefault(name, {"indices": [], "embeddings": [], "qualities": []})
        buf["indices"].append(batch["index"])
        buf["embeddings"].append(emb)
        buf["qualities"].append(out.quality.float().view(-1))

    test_step = validation_step

    def _val_name(self, i: int) -> str:
        names = list(self.val_sets)
        return names[i] if i < len(names) else f"val{i}"

    def _gather(self, buf: Mapping[str, list]) -> dict:
        """All ranks' outputs, de-duplicated by sample index and sorted by it (numpy)."""
        local = {k: torch.cat(v) for k, v in buf.items()}
        if self.trainer is not None and self.trainer.world_size > 1:
            local = {k: self.all_gather(v).flatten(0, 1) for k, v in local.items()}
        idx = local["indices"].cpu().numpy()
        uniq, first = np.unique(idx, return_index=True)  # drops the DistributedSampler's padding
        return {
            "indices": uniq,
            **{k: local[k][torch.as_tensor(first)].cpu().numpy() for k in ("embeddings", "qualities")},
        }

    def on_validation_epoch_end(self) -> None:
        if self.trainer is not None and self.trainer.sanity_checking:
            return
        dm = self.trainer.datamodule if self.trainer is not None else None
        accs = []
        for i, name in enumerate(self.val_sets):
            if name not in self._val_buffers:
                continue
            res = self._gather(self._val_buffers[name])
            self.val_results[name] = res
            targets = dm.val_targets(i) if dm is not None else {}
            res["curves"] = {}  # ROC / CMC / ERC of the protocols, plotted by callbacks.quality_plots
            metrics = evaluate_set(
                name,
                res,
                targets,
                self.val_sets[name].get("protocols", {}),
                partial(self.pair_similarity, name),
                curves=res["curves"],
            )
            for k, v in metrics.items():
                self.log(f"val/{name}/{k}", v, add_dataloader_idx=False, rank_zero_only=False, sync_dist=False)
            headline = metrics.get("acc", metrics.get("rank1"))  # pair sets: acc; identification sets: rank1
            if headline is not None and math.isfinite(headline):
                accs.append(headline)
        if accs:
            self.log("val/acc_mean", float(np.mean(accs)), add_dataloader_idx=False, prog_bar=True)
        self._val_buffers = {}
        self._fit_iso_scale()

    def _fit_iso_scale(self) -> None:
        """The 0-100 mapping of the quality on this validation's images (all sets pooled): their 10th and
        90th percentiles map to 10 and 90 (:func:`fiqa.quality.iso_scale.fit_sigmoid`)."""
        from fiqa.quality.iso_scale import IsoScale, fit_sigmoid

        parts = [r["qualities"] for r in self.val_results.values() if "qualities" in r]
        if not parts:
            return
        try:
            fitted = fit_sigmoid(np.concatenate(parts))
        except ValueError:  # fewer than 10 images or a constant quality: nothing to map
            return
        ref = f"validation images of {'+'.join(self.val_results)} at step {self.global_step}"
        self.iso_scale = IsoScale.from_dict({**fitted, "reference": ref}).to_dict()

    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end
