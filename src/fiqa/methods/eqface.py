"""EQFace (Liu & Tan, CVPRW 2021, "FaceQuality"): a quality branch learnt with no target, only through
classification logits scaled by the quality; three steps (shared/reference methods_eqface_qgface_adaface §3).

``method.step``:

1. **Feature.** Backbone + :class:`~fiqa.heads.eqface.EQFaceHead` without quality (ArcFace with the
   insightface fallback) + focal loss. There is no quality branch yet: the validation quality is the
   embedding norm (a placeholder; an untrained branch would be noise).
2. **Quality.** ``method.step1_ckpt`` (a fiqa checkpoint of step 1) gives the backbone AND the head. The
   backbone is frozen (no gradient, ``eval()`` throughout, so its BatchNorm statistics and dropout never
   change); the quality branch :class:`~fiqa.backbones.eqface_resnet.EQFaceQuality` on the backbone's
   flattened pre-``fc`` map and the head are trained on logits scaled by ``q`` (EQFace: SGD lr 0.01, no
   weight decay; ``experiment=eqface_ms1mv2_r100_step2``). Quality = ``q`` of the image and its mirror, averaged.
3. **Feature with quality weighting (QW).** A NEW backbone and head are trained from scratch on logits
   scaled by the frozen teacher's ``q``: the teacher is the step-2 model (the frozen step-1 backbone + the
   step-2 branch) from ``method.teacher_ckpt``. It is kept as a frozen submodule ``teacher`` (``backbone``,
   ``quality``) with the student's architecture: it is not optimised, stays in ``eval()``, and is saved in
   the checkpoint, so ``task=eval`` on a step-3 checkpoint needs no other file. At test time the embedding
   is the new backbone's and the quality is the teacher's ``q`` (image and mirror averaged): the step-3
   model is the FR model, the teacher is the quality model it was trained with (EQFace's deployment).

``step1_ckpt`` / ``teacher_ckpt`` are read when training starts (``setup("fit")``), never when the model is
rebuilt from its own checkpoint. A step-3 checkpoint is also a valid ``step1_ckpt`` (EQFace's dashed arrow:
step 2 again after step 3). Without a target, the branch can collapse to ``q ≡ 1`` (deepcam-cn/FaceQuality
#14) when the head classifies nearly every training image: the quality mean and std are logged every epoch
(``train/quality_{mean,std}``, ``val/<set>/quality_{mean,std}``) with a warning when the std collapses.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fiqa.backbones.eqface_resnet import EQFaceQuality
from fiqa.heads.eqface import EQFaceHead, focal_loss
from fiqa.methods.base import FaceModule
from fiqa.types import BackboneOutput, FaceOutput
from fiqa.utils.logging import get_logger
from fiqa.utils.precision import full_precision

log = get_logger(__name__)

STEPS = (1, 2, 3)


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _load_parts(path: str | None, key: str, parts: Mapping[str, nn.Module], needed_by: str) -> None:
    """Load ``{prefix: module}`` strictly from the ``state_dict`` of the fiqa checkpoint ``path``."""
    if not path:
        raise ValueError(f"{needed_by} needs {key}=<fiqa checkpoint>, e.g. <run>/checkpoints/last.ckpt; it is not set")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path!r}: no such file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict") if isinstance(ckpt, Mapping) else None
    if state is None:
        raise ValueError(f"{key}={path!r} is not a fiqa training checkpoint (no 'state_dict')")
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if not sub:
            found = sorted({k.split(".", 1)[0] for k in state})
            raise ValueError(f"{key}={path!r} holds no '{prefix}.*' weights ({needed_by}); it holds {found}")
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{key}={path!r}: its '{prefix}' does not fit this model's: {err}") from None
    log.info(f"{needed_by}: {', '.join(parts)} loaded from {path}")


class EQFace(FaceModule):
    """Args (besides :class:`FaceModule`'s):
    step: 1, 2 or 3 (module docstring).
    step1_ckpt: step 2: the fiqa checkpoint of step 1 (its ``backbone`` and ``head`` are loaded).
    teacher_ckpt: step 3: the fiqa checkpoint of step 2 (its ``backbone`` and ``quality_head``).
    gamma: focal-loss exponent.
    quality_hidden: width of the quality branch (EQFace: 512).
    quality_flip: test-time quality = mean of ``q(x)`` and ``q(flip x)`` (EQFace's ``perform_val``).
    head_no_decay: no weight decay on the class centres (EQFace's head group; needs ``optim.no_decay_bn``).
    collapse_std, collapse_mean: warn when an epoch's quality std < ``collapse_std`` and mean > ``collapse_mean``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        *,
        step: int = 1,
        step1_ckpt: str | None = None,
        teacher_ckpt: str | None = None,
        gamma: float = 2.0,
        quality_hidden: int = 512,
        quality_flip: bool = True,
        head_no_decay: bool = True,
        collapse_std: float = 1e-3,
        collapse_mean: float = 0.99,
        **face_module_args,
    ):
        if int(step) not in STEPS:
            raise ValueError(f"method.step must be one of {list(STEPS)}, got {step!r}")
        if head is not None and not isinstance(head, EQFaceHead):
            raise ValueError(f"method=eqface needs head=eqface (EQFaceHead), got {type(head).__name__}")
        step = int(step)
        if step in (2, 3) and getattr(backbone, "feature_dim", None) is None:
            raise ValueError(
                f"EQFace step {step} needs a backbone that returns its flattened pre-fc map (a 'feature_dim' "
                f"attribute, e.g. iresnet*, eqface_resnet*); {type(backbone).__name__} has none"
            )
        quality_head = face_module_args.get("quality_head")
        if step == 2 and quality_head is None:
            quality_head = EQFaceQuality(backbone.feature_dim, quality_hidden)
        teacher = None
        if step == 3:  # the step-2 model: step-1 backbone (the student's architecture) + quality branch
            teacher = nn.ModuleDict(
                {"backbone": copy.deepcopy(backbone), "quality": EQFaceQuality(backbone.feature_dim, quality_hidden)}
            )
        super().__init__(backbone, head, **{**face_module_args, "quality_head": quality_head if step == 2 else None})
        self.step, self.step1_ckpt, self.teacher_ckpt = step, step1_ckpt, teacher_ckpt
        self.gamma, self.quality_flip, self.head_no_decay = float(gamma), bool(quality_flip), bool(head_no_decay)
        self.collapse_std, self.collapse_mean = float(collapse_std), float(collapse_mean)
        if step == 2:
            _freeze(self.backbone)
        self.teacher = _freeze(teacher) if teacher is not None else None
        if self.teacher is not None and self.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self._train_q = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares (this epoch)

    # ---- set-up: the earlier steps' weights, frozen parts kept in eval() -----------------------
    def setup(self, stage: str) -> None:
        """Training starts from the earlier step's weights; resuming (``ckpt_path``) overwrites them
        afterwards with the run's own, so the file of the earlier step must still exist."""
        super().setup(stage)
        if stage != "fit":
            return
        if self.step == 2:
            _load_parts(self.step1_ckpt, "method.step1_ckpt", {"backbone": self.backbone, "head": self.head}, "step 2")
        elif self.step == 3:
            _load_parts(
                self.teacher_ckpt,
                "method.teacher_ckpt",
                {"backbone": self.teacher["backbone"], "quality_head": self.teacher["quality"]},
                "step 3 (teacher)",
            )

    def train(self, mode: bool = True) -> EQFace:
        super().train(mode)
        if self.step == 2:  # frozen backbone: BN statistics and dropout never in training mode
            self.backbone.eval()
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def optimized_modules(self) -> dict:
        mods = super().optimized_modules()
        if self.step == 2:
            mods.pop("backbone", None)
        return mods

    def configure_optimizers(self):
        conf = super().configure_optimizers()
        if self.head_no_decay and self.head is not None:
            _exclude_from_decay(conf["optimizer"] if isinstance(conf, dict) else conf, self.head.parameters())
        return conf

    # ---- embeddings and quality ---------------------------------------------------------------
    def _run(self, net: nn.Module, images: torch.Tensor, feature_map: bool) -> BackboneOutput:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return net(images, return_feature_map=feature_map)

    def embed(self, images: torch.Tensor) -> BackboneOutput:
        if self.step == 2:  # the frozen backbone, with the map its quality branch reads
            with torch.no_grad():
                return self._run(self.backbone, images, feature_map=True)
        return super().embed(images)

    @torch.no_grad()
    def teacher_quality(self, images: torch.Tensor) -> torch.Tensor:
        """Step 3: the frozen teacher's ``q`` (B,) on ``images``."""
        feature_map = self._run(self.teacher["backbone"], images, feature_map=True).feature_map
        with full_precision(feature_map):
            return self.teacher["quality"](feature_map.float())

    def quality(self, out: BackboneOutput) -> torch.Tensor:
        """Step 1: ``||embedding||``; step 2: the branch on the map of ``out``; step 3: see :meth:`forward`."""
        if self.step == 1:
            return out.embedding.float().norm(dim=1)
        if self.step == 2:
            with full_precision(out.feature_map):
                return self.quality_head(out.feature_map.float())
        raise RuntimeError("EQFace step 3: the quality is the teacher's on the images; call forward(images)")

    def forward(self, images: torch.Tensor) -> FaceOutput:
        out = self.embed(images)
        if self.step == 1:
            return FaceOutput(embedding=out.embedding, quality=self.quality(out))
        if self.step == 2:
            q = self.quality(out)
            flip_q = (lambda x: self.quality(self.embed(x))) if self.quality_flip else None
        else:
            q = self.teacher_quality(images)
            flip_q = self.teacher_quality if self.quality_flip else None
        if flip_q is not None:
            q = 0.5 * (q + flip_q(images.flip(3)))
        return FaceOutput(embedding=out.embedding, quality=q)

    # ---- training -------------------------------------------------------------------------------
    def losses(self, out: BackboneOutput, batch: Mapping[str, torch.Tensor]) -> dict:
        labels = batch["label"]
        q = None
        if self.step == 2:
            q = self.quality(out)
        elif self.step == 3:
            q = self.teacher_quality(batch["image"])
        if q is not None:  # float64 on the device: no host sync per step, no cancellation in the std
            d = q.detach().double()
            self._train_q = self._train_q.to(d.device) + torch.stack([d.new_tensor(d.numel()), d.sum(), (d * d).sum()])
        logits = self.head(out.embedding, labels, quality=q).logits
        return {"focal": focal_loss(logits, labels, self.gamma)}

    def on_train_epoch_start(self) -> None:
        self._train_q = torch.zeros(3, dtype=torch.float64)

    def on_train_epoch_end(self) -> None:
        if self.step == 1:
            return
        stats = self._train_q.to(self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            stats = self.all_gather(stats).reshape(-1, 3).sum(0)
        n, s, ss = (float(v) for v in stats)
        if n > 0:
            self._log_quality_stats("train", n, s / n, max(ss / n - (s / n) ** 2, 0.0) ** 0.5)

    def on_validation_epoch_end(self) -> None:
        sanity = self.trainer is not None and self.trainer.sanity_checking
        names = [n for n in self.val_sets if n in self._val_buffers]
        super().on_validation_epoch_end()
        if sanity:
            return
        for name in names:
            q = self.val_results[name]["qualities"].astype("float64")
            if len(q):
                self._log_quality_stats(f"val/{name}", len(q), float(q.mean()), float(q.std()))

    on_test_epoch_end = on_validation_epoch_end

    def _log_quality_stats(self, prefix: str, n: float, mean: float, std: float) -> None:
        self.log_dict(
            {f"{prefix}/quality_mean": mean, f"{prefix}/quality_std": std},
            add_dataloader_idx=False,
            rank_zero_only=False,
            sync_dist=False,
        )
        if self.step != 1 and std < self.collapse_std and mean > self.collapse_mean:
            log.warning(
                f"EQFace step {self.step}: {prefix} quality collapsed to q ~ {mean:.4f} (std {std:.2e} over {int(n)} "
                f"images): the branch no longer ranks images (deepcam-cn/FaceQuality #14). It learns only from "
                f"misclassified training images: use harder training data or augmentation (augment=eqface), "
                f"fewer step-1 epochs, or a lower lr for step 2"
            )


def _exclude_from_decay(optimizer: torch.optim.Optimizer, params) -> None:
    """Move ``params`` from groups with weight decay into the (existing) group without it."""
    ids = {id(p) for p in params}
    zero = next((g for g in optimizer.param_groups if g.get("weight_decay", 0.0) == 0.0), None)
    decayed = [g for g in optimizer.param_groups if g.get("weight_decay", 0.0) != 0.0]
    if not decayed:
        return
    if zero is None:
        log.warning("method.head_no_decay needs optim.no_decay_bn=true (a group without decay): the head keeps it")
        return
    for g in decayed:
        moved = [p for p in g["params"] if id(p) in ids]
        g["params"] = [p for p in g["params"] if id(p) not in ids]
        zero["params"].extend(moved)
