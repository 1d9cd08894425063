"""task=benchmark: the FIQA papers' main table, every FR model x quality source x val set.

    python main.py task=benchmark benchmark.models=[<FR ckpt>, {name: ArcFace-R100-MS1MV2, ckpt_path: ...}]
        benchmark.sources=[own, norm, serfiq, random, {name: CR-FIQA(L), ckpt_path: <CR-FIQA model>}]
        val=[lfw, agedb_30, cfp_fp, calfw, cplfw, xqlfw, ijbc]

Per (FR model, set): the flip-fused embeddings, the model's own quality and its embedding norm are
computed once and cached (``benchmark.cache_dir``, the run dir's ``cache/`` by default), and so is every
quality source per set (a source with its own ``ckpt_path`` does not depend on the FR model: its quality
of set S is computed once for all FR models: the papers' "quality method Q with FR model M" cells). A
second run into the same run dir (``hydra.run.dir=<it>``) or with the same ``benchmark.cache_dir``
recomputes only what is new: an added source, set or model. The cache key holds the checkpoint's path,
size and modification time, the set's dataset config and flip, and the source's settings.

Writes ``benchmark.csv`` (long form), ``benchmark.md`` (rows = quality sources, columns = sets per FR
model, best per column in bold, the published value and Δ wherever ``experiments/*/published.yaml`` has
the same (model, quality, set, metric) cell), ``erc_grid_fmr<..>.png`` and ``metrics.json``
(``benchmark/<model>/<source>/<set>/<metric>``, ``benchmark/<model>/<set>/<metric>`` for the FR
metrics); with ``logger=wandb`` one W&B run with the table, the grids and the metrics. The columns and
their four conventions: :mod:`fiqa.eval.benchmark`."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fiqa.eval import benchmark as bm
from fiqa.eval import quality_metrics as qm
from fiqa.eval.report import write_metrics
from fiqa.eval.sets import evaluate_set, pair_similarity_of
from fiqa.eval.verification import l2_normalize
from fiqa.methods.wrappers import OBSERVERS, observer
from fiqa.quality.embed import embed_set
from fiqa.tasks.build import build_loggers, build_val, load_model
from fiqa.utils.logging import get_logger

log = get_logger(__name__)

PER_MODEL = ("own", "norm", *OBSERVERS)  # sources computed from the FR model itself
FREE = ("random", "oracle")  # sources that need no model
#: protocols that judge the model's own quality: left to the quality columns, not run as FR metrics
_QUALITY_PROTOCOLS = ("erc_pairs", "erc_images", "reject_fnmr", "quality_vs_degradation")
_VERSION = 1  # bump when what a cache entry holds changes


@dataclass
class Spec:
    """An FR model (``benchmark.models``) or a quality source (``benchmark.sources``)."""

    name: str
    kind: str  # model | own | norm | serfiq | grafiqs | froq | random | oracle
    ckpt_path: str | None = None
    ckpt_format: str = "auto"
    quality_ckpt_path: str | None = None
    _model: object = field(default=None, repr=False)

    def fingerprint(self) -> list:
        return [_file_id(self.ckpt_path), self.ckpt_format, _file_id(self.quality_ckpt_path)]


def _file_id(path: str | None) -> list | None:
    if not path:
        return None
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def _default_name(path: str) -> str:
    p = Path(path)
    return f"{p.parent.parent.name}/{p.stem}" if p.parent.name == "checkpoints" else p.stem


def _check_file(path, key: str) -> str:
    if not Path(str(path)).is_file():
        raise ValueError(f"{key}: {path!r} is not a file")
    return str(path)


def parse_models(node) -> list[Spec]:
    """``benchmark.models``: checkpoint paths or ``{name, ckpt_path, ckpt_format, quality_ckpt_path}``."""
    if not node:
        raise ValueError("task=benchmark needs benchmark.models=[<FR checkpoint>, {name: ..., ckpt_path: ...}, ...]")
    out = []
    for i, m in enumerate(node):
        key = f"benchmark.models[{i}]"
        if isinstance(m, str):
            out.append(Spec(_default_name(m), "model", _check_file(m, key)))
        elif isinstance(m, DictConfig) and m.get("ckpt_path"):
            path = _check_file(m.ckpt_path, f"{key}.ckpt_path")
            out.append(Spec(str(m.get("name") or _default_name(path)), "model", path, str(m.get("ckpt_format", "auto")),
                            m.get("quality_ckpt_path")))  # fmt: skip
        else:
            raise ValueError(f"{key}: give a checkpoint path or {{name, ckpt_path[, ckpt_format]}}, got {m}")
    _unique(out, "benchmark.models")
    return out


def parse_sources(node) -> list[Spec]:
    """``benchmark.sources``: ``own``, ``norm``, ``serfiq``, ``grafiqs``, ``froq``, ``random``, ``oracle``,
    ``{name, ckpt_path}`` (another model's own quality) or ``{name, kind: <one of those>}`` (renamed, e.g.
    to the name a published table uses)."""
    choices = f"{list(PER_MODEL + FREE)}, {{name, ckpt_path}} or {{name, kind}}"
    out = []
    for i, s in enumerate(node or []):
        key = f"benchmark.sources[{i}]"
        if isinstance(s, str):
            if s not in PER_MODEL + FREE:
                raise ValueError(f"{key}: unknown source {s!r}; choose {choices}")
            out.append(Spec(s, s))
        elif isinstance(s, DictConfig) and s.get("name") and s.get("ckpt_path"):
            path = _check_file(s.ckpt_path, f"{key}.ckpt_path")
            out.append(Spec(str(s.name), "model", path, str(s.get("ckpt_format", "auto")), s.get("quality_ckpt_path")))
        elif isinstance(s, DictConfig) and s.get("name") and s.get("kind") in PER_MODEL + FREE:
            out.append(Spec(str(s.name), str(s.kind)))
        else:
            raise ValueError(f"{key}: {s} is not a source; choose {choices}")
    if not out:
        raise ValueError(f"task=benchmark needs at least one quality source in benchmark.sources: {choices}")
    _unique(out, "benchmark.sources")
    return out


def _unique(specs: list[Spec], key: str) -> None:
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{key}: the names {dup} are used twice; give each entry its own {{name: ...}}")


class Cache:
    """``<dir>/<label>__<hash>.npz`` files, written atomically; the hash is of everything the value depends on."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.hits, self.misses = 0, 0

    def path(self, label: str, key: dict) -> Path:
        digest = hashlib.sha1(json.dumps({**key, "v": _VERSION}, sort_keys=True, default=str).encode()).hexdigest()
        return self.root / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}__{digest[:16]}.npz"

    def get(self, label: str, key: dict, compute) -> dict:
        path = self.path(label, key)
        if path.is_file():
            self.hits += 1
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        self.misses += 1
        value = compute()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **value)
        os.replace(tmp, path)
        return value


