"""task=compare ckpt_path=<FR model> compare.sources=[own,norm,serfiq,random,oracle,{name:,ckpt_path:}]:
the ERC of N quality sources on one FR model's comparison scores, per pair val set and FMR.

Writes ``erc_<set>_fmr<..>.png``, ``compare.csv``, ``compare.md`` and ``metrics.json``
(``compare/<set>/<source>/auc_fmr1e-3`` ...) into the run dir, and the same to W&B (images + a
table) when ``logger=wandb``. Sources: ``own`` (the FR model's quality), ``norm`` (its embedding
magnitude), the training-free observers of it ``serfiq``, ``grafiqs``, ``froq`` (their settings:
``compare.serfiq`` ...), ``random``, ``oracle`` (minus the ground-truth degradation, SynthFace only), or
another model's quality ``{name, ckpt_path}`` (e.g. a distilled or SDD-FIQA model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fiqa.eval import quality_metrics as qm
from fiqa.eval.compare import compare_sources, plot_erc, rows_of, write_tables
from fiqa.eval.report import write_metrics
from fiqa.eval.verification import l2_normalize
from fiqa.methods.wrappers import OBSERVERS, observer
from fiqa.quality.embed import embed_set
from fiqa.tasks.build import build_loggers, build_val, load_model, replaces_quality
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


def _sources(cfg: DictConfig, model, device) -> dict:
    """name -> (model to run or None, kind)."""
    out = {}
    for s in cfg.compare.sources:
        if isinstance(s, str):
            if s in OBSERVERS:  # SER-FIQ, GraFIQs, FROQ on the FR model, with compare.<name> as their settings
                params = OmegaConf.to_container(cfg.compare[s], resolve=True) if cfg.compare.get(s) else {}
                out[s] = (observer(s, model, params).to(device), "model")
            elif s in ("own", "norm", "random", "oracle"):
                out[s] = (None, s)
            else:
                raise ValueError(
                    f"compare.sources: unknown {s!r}; choose own, norm, random, oracle, {', '.join(OBSERVERS)} "
                    f"or {{name, ckpt_path}}"
                )
        else:
            other = load_model(str(s.ckpt_path), {}, bool(cfg.trust_checkpoint), str(s.get("ckpt_format", "auto")))
            out[str(s.name)] = (other.eval().to(device), "model")
    return out


def _embed_set(cfg, model, dataset, sources, flip: bool, device):
    out = embed_set(
        dataset, model, flip, {name: m for name, (m, kind) in sources.items() if kind == "model"},
        int(cfg.compare.batch_size), int(cfg.compare.num_workers), device,
    )  # fmt: skip
    rand = np.random.default_rng(int(cfg.seed)).random(len(dataset)) if "random" in sources else None
    picked = {"own": out["own"], "norm": out["norm"], "random": rand, "oracle": None}
    q = {name: out[name] if kind == "model" else picked[kind] for name, (_, kind) in sources.items()}
    return out["embeddings"], q  # the oracle is filled in by the caller (the set's ground truth)


def compare(cfg: DictConfig) -> dict:
    if not cfg.get("ckpt_path"):
        raise ValueError("task=compare needs ckpt_path=<the FR model whose comparison scores are judged>")
    device = torch.device(cfg.compare.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    datasets, view = build_val(cfg)
    model = load_model(
        cfg.ckpt_path, view, bool(cfg.trust_checkpoint), str(cfg.ckpt_format), cfg.quality_ckpt_path,
        require_quality=not replaces_quality(cfg),
    )  # fmt: skip
    model.eval().to(device)
    sources = _sources(cfg, model, device)
    out_dir, fmrs = Path(cfg.paths.output_dir), [float(f) for f in cfg.compare.fmrs]
    rows, metrics, plots = [], {}, []
    for name, ds in datasets.items():
        targets = ds.targets() if hasattr(ds, "targets") else {}
        if "issame" not in targets:
            log.warning(f"task=compare: val set {name!r} has no pairs (issame): not compared")
            continue
        emb, q = _embed_set(cfg, model, ds, sources, bool(view[name]["flip"]), device)
        if "oracle" in sources:
            if "degradation" not in targets:
                log.warning(f"task=compare: no ground truth for the oracle on {name!r} (SynthFace only): left out")
                q.pop("oracle", None)
            else:
                q["oracle"] = -np.asarray(targets["degradation"], np.float64)
        scores = np.sum(l2_normalize(emb[0::2].astype(np.float64)) * l2_normalize(emb[1::2].astype(np.float64)), 1)
        results = compare_sources(scores, targets["issame"], q, fmrs, str(cfg.compare.mode), str(cfg.compare.reduce))
        rows += rows_of(name, results)
        for src, r in results.items():
            metrics.update({f"compare/{name}/{src}/{k}": v for k, v in r.metrics().items() if "_reject" not in k})
        for f, fmr in enumerate(fmrs):
            title = f"{name}: ERC at FMR {fmr:g} ({cfg.compare.mode}), FR model {Path(str(cfg.ckpt_path)).name}"
            plots.append(plot_erc(results, f, out_dir / f"erc_{name}_{qm.fmr_key(fmr)}.png", title))
    if not rows:
        raise ValueError("task=compare: none of the val sets has pairs; use e.g. val=[synth] or val=[lfw,xqlfw]")
    csv_path, md_path = write_tables(rows, out_dir)
    write_metrics(metrics, out_dir)
    _log_wandb(cfg, rows, plots)
    log.info(f"compare: {len(plots)} ERC plots, table {md_path}\n" + md_path.read_text())
    return {"plots": [str(p) for p in plots], "csv": str(csv_path), "md": str(md_path)}


def _log_wandb(cfg: DictConfig, rows: list, plots: list) -> None:
    for lg in build_loggers(cfg):
        if type(lg).__name__ == "WandbLogger":
            lg.log_image("compare/erc", [str(p) for p in plots], caption=[p.stem for p in plots])
            cols = list(rows[0])
            lg.log_table("compare/table", columns=cols, data=[[r[c] for c in cols] for r in rows])
            lg.experiment.finish()
