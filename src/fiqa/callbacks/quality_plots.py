"""Rank-0 plots at the end of each validation (``trainer.validate`` of ``task=eval`` included), as PNGs
in the run dir, logged as images to every logger that has ``log_image`` (W&B):

- ``quality_vs_degradation_<set>.png`` (sets with a ground-truth degradation, e.g. SynthFace) and
  ``quality_hist_<set>.png``;
- the curves the set's protocols returned (``FaceModule.val_results[<set>]["curves"]``,
  ``fiqa.eval.report.plot_curves``): ``roc_<set>.png`` (IJB 1:1), ``cmc_<set>.png`` (TinyFace, SCface
  per distance, IJB 1:N), ``erc_<set>.png`` (pair sets with an ``erc`` protocol, IJB).

Image keys: ``val/<set>/<name>`` with ``<name>`` the file name without ``_<set>.png`` (``val/lfw/erc``,
``val/ijbc/roc``, ``val/synth/quality_hist`` ...), at the trainer's global step.

Skipped in the sanity check and under ``fast_dev_run`` (partial sets)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from fiqa.eval import report


class QualityPlots(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        dm = trainer.datamodule
        for i, name in enumerate(getattr(pl_module, "val_sets", {})):
            res = pl_module.val_results.get(name)
            if res is None:
                continue
            targets = dm.val_targets(i) if dm is not None else {}
            images = {}
            if "degradation" in targets and len(targets["degradation"]) == len(res["qualities"]):
                images["quality_vs_degradation"] = report.plot_quality_vs_degradation(
                    res["qualities"],
                    targets["degradation"][res["indices"]],
                    self.out_dir / f"quality_vs_degradation_{name}.png",
                    title=f"{name}: {pl_module.__class__.__name__}",
                )
            images["quality_hist"] = report.plot_quality_histogram(
                res["qualities"], self.out_dir / f"quality_hist_{name}.png", title=name
            )
            images.update(report.plot_curves(res.get("curves") or {}, self.out_dir, name))
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):
                    for key, path in images.items():
                        logger.log_image(key=f"val/{name}/{key}", images=[str(path)], step=trainer.global_step)
