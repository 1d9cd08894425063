"""task=train: fit, then evaluate the best checkpoint on every val set."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
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
    resume = resume_path(cfg)
    built = None
    try:
        built = build(cfg)
        if cfg.get("init_ckpt"):
            init_backbone(built.method, cfg)
        built.trainer.fit(built.method, datamodule=built.datamodule, ckpt_path=resume)
        if built.trainer.fast_dev_run:
            log.info("fast_dev_run: no checkpoint, no final evaluation")
            return float("nan")
        if any(getattr(c, "preempted", False) for c in built.trainer.callbacks):
            log.warning("preempted: no final evaluation; the requeued job resumes with ckpt_path=last")
            return float("nan")
        best = next((c for c in built.trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        ckpt = (best.best_model_path if best is not None else "") or None
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


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``task=train`` resumes, checked before anything is built.

    ``ckpt_path``: null (a new run); a ``.ckpt`` file; a run dir (its ``checkpoints/last.ckpt``); or ``last``:
    the ``last.ckpt`` of this run's own dir, which ``FIQA_RUN_ID`` names (a requeued or restarted job gets its
    dir back). With ``last`` and no checkpoint there yet (the first start of a job script that always says
    ``ckpt_path=last``), the run starts from scratch."""
    from fiqa.utils.checkpoint_io import check_training_checkpoint

    given = cfg.get("ckpt_path")
    if given is None:
        return None
    given = str(given)
    trust = bool(cfg.get("trust_checkpoint", False))
    if given == "last":
        if not os.environ.get("FIQA_RUN_ID"):
            runs = sorted(
                Path(cfg.paths.log_dir, "train", "runs").glob("*/checkpoints/last.ckpt"), key=os.path.getmtime
            )
            latest = "; the newest here: " + ", ".join(str(p.parents[1]) for p in runs[-3:][::-1]) if runs else ""
            raise ValueError(
                "ckpt_path=last resumes the run that FIQA_RUN_ID names (its dir logs/train/runs/$FIQA_RUN_ID), "
                "but FIQA_RUN_ID is not set: set it to the interrupted run's dir name (FIQA_RUN_ID=<name> python "
                f"main.py ... ckpt_path=last), or give the run dir or its .ckpt: ckpt_path=<path>{latest}"
            )
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            log.info(f"ckpt_path=last: no checkpoint in {path.parent} yet, so this run starts from scratch")
            return None
    else:
        path = Path(given)
        if path.is_dir():
            found = [p for p in (path / "checkpoints" / "last.ckpt", path / "last.ckpt") if p.is_file()]
            if not found:
                raise FileNotFoundError(
                    f"ckpt_path={given!r} is a directory without checkpoints/last.ckpt or last.ckpt: give a run dir "
                    f"(logs/train/runs/<time>) or a .ckpt file"
                )
            path = found[0]
    info = check_training_checkpoint(path, trust)
    log.info(f"resuming from {path} (epoch {info['epoch']}, step {info['global_step']})")
    return str(path)


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
    from fiqa.methods.loading import load_model

    source = load_model(
        str(cfg.init_ckpt),
        {},
        bool(cfg.trust_checkpoint),
        str(cfg.ckpt_format),
        None,
        require_quality=False,
        key="init_ckpt",
    )
    try:
        method.backbone.load_state_dict(source.backbone.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"init_ckpt={cfg.init_ckpt!r}: its backbone does not fit backbone={cfg.backbone._target_}: {err}"
        ) from None
    log.info(f"backbone initialised from {cfg.init_ckpt} ({type(source.backbone).__name__})")
