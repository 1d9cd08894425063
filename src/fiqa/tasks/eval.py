"""task=eval ckpt_path=PATH val=[...]: rebuild the model from the checkpoint's stored config and
evaluate it on the requested val sets."""

from __future__ import annotations

from omegaconf import DictConfig

from fiqa.tasks.build import build_from_checkpoint
from fiqa.tasks.common import finish_loggers, publish, validate


def evaluate(cfg: DictConfig) -> float:
    if not cfg.get("ckpt_path"):
        hint = ""
        if cfg.get("method") is None:
            hint = " (method=serfiq is training-free: it evaluates the FR model of ckpt_path)"
        raise ValueError(
            "task=eval needs ckpt_path=<a .ckpt written by task=train, or an original's released checkpoint>" + hint
        )
    if not cfg.get("val"):
        raise ValueError("task=eval needs at least one val set, e.g. val=[synth] (choices: the files in conf/val/)")
    built = None
    try:
        built, _ = build_from_checkpoint(cfg)
        metrics = validate(built)
        publish(cfg, built.trainer, metrics, title=f"evaluation of {cfg.ckpt_path}")
        return metrics.get("val/acc_mean", float("nan"))
    finally:
        finish_loggers(built.trainer if built else None)