class Benchmark:
    def __init__(self, cfg: DictConfig):
        self.cfg, self.b = cfg, cfg.benchmark
        self.models, self.sources = parse_models(self.b.models), parse_sources(self.b.sources)
        self.datasets, self.view = build_val(cfg)
        if not self.datasets:
            raise ValueError("task=benchmark needs val sets, e.g. val=[lfw,agedb_30,cfp_fp,xqlfw] (conf/val/)")
        self.device = torch.device(self.b.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.out_dir = Path(cfg.paths.output_dir)
        self.cache = Cache(Path(self.b.cache_dir) if self.b.get("cache_dir") else self.out_dir / "cache")
        self.fmrs = [float(f) for f in self.b.fmrs]
        self.params = {k: OmegaConf.to_container(self.b[k], resolve=True) if self.b.get(k) else {} for k in OBSERVERS}
        if not self.fmrs:
            raise ValueError("benchmark.fmrs is empty; e.g. benchmark.fmrs=[1.0e-3,1.0e-4]")
        given = self.b.get("table_metrics")
        self.tables = list(given) if given is not None else bm.table_metrics(self.fmrs)

    # ---- models, lazily (a fully cached benchmark loads none) ---------------------------------------
    def _load(self, spec: Spec):
        if spec._model is None:
            m = load_model(spec.ckpt_path, self.view, bool(self.cfg.trust_checkpoint), spec.ckpt_format,
                           spec.quality_ckpt_path, key=f"benchmark ({spec.name})")  # fmt: skip
            spec._model = m.eval().to(self.device)
        return spec._model

    def _set_key(self, name: str) -> dict:
        return {"set": name, "dataset": OmegaConf.to_container(self.cfg.val[name].dataset, resolve=True),
                "flip": bool(self.view[name]["flip"])}  # fmt: skip

    def _run(self, ds, model=None, others=None, flip=True, label=""):
        return embed_set(ds, model, flip, others, int(self.b.batch_size), int(self.b.num_workers), self.device, label)

    def embeddings(self, spec: Spec, name: str, ds) -> dict:
        key = {"model": spec.fingerprint(), **self._set_key(name)}
        return self.cache.get(
            f"{spec.name}__{name}__embeddings",
            key,
            lambda: dict(self._run(ds, self._load(spec), flip=self.view[name]["flip"], label=f"{spec.name} on {name}")),
        )

    def quality(self, src: Spec, fr: Spec, name: str, ds, targets: dict, out: dict) -> np.ndarray | None:
        """Per-image qualities of source ``src`` on set ``name`` (``fr``: the FR model, for own/norm/serfiq,
        ``out`` its :meth:`embeddings` of the set)."""
        if src.kind in ("own", "norm"):
            return out[src.kind]
        if src.kind == "random":
            return np.random.default_rng(int(self.cfg.seed)).random(len(ds))  # as task=compare
        if src.kind == "oracle":
            if "degradation" not in targets:
                return None
            return -np.asarray(targets["degradation"], np.float64)
        if src.kind in OBSERVERS:  # SER-FIQ, GraFIQs, FROQ on the FR model
            params = self.params[src.kind]
            key = {"model": fr.fingerprint(), src.kind: params, **self._set_key(name)}
            label = f"{fr.name}__{src.kind}"

            def run():
                wrapped = observer(src.kind, self._load(fr), params).to(self.device)
                return {"q": self._run(ds, None, {"q": wrapped}, label=f"{src.kind} on {fr.name}, {name}")["q"]}

        else:  # another model's own quality: does not depend on the FR model
            key, label = {"source": src.fingerprint(), **self._set_key(name)}, f"source_{src.name}"

            def run():
                return {"q": self._run(ds, None, {"q": self._load(src)}, label=f"{src.name} on {name}")["q"]}

        return self.cache.get(f"{label}__{name}", key, run)["q"]

    # ---- one (FR model, set) --------------------------------------------------------------------
    def fr_metrics(self, name: str, out: dict, targets: dict) -> dict:
        """The set's own protocols (minus those on the model's quality), as task=eval runs them."""
        protocols = {}
        for k, p in self.view[name]["protocols"].items():
            fn = getattr(getattr(p, "func", p), "__name__", "")
            if fn in _QUALITY_PROTOCOLS:
                continue
            if fn == "ijb":  # its ERC is a quality column here
                p = functools.partial(p, erc_fmrs=[])
            protocols[k] = p
        emb, q = out["embeddings"], out["own"]
        res = {"indices": np.arange(len(q)), "embeddings": emb, "qualities": q.astype(np.float32)}
        sim = lambda e, qq: pair_similarity_of(name, self.view[name], e, qq)  # noqa: E731
        return evaluate_set(name, res, targets, protocols, sim)

    def comparisons(self, name: str, out: dict, targets: dict):
        """(scores, issame, score_kind, to_pair_quality) of the set's comparisons, or None (no pairs)."""
        emb = out["embeddings"]
        if "issame" in targets:
            sim = pair_similarity_of(name, self.view[name], emb, out["own"])
            if sim is not None:
                scores, kind = sim, "similarity"
            else:
                scores, kind = qm.pair_scores(l2_normalize(emb.astype(np.float64))), "cosine"
            reduce = str(self.b.reduce)
            return scores, np.asarray(targets["issame"], bool), kind, lambda q: qm.pair_quality(q, reduce=reduce)
        if "pairs" in targets:  # IJB: template-pair cosines (weighting none), template quality = min image quality
            from fiqa.eval import ijb

            kw = next((p.keywords for p in self.view[name]["protocols"].values()
                       if getattr(getattr(p, "func", p), "__name__", "") == "ijb"), {})  # fmt: skip
            det = bool(kw.get("detector_score", True))
            tpl = ijb.aggregate(emb, targets["template_ids"], targets["media_ids"],
                                faceness=targets.get("faceness") if det else None, norm_score=bool(kw.get(
                                    "norm_score", True)), detector_score=det, name=name)  # fmt: skip
            pairs = np.asarray(targets["pairs"])
            r1, r2 = tpl.rows(pairs[:, 0]), tpl.rows(pairs[:, 1])
            scores = ijb.pair_scores(tpl.features, r1, r2).astype(np.float64)
            inv = np.searchsorted(tpl.ids, np.asarray(targets["template_ids"]))

            def template_pair_q(q):
                tq = np.full(tpl.ids.size, np.inf)
                np.minimum.at(tq, inv, np.asarray(q, np.float64))
                return np.minimum(tq[r1], tq[r2])

            return scores, np.asarray(targets["pair_labels"]).astype(bool), "cosine", template_pair_q
        return None

    def run(self) -> dict:
        rows, metrics, ercs = [], {}, {}
        for fr in self.models:
            for name, ds in self.datasets.items():
                targets = ds.targets() if hasattr(ds, "targets") else {}
                out = self.embeddings(fr, name, ds)
                for k, v in self.fr_metrics(name, out, targets).items():
                    rows.append(_row(fr.name, "-", name, k, v))
                    metrics[f"benchmark/{fr.name}/{name}/{k}"] = v
                comp = self.comparisons(name, out, targets)
                if comp is None:
                    log.warning(f"task=benchmark: val set {name!r} has no verification pairs: FR metrics only")
                    continue
                scores, same, kind, to_pq = comp
                self._warn_fmrs(name, int((~same).sum()))
                for src in self.sources:
                    q = self.quality(src, fr, name, ds, targets, out)
                    if q is None:
                        log.warning(f"task=benchmark: no ground truth for the oracle on {name!r} (SynthFace only)")
                        continue
                    cells, cr = bm.quality_cells(scores, same, to_pq(q), self.fmrs, kind, self.b.pauc_limits,
                                                 float(self.b.fate.fnmr), self.b.fate.discards)  # fmt: skip
                    ercs.setdefault((fr.name, name), {})[src.name] = cr
                    for k, v in cells.items():
                        rows.append(_row(fr.name, src.name, name, k, v))
                        metrics[f"benchmark/{fr.name}/{src.name}/{name}/{k}"] = v
        if not rows:
            raise ValueError("task=benchmark produced no cell")
        return self._write(rows, metrics, ercs)

    def _warn_fmrs(self, name: str, n_imp: int) -> None:
        low = [f for f in self.fmrs if f * n_imp < 1]
        if low:
            log.warning(f"task=benchmark: {name!r} has {n_imp} non-mated pairs, too few for FMR {low} (needs "
                        f"1/FMR): those cells are NaN; e.g. benchmark.fmrs=[1.0e-2] on SynthFace")  # fmt: skip

    def _write(self, rows, metrics, ercs) -> dict:
        rows = bm.with_published(rows, bm.load_published(self._published_files()))
        csv_path, md_path = bm.write_outputs(rows, self.out_dir, self.tables, list(self.b.fr_metrics))
        write_metrics(metrics, self.out_dir)
        models, sets = [m.name for m in self.models], list(self.datasets)
        plots = [bm.plot_grid(ercs, models, sets, f, self.out_dir / f"erc_grid_{qm.fmr_key(fmr)}.png")
                 for f, fmr in enumerate(self.fmrs)] if ercs else []  # fmt: skip
        self._log_wandb(rows, metrics, plots)
        n_pub = sum(r["published"] is not None for r in rows)
        log.info(f"benchmark: {len(models)} FR models x {len(self.sources)} sources x {len(sets)} sets, {len(rows)} "
                 f"cells ({n_pub} with a published value); cache {self.cache.root}: {self.cache.hits} reused, "
                 f"{self.cache.misses} computed\n" + md_path.read_text())  # fmt: skip
        return {"csv": str(csv_path), "md": str(md_path), "plots": [str(p) for p in plots],
                "cache": {"hits": self.cache.hits, "misses": self.cache.misses}}  # fmt: skip

    def _published_files(self) -> list[Path]:
        given = self.b.get("published")
        if given is not None:
            files = [Path(str(p)) for p in given]
            missing = [str(p) for p in files if not p.is_file()]
            if missing:
                raise ValueError(f"benchmark.published: no such file {missing}")
            return files
        root = Path(__file__).resolve().parents[3] / "experiments"  # this checkout's experiments/
        return sorted(root.glob("*/published.yaml"))

    def _log_wandb(self, rows, metrics, plots) -> None:
        for lg in build_loggers(self.cfg):
            if type(lg).__name__ == "WandbLogger":
                cols = ["model", "source", "set", "metric", "convention", "value", "published", "delta"]
                lg.log_table("benchmark/table", columns=cols, data=[[r[c] for c in cols] for r in rows])
                if plots:
                    lg.log_image("benchmark/erc_grid", [str(p) for p in plots], caption=[p.stem for p in plots])
                lg.log_metrics(metrics)
                lg.experiment.finish()


def _row(model: str, source: str, set_name: str, metric: str, value: float) -> dict:
    return {"model": model, "source": source, "set": set_name, "metric": metric,
            "convention": bm.convention_of(metric), "value": float(value)}  # fmt: skip


def benchmark(cfg: DictConfig) -> dict:
    return Benchmark(cfg).run()
