"""task=compare ckpt_path=<FR model> compare.sources=[own,norm,serfiq,random,oracle,{name:,ckpt_path:}]:
the ERC of N quality sources on one FR model's comparison scores, per pair val set and FMR.

Writes ``erc_<set>_fmr<..>.png``, ``compare.csv``, ``compare.md`` and ``metrics.json``
(``compare/<set>/<source>/auc_fmr1e-3`` ...) into the run dir, and the same to W&B (images + a
table) when ``logger=wandb``. Sources: ``own`` (the FR model's quality), ``norm`` (its embedding
magnitude), ``serfiq`` (SER-FIQ on it, ``compare.serfiq``), ``random``, ``oracle`` (minus the
ground-truth degradation, SynthFace only), or another model's quality ``{name, ckpt_path}``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from fiqa.eval import quality_metrics as qm
from fiqa.eval.compare import compare_sources, plot_erc, rows_of, write_tables
from fiqa.eval.report import write_metrics
from fiqa.eval.verification import l2_normalize
from fiqa.methods.serfiq import SERFIQ
from fiqa.quality.scoring import input_convention_of
from fiqa.tasks.build import build_loggers, build_val, load_model, replaces_quality
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


def _to_input(images: torch.Tensor, conv: dict) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB -> float (B, 3, H, W) in a model's input convention."""
    x = images.flip(-1) if conv.get("color", "rgb") == "bgr" else images
    return (x.permute(0, 3, 1, 2).float() - float(conv.get("mean", 127.5))) / float(conv.get("std", 127.5))


class _Raw(torch.utils.data.Dataset):
    def __init__(self, reader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.ascontiguousarray(self.reader[i][0])), i


def _sources(cfg: DictConfig, model, device) -> dict:
    """name -> (model to run or None, kind)."""
    out = {}
    for s in cfg.compare.sources:
        if isinstance(s, str):
            if s == "serfiq":
                out[s] = (SERFIQ(model, **OmegaConf.to_container(cfg.compare.serfiq)).eval().to(device), "model")
            elif s in ("own", "norm", "random", "oracle"):
                out[s] = (None, s)
            else:
                raise ValueError(
                    f"compare.sources: unknown {s!r}; choose own, norm, serfiq, random, oracle or {{name, ckpt_path}}"
                )
        else:
            other = load_model(str(s.ckpt_path), {}, bool(cfg.trust_checkpoint), str(s.get("ckpt_format", "auto")))
            out[str(s.name)] = (other.eval().to(device), "model")
    return out


@torch.no_grad()
def _embed_set(cfg, model, dataset, sources, flip: bool, device):
    conv = input_convention_of(model)
    bs, workers = int(cfg.compare.batch_size), int(cfg.compare.num_workers)
    loader = DataLoader(_Raw(dataset), batch_size=bs, num_workers=workers)
    n = len(dataset)
    emb, q = None, {name: np.empty(n) for name in sources}
    rng = np.random.default_rng(int(cfg.seed))
    for images, idx in loader:
        x = _to_input(images, conv).to(device)
        out = model(x)
        e = out.embedding.float() + (model(x.flip(3)).embedding.float() if flip else 0)
        if emb is None:
            emb = np.empty((n, e.shape[1]), np.float32)
        emb[idx.numpy()] = e.cpu().numpy()
        for name, (other, kind) in sources.items():
            if kind == "own":
                v = out.quality
            elif kind == "norm":
                v = out.embedding.float().norm(dim=1)
            elif kind == "model":
                v = other(_to_input(images, input_convention_of(other)).to(device)).quality
            else:
                continue
            q[name][idx.numpy()] = v.float().cpu().numpy()
    if "random" in sources:
        q["random"] = rng.random(n)
    return emb, q


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
                q.pop("oracle")
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
