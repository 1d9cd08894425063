"""W&B dashboards (``logger=wandb``): runs grouped by sweep, method and backbone, summaries of the
configured val sets' metrics.

- :func:`logger_kwargs` (used by ``fiqa.tasks.build.build_loggers``): what the config leaves open on the
  ``WandbLogger``: ``offline`` (no ``WANDB_API_KEY``: offline, ``wandb sync`` later), ``group`` = the
  experiment (``experiment=<recipe>``: every run of one paper recipe, single or in a sweep, in one group),
  else the sweep directory's name in a multirun, the run ``name`` ``<run_name>-<job number>`` in a multirun
  (``run_name`` = ``<method>-<backbone>``), ``job_type`` = the task and the ``tags`` of the config plus
  ``method:<m>``, ``backbone:<b>``, ``data:<d>``, ``experiment:<e>``, ``task:<t>``.
- :class:`WandbSetup` (callback, ``callbacks=default``): on rank 0, once per run, writes the run's
  identity (``run.method``, ``run.backbone``, ``run.data``, ``run.experiment``, ``run.task``, ``run.sweep``,
  ``run.job``) and
  the resolved config into the W&B config (group or filter by them), and declares the summaries
  (:func:`define_summaries`) of the metrics that the method's val sets and their protocols log.

Summaries are derived from the configured val sets, never a fixed list of metric names: for each set
and each of its protocols, :data:`PROTOCOL_SUMMARIES` (keyed by the protocol's function) gives glob
patterns of the metrics that protocol logs under ``val/<set>/`` and their goal (``max`` for
accuracy/TAR/rank-k, ``min`` for error rates and ERC areas); ``val/acc_mean`` is ``max``. A protocol
not listed there gets W&B's default summary (the last value). The ERC and quality-histogram images come
from the validation callback (``fiqa.callbacks.quality_plots``).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from fiqa.utils.logging import get_logger

log = get_logger(__name__)

#: W&B summary of the metrics a protocol logs: ``{protocol: {glob under val/<set>/: "min" | "max"}}``.
#: ``{prefix}`` is the ERC protocols' metric prefix (``prefix``, else by ``mode``: ``edc`` for fixed).
PROTOCOL_SUMMARIES: dict[str, dict[str, str]] = {
    "fiqa.eval.protocols.verification": {"acc": "max", "val@*": "max"},
    "fiqa.eval.protocols.quality_vs_degradation": {"quality_spearman": "min"},  # -1: quality tracks degradation
    "fiqa.eval.protocols.reject_fnmr": {"fnmr@*": "min"},
    "fiqa.eval.erc.erc_pairs": {"{prefix}_*": "min"},
    "fiqa.eval.erc.erc_images": {"{prefix}_*": "min"},
    "fiqa.eval.protocols.ijb": {
        "tar@*": "max",
        "tar_strict@*": "max",
        "roc_auc": "max",
        "rank*": "max",
        "tpir*": "max",
        "erc_*": "min",
    },
    "fiqa.eval.protocols_lq.tinyface": {"rank*": "max", "dir@*": "max"},
    "fiqa.eval.protocols_lq.scface": {"rank*": "max"},
}
#: Run-level metrics (``fiqa.methods.base.FaceModule.on_validation_epoch_end``).
RUN_SUMMARIES = {"val/acc_mean": "max"}
#: The x axis Lightning's WandbLogger gives every metric.
STEP_METRIC = "trainer/global_step"
_ERC_PREFIX = {
    "fiqa.eval.erc.erc_pairs": {"recompute_nearest": "erc", "recompute_index": "erc_index", "fixed": "edc"},
    "fiqa.eval.erc.erc_images": {"recompute_nearest": "erc_image", "recompute_index": "erc_image_index"},
}


def _name(fn) -> tuple[str, dict]:
    """``(module.function, keyword arguments)`` of a protocol (a ``functools.partial`` or a function)."""
    kw = dict(getattr(fn, "keywords", None) or {})
    fn = getattr(fn, "func", fn)
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}", kw


def summary_metrics(val_sets: Mapping[str, Mapping]) -> dict[str, str]:
    """``{metric name or glob: "min" | "max"}`` for the val sets ``{name: {"protocols": {key: protocol}}}``
    (``FaceModule.val_sets``, the view ``fiqa.tasks.build.build_val`` makes of ``cfg.val``)."""
    out = {}
    for set_name, spec in val_sets.items():
        for key, protocol in (spec.get("protocols") or {}).items():
            target, kw = _name(protocol)
            patterns = PROTOCOL_SUMMARIES.get(target)
            if patterns is None:
                log.debug(f"W&B: val.{set_name}.protocols.{key} ({target}) has no summary goals; W&B keeps the last")
                continue
            modes = _ERC_PREFIX.get(target, {})
            prefix = kw.get("prefix") or modes.get(kw.get("mode", "recompute_nearest"), "erc")
            for pattern, goal in patterns.items():
                out[f"val/{set_name}/{pattern.format(prefix=prefix)}"] = goal
    if val_sets:
        out.update(RUN_SUMMARIES)
    return out


def define_summaries(run, val_sets: Mapping[str, Mapping], step_metric: str | None = STEP_METRIC) -> dict[str, str]:
    """``run.define_metric(name, summary=goal, step_metric=...)`` for every entry of
    :func:`summary_metrics` (globs included); returns them."""
    metrics = summary_metrics(val_sets)
    for name, goal in metrics.items():
        run.define_metric(name, step_metric=step_metric, summary=goal)
    return metrics


def goal_of(metric: str, summaries: Mapping[str, str]) -> str | None:
    """The goal of ``metric`` in :func:`summary_metrics`' ``{name or glob: goal}``: its own entry, else
    that of the longest (most specific) glob matching it; ``None`` when none does."""
    if metric in summaries:
        return summaries[metric]
    hits = [p for p in summaries if "*" in p and fnmatch.fnmatchcase(metric, p)]
    return summaries[max(hits, key=len)] if hits else None


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` that declares each metric's summary under its exact name just before
    the metric is first logged (``logger=wandb`` uses it). Lightning declares the glob ``*`` (for the
    step axis), and when two globs match a metric W&B picks either at random (seen here: a ``val/x/erc_*``
    min summary held in 2 of 6 runs), so globs cannot carry the summaries. ``summaries`` is
    ``{name or glob: "min" | "max"}`` (:func:`summary_metrics`, set by :class:`WandbSetup`)."""

    def __init__(self, *args, summaries: Mapping[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.summaries: dict[str, str] = dict(summaries or {})
        self._declared: set[str] = set()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for name in metrics:
            if name not in self._declared:
                goal = goal_of(name, self.summaries)
                if goal is not None:
                    self.experiment.define_metric(name, step_metric=STEP_METRIC, summary=goal)
                self._declared.add(name)
        super().log_metrics(metrics, step)


# ---- identity: run name, group, tags ------------------------------------------------------------
def run_identity(cfg: Mapping | None = None) -> dict[str, Any]:
    """``{method, backbone, data, task, sweep, job}`` of this run: the chosen config options (Hydra's
    ``runtime.choices``), the sweep directory's name and the job number (multirun only, else None)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    out: dict[str, Any] = {"method": None, "backbone": None, "data": None, "experiment": None, "task": None,
                           "sweep": None, "job": None}  # fmt: skip
    if cfg is not None:
        out["task"] = cfg.get("task")
    if not HydraConfig.initialized():
        return out
    hc = HydraConfig.get()
    choices = hc.runtime.choices
    for key in ("method", "backbone", "data", "experiment"):
        v = choices.get(key)
        out[key] = None if v in (None, "null") else v
    if hc.mode == RunMode.MULTIRUN:
        out["sweep"] = Path(hc.sweep.dir).name
        out["job"] = int(hc.job.num)
    return out


def logger_kwargs(cfg, node: Mapping) -> dict[str, Any]:
    """Keyword arguments for a ``WandbLogger`` config ``node`` that leaves them open (null / absent):
    ``offline``, ``group``, ``name`` (the job number appended in a multirun), ``job_type`` and ``tags``."""
    ident = run_identity(cfg)
    kw: dict[str, Any] = {}
    if node.get("offline") is None:  # offline without a key: no network needed, `wandb sync` later
        kw["offline"] = not os.environ.get("WANDB_API_KEY")
    if node.get("group") is None and (ident["experiment"] or ident["sweep"]) is not None:
        kw["group"] = ident["experiment"] or ident["sweep"]  # the runs of one paper recipe together, else the sweep
    if ident["job"] is not None:
        kw["name"] = f"{node.get('name') or cfg.get('run_name')}-{ident['job']}"
    if node.get("job_type") is None and ident["task"]:
        kw["job_type"] = str(ident["task"])
    tags = [str(t) for t in (node.get("tags") or [])]
    tags += [f"{k}:{ident[k]}" for k in ("method", "backbone", "data", "experiment", "task") if ident[k] is not None]
    kw["tags"] = list(dict.fromkeys(t[:64] for t in tags))  # W&B: at most 64 characters a tag
    return kw


class WandbSetup(L.Callback):
    """Rank 0, at the first ``setup`` (fit or validate): for every ``WandbLogger`` of the trainer, the
    run identity and the resolved config into the W&B config, and :func:`define_summaries` of the
    model's val sets. No-op without a ``WandbLogger``."""

    def __init__(self, task: str | None = None, config_key: str = "run"):
        self.config_key = config_key
        self.identity = run_identity({"task": task})  # here, in the launching process, where Hydra's config is known
        self.defined: dict[str, str] = {}
        self._done: set = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        from fiqa.callbacks.store_config import StoreConfig

        stored = next((cb.config for cb in trainer.callbacks if isinstance(cb, StoreConfig)), None)
        for logger in trainer.loggers:
            if not isinstance(logger, LightningWandbLogger) or id(logger) in self._done:
                continue
            run = logger.experiment
            update = {self.config_key: self.identity}
            if stored is not None:
                update["config"] = stored
            run.config.update(update, allow_val_change=True)
            val_sets = getattr(pl_module, "val_sets", {}) or {}
            if isinstance(logger, WandbLogger):  # ours: exact names at first log (see the class)
                logger.summaries = self.defined = summary_metrics(val_sets)
            else:  # Lightning's own: globs (W&B may prefer Lightning's '*' glob for some metrics)
                self.defined = define_summaries(run, val_sets)
            self._done.add(id(logger))
