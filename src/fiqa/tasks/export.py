"""task=export ckpt_path=PATH [export.out=model.onnx ...]: a trained model (backbone + quality head) -> ONNX.

The model comes from the checkpoint alone (ours: its stored config; a released one: ``ckpt_format``),
its input convention from the data config it was trained with. The keys of ``cfg.export``
(``conf/export/default.yaml``) are the arguments of :func:`fiqa.export.export_onnx`, which does the
work on any FaceModule and writes ``<out>.json`` beside the file."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fiqa.eval import report
from fiqa.export.onnx import export_onnx, require_onnx
from fiqa.methods.loading import load_model
from fiqa.quality.scoring import input_convention_of
from fiqa.tasks.build import replaces_quality, wrap_quality
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


def run(cfg: DictConfig) -> dict:
    if not cfg.get("ckpt_path"):
        raise ValueError(
            "task=export needs ckpt_path=<a .ckpt written by task=train, or a released checkpoint with ckpt_format=...>"
        )
    if cfg.get("export") is None:
        raise ValueError("task=export needs the export config group (export.out=..., see conf/export/default.yaml)")
    kwargs = OmegaConf.to_container(cfg.export, resolve=True, throw_on_missing=True)
    out = kwargs.pop("out")
    require_onnx(kwargs.get("exporter", "dynamo"))  # before loading a large checkpoint
    method = load_model(
        cfg.ckpt_path,
        trust_checkpoint=bool(cfg.get("trust_checkpoint", False)),
        ckpt_format=str(cfg.get("ckpt_format", "auto")),
        quality_path=cfg.get("quality_ckpt_path"),
        require_quality=not replaces_quality(cfg),
    )
    method = wrap_quality(method, cfg.get("quality"))
    convention = input_convention_of(method)
    source_cfg = getattr(method, "source_config", None)
    if source_cfg is not None and source_cfg.get("backbone") is not None:
        convention["size"] = int(source_cfg.backbone.get("input_size", 112) or 112)
    info = export_onnx(method, out, convention, source=str(cfg.ckpt_path), **kwargs)
    if info.get("max_abs_diff") is not None:
        report.write_metrics({"export/max_abs_diff": info["max_abs_diff"]}, Path(cfg.paths.output_dir))
    log.info(f"ONNX model: {out} (description: {out}.json)")
    return info
