"""task=quality ckpt_path=<model> score.input=<dir|.rec|.bin|list>: every image's quality -> CSV.

The model is ours or an original's released checkpoint; ``quality=serfiq|norm|random`` replaces its
own quality. Writes ``qualities.csv`` (``path_or_key,quality``), optionally ``embeddings.npy``, and
``quality_hist.png`` into the run directory."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fiqa.data.sources import open_source
from fiqa.eval.report import plot_quality_histogram
from fiqa.quality.scoring import score_reader
from fiqa.tasks.build import load_model, wrap_quality
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


def quality(cfg: DictConfig) -> dict:
    if not cfg.get("ckpt_path"):
        raise ValueError("task=quality needs ckpt_path=<a fiqa .ckpt or an original's released checkpoint>")
    s = cfg.score
    source = open_source(s.input, s.get("list_root"))
    model = load_model(cfg.ckpt_path, {}, bool(cfg.trust_checkpoint), str(cfg.ckpt_format), cfg.quality_ckpt_path)
    model = wrap_quality(model, cfg.get("quality"))
    log.info(f"scoring {len(source)} images of {source!r} with {type(model).__name__} from {cfg.ckpt_path}")
    q, emb = score_reader(
        model, source, int(s.batch_size), s.get("device"), int(s.num_workers), bool(s.save_embeddings), bool(s.progress)
    )
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / s.csv
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_or_key", "quality"])
        w.writerows((k, f"{v:.8g}") for k, v in zip(source.keys, q))
    summary = {"images": int(q.size), "mean": float(q.mean()), "std": float(q.std()), "min": float(q.min()),
               "max": float(q.max()), "csv": str(csv_path)}  # fmt: skip
    if s.save_embeddings:
        np.save(out / "embeddings.npy", emb)
        summary["embeddings"] = str(out / "embeddings.npy")
    if s.histogram:
        summary["histogram"] = str(plot_quality_histogram(q, out / "quality_hist.png", title=Path(str(s.input)).name))
    log.info(
        f"{summary['images']} qualities -> {csv_path} (mean {summary['mean']:.4g}, std {summary['std']:.4g}, "
        f"min {summary['min']:.4g}, max {summary['max']:.4g})"
    )
    return summary
