"""task=train: fit, then evaluate the best checkpoint on every val set."""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from fiqa.tasks.build import build
from fiqa.tasks.common import finish_loggers, publish, validate
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


def train(cfg: DictConfig) -> float:
    if cfg.get("method") is None:
        raise ValueError(
            "task=train needs a trainable method (method=crfiqa|arcface|magface|...); this one is training-free: "
            "run it on a trained FR model with ckpt_path=<model> (task=eval)"
        )
    L.seed_everything(cfg.seed, workers=True)
    built = None
    try:
        built = build(cfg)
        if cfg.get("init_ckpt"):
            init_backbone(built.method, cfg)
        built.trainer.fit(built.method, datamodule=built.datamodule, ckpt_path=cfg.get("ckpt_path"))
        if built.trainer.fast_dev_run:
            log.info("fast_dev_run: no checkpoint, no final evaluation")
            return float("nan")
        ckpt = built.trainer.checkpoint_callback.best_model_path if built.trainer.checkpoint_callback else ""
        ckpt = ckpt or None
        if not built.datamodule.val_sets:
            metrics = {}
        elif holds_final_weights(built.trainer, ckpt):
            log.info(
                f"final evaluation: the best checkpoint {ckpt} holds the final weights, which the last "
                f"validation evaluated; its metrics are reused"
            )
            metrics = {k: float(v) for k, v in built.trainer.callback_metrics.items() if k.startswith("val/")}
        else:
            log.info(f"final evaluation of {ckpt or 'the last weights'}")
            metrics = validate(built, ckpt)
        publish(cfg, built.trainer, metrics, title=f"{cfg.run_name}: validation of the best checkpoint")
        return metrics.get("val/acc_mean", float("nan"))
    finally:
        finish_loggers(built.trainer if built else None)


def holds_final_weights(trainer: L.Trainer, ckpt: str | None) -> bool:
    """True when checkpoint ``ckpt`` was saved at the trainer's final step (the weights have not
    changed since) and a validation logged metrics then: re-validating it would repeat that one."""
    if not ckpt or trainer.global_step == 0:
        return False
    step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    return step == trainer.global_step and any(k.startswith("val/") for k in trainer.callback_metrics)


def init_backbone(method, cfg: DictConfig) -> None:
    """``init_ckpt=PATH``: start training from another model's backbone weights (ours or a released
    checkpoint), loaded strictly; the head, quality head and optimiser start fresh (unlike
    ``ckpt_path``, which resumes a run). MagFace fine-tuning from ArcFace starts this way."""
    from fiqa.tasks.build import load_model

    source = load_model(
        str(cfg.init_ckpt), {}, bool(cfg.trust_checkpoint), str(cfg.ckpt_format), None, require_quality=False
    )
    try:
        method.backbone.load_state_dict(source.backbone.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"init_ckpt={cfg.init_ckpt!r}: its backbone does not fit backbone={cfg.backbone._target_}: {err}"
        ) from None
    log.info(f"backbone initialised from {cfg.init_ckpt} ({type(source.backbone).__name__})")
