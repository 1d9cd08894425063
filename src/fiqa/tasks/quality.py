"""task=quality ckpt_path=<model> score.input=<dir|.rec|.bin|list>: every image's quality -> CSV.

The model is ours or an original's released checkpoint; ``quality=serfiq|norm|random`` replaces its
own quality. Writes ``qualities.csv`` (``path_or_key,quality``), optionally ``embeddings.npy``, and
``quality_hist.png`` into the run directory.

``score.detect=true``: the input is raw photos; each is detected and aligned first (as task=align, in
memory), the CSV has one row per face with its box, detection score and landmarks, ``failed.csv``
lists the images without a usable face, and ``report/`` shows the faces sorted by quality.
``score.scale=iso`` adds ``quality_iso`` (0-100, ISO/IEC 29794-5 style, :mod:`fiqa.quality.iso_scale`);
``score.scale=ofiq`` computes OFIQ's unified quality score (:mod:`fiqa.quality.ofiq`).

``quality=iso`` needs no model: the ISO/IEC 29794-5 component measures from the pixels
(:mod:`fiqa.tasks.quality_iso`), one raw and one 0-100 column per measure."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fiqa.eval.report import plot_quality_histogram
from fiqa.methods.loading import load_model
from fiqa.quality.scoring import score_reader
from fiqa.tasks import quality_iso, quality_photos
from fiqa.tasks.build import replaces_quality, wrap_quality
from fiqa.utils.logging import get_logger

log = get_logger(__name__)
SCALES, FORMATS = ("raw", "iso", "ofiq"), ("fiqa", "ofiq")


def quality(cfg: DictConfig) -> dict:
    s = cfg.score
    if s.scale not in SCALES:
        raise ValueError(f"score.scale={s.scale!r} is not a scale; valid choices: {list(SCALES)}")
    if s.format not in FORMATS:
        raise ValueError(f"score.format={s.format!r} is not a format; valid choices: {list(FORMATS)}")
    if s.scale == "ofiq" and not s.detect:
        raise ValueError("score.scale=ofiq needs score.detect=true: OFIQ's alignment is computed from the landmarks")
    model = None
    if quality_iso.is_iso(cfg):  # from the pixels: no model
        quality_iso.check(cfg)
    elif s.scale != "ofiq" or not s.get("ofiq_model"):
        if not cfg.get("ckpt_path"):
            raise ValueError(
                "task=quality needs ckpt_path=<a fiqa .ckpt or an original's released checkpoint>, or quality=iso "
                "(ISO/IEC 29794-5 component measures from the pixels: no model)"
            )
        model = load_model(
            cfg.ckpt_path, {}, bool(cfg.trust_checkpoint), str(cfg.ckpt_format), cfg.quality_ckpt_path,
            require_quality=not replaces_quality(cfg),
        )  # fmt: skip
        model = wrap_quality(model, cfg.get("quality"))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if s.detect:
        return quality_photos.run(cfg, model, out)
    if model is None:
        return quality_iso.run_aligned(cfg, out)
    from fiqa.data.sources import open_source

    source = open_source(s.input, s.get("list_root"))
    quality_photos.warn_if_unaligned(source, str(s.input))
    log.info(f"scoring {len(source)} images of {source!r} with {type(model).__name__} from {cfg.ckpt_path}")
    q, emb = score_reader(
        model, source, int(s.batch_size), s.get("device"), int(s.num_workers), bool(s.save_embeddings), bool(s.progress)
    )
    iso = quality_photos.iso_values(cfg, model, q, out)
    csv_path = out / s.csv
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_or_key", "quality"] + (["quality_iso"] if iso is not None else []))
        for i, (k, v) in enumerate(zip(source.keys, q)):
            w.writerow([k, f"{v:.8g}"] + ([int(iso[i])] if iso is not None else []))
    if s.format == "ofiq":
        quality_photos.write_ofiq_csv(out / "ofiq.csv", list(source.keys), q, iso, [None] * len(q))
    summary = quality_photos.stats(q, csv_path)
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
