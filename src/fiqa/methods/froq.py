"""FROQ (Babnik et al., IJCB 2025): training-free quality from the activation norms of the FR model itself.

A calibration set with pseudo labels picks the layers whose per-image activation norm tracks quality
(greedy, by Spearman); the quality of an image is then the mean of those layers' norms, read by forward
hooks during the model's one ordinary forward (``fiqa.quality.froq``, where the facts of the original are
listed). The embedding is the model's own.

    python main.py task=eval ckpt_path=<FR model> quality=froq val=[lfw]
    python main.py task=eval ckpt_path=<...> quality=froq quality.labels=norm quality.calibration=<dir|.rec|.bin|list>

The calibration runs once, lazily, on the first forward (on that batch's device, under ``no_grad`` or
``inference_mode`` alike), and is stored as a JSON file (``calibration_file``; by default
``<model_file>.froq.json`` when the model file is known) with the model file's identity (path, size,
mtime) and a digest of its weights; a file made for another model or other settings is an error that
names it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fiqa.methods.base import FaceModule
from fiqa.methods.wrappers import QualityWrapper
from fiqa.quality import froq as core
from fiqa.quality import froq_file, froq_labels
from fiqa.types import FaceOutput
from fiqa.utils.logging import get_logger

log = get_logger(__name__)

LABELS = ("serfiq", "norm", "auxiliary")  # or the path of a CSV (path_or_key,quality, as task=quality writes)
#: SER-FIQ pseudo labels on a model trained without dropout: the reference nets' rate
SERFIQ_FALLBACK_P = 0.4


class _Subset:
    """``reader`` restricted to ``indices``, with its keys."""

    def __init__(self, reader, indices: Sequence[int], keys: Sequence[str]):
        self.reader, self.indices, self.keys = reader, list(indices), list(keys)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.reader[self.indices[i]]


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (JSON-able settings)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def read_label_csv(path: str | Path) -> dict[str, float]:
    """``{path_or_key: quality}`` from a CSV with those two columns (``task=quality``'s qualities.csv)."""
    p = Path(path)
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["path_or_key", "quality"]:
        raise ValueError(f"quality.labels={str(p)!r}: expected a CSV with header 'path_or_key,quality'")
    return {r[0]: float(r[1]) for r in rows[1:] if r}


class FROQ(QualityWrapper):
    """FROQ on a trained FR model.

    calibration: ``"synthface"`` (``calibration_size`` SynthFace images of seed ``calibration_seed``, made on
        the spot: works with no data) or a path readable by :func:`fiqa.data.sources.open_source` (a folder,
        ``.rec``, ``.bin``, list file), of which ``calibration_size`` evenly spaced images are used (all when null).
    labels: the pseudo-label source: ``serfiq`` (SER-FIQ on this FR model, ``label_params`` -> its arguments;
        ``p`` defaults to the model's dropout, or 0.4 without one), ``norm`` (embedding norm), ``auxiliary``
        (the original's flip + noise + occlusion similarities, ``label_params``: mpx, alphas, n_noise, seed), or
        a CSV ``path_or_key,quality`` whose keys are the calibration source's keys.
    n_layers: null = the original's rule (the greedy prefix of highest rho), else that many layers.
    top_k: how many of the best single layers the greedy search runs over (the original: 10).
    aggregate: ``mean`` (the original: mean of the raw norms) or ``zscore`` (signed z-scores, see the core).
    candidates: ``all`` (every module of the backbone, the original's rule) or a list of fnmatch patterns.
    calibration_file: null = ``<model_file>.froq.json`` when ``model_file`` is given, else kept in memory;
        ``false`` = never stored; a path = stored there. recalibrate: overwrite a stored file.
    """

    source = "froq"

    def __init__(
        self,
        model: FaceModule,
        calibration: str = "synthface",
        calibration_size: int | None = 512,
        calibration_seed: int = 1,
        labels: str = "serfiq",
        label_params: Mapping | None = None,
        n_layers: int | None = None,
        top_k: int = 10,
        aggregate: str = "mean",
        candidates: str | Sequence[str] = "all",
        calibration_file: str | bool | None = None,
        model_file: str | None = None,
        recalibrate: bool = False,
        batch_size: int = 64,
    ):
        super().__init__(model)
        if aggregate not in core.AGGREGATES:
            raise ValueError(f"quality.aggregate={aggregate!r} is not valid; choose one of {list(core.AGGREGATES)}")
        labels = str(labels)
        if labels not in LABELS and not labels.lower().endswith(".csv"):
            raise ValueError(f"quality.labels={labels!r}: choose one of {list(LABELS)} or a .csv path")
        candidates = _plain(candidates)
        candidates = candidates if isinstance(candidates, str) else [str(c) for c in candidates]
        core.candidate_modules(self.backbone, candidates)  # a pattern matching nothing fails here
        self.settings = {
            "calibration": str(calibration),
            "calibration_size": None if calibration_size is None else int(calibration_size),
            "calibration_seed": int(calibration_seed),
            "labels": labels,
            "label_params": dict(_plain(label_params) or {}),
            "n_layers": None if n_layers is None else int(n_layers),
            "top_k": int(top_k),
            "aggregate": str(aggregate),
            "candidates": candidates,
            "input_convention": dict(self.input_convention) if self.input_convention else None,
        }
        self.batch_size = int(batch_size)
        self.model_file = str(model_file) if model_file else None
        if calibration_file is None or calibration_file is True:
            self.calibration_file = Path(f"{self.model_file}.froq.json") if self.model_file else None
        elif calibration_file is False or str(calibration_file).lower() in ("", "none", "false", "null"):
            self.calibration_file = None
        else:
            self.calibration_file = Path(str(calibration_file))
        self.recalibrate = bool(recalibrate)
        self.calibration: core.Calibration | None = None
        if self.calibration_file is not None and self.calibration_file.is_file() and not self.recalibrate:
            self.calibration = froq_file.load_calibration(self.calibration_file, self.identity(), self.settings)
            log.info(f"FROQ: calibration from {self.calibration_file} ({self._describe()})")

    # ---- identity of the model, for the stored file ---------------------------------------------------
    def identity(self) -> dict:
        ident = {}
        if self.model_file and Path(self.model_file).is_file():
            ident.update(froq_file.file_identity(self.model_file))
        ident["fingerprint"] = froq_file.model_fingerprint(self.backbone)
        return ident

    # ---- the calibration -----------------------------------------------------------------------------
    def calibration_reader(self):
        """The calibration images: a reader of ``(uint8 RGB, label, meta)`` with ``keys``."""
        spec, n = self.settings["calibration"], self.settings["calibration_size"]
        if spec == "synthface":
            from fiqa.data.synthface import SynthFace

            n = 512 if n is None else n
            per = 4
            reader = SynthFace(max(2, math.ceil(n / per)), per, seed=self.settings["calibration_seed"])
            return _Subset(reader, range(n), [str(i) for i in range(n)])
        from fiqa.data.sources import open_source

        reader = open_source(spec)
        keys = list(reader.keys)
        if n is None or n >= len(reader):
            return _Subset(reader, range(len(reader)), keys)
        idx = np.unique(np.linspace(0, len(reader) - 1, int(n)).round().astype(np.int64)).tolist()
        return _Subset(reader, idx, [keys[i] for i in idx])

    def _labeller(self, reader):
        """Labels: an array in reader order, or a callable ``(inputs, output) -> (B,)``."""
        kind, params = self.settings["labels"], dict(self.settings["label_params"])
        if kind == "norm":
            return lambda x, out: out.embedding.float().norm(dim=1)
        if kind == "serfiq":
            from fiqa.methods.serfiq import SERFIQ

            if params.get("p") is None and not 0.0 < float(getattr(getattr(self.backbone, "dropout", None), "p", 0)):
                params["p"] = SERFIQ_FALLBACK_P
                log.info(f"FROQ: SER-FIQ labels with p={SERFIQ_FALLBACK_P} (the model has no dropout)")
            params.setdefault("T", 20)
            serfiq = SERFIQ(self, **params)
            return lambda x, out: serfiq(x).quality
        if kind == "auxiliary":
            conv = self.input_convention or {"mean": 127.5, "std": 127.5}
            params.setdefault("fill", (0.0 - float(conv["mean"])) / float(conv["std"]))  # black
            return lambda x, out: froq_labels.auxiliary_labels(lambda y: self.embed(y).embedding, x, **params)
        table = read_label_csv(kind)
        missing = [k for k in reader.keys if k not in table]
        if missing:
            raise ValueError(
                f"quality.labels={kind!r} has no quality for {len(missing)} of the {len(reader)} calibration images "
                f"(e.g. {missing[:3]}); its keys must be the calibration source's (quality.calibration)"
            )
        return np.array([table[k] for k in reader.keys], np.float64)

    def calibrate(self, device: torch.device | None = None) -> core.Calibration:
        """Run the calibration now (on ``device``, default: the backbone's) and store it."""
        if device is not None and next(self.backbone.parameters()).device != torch.device(device):
            self.to(device)
        reader = self.calibration_reader()
        s = self.settings
        self.calibration = core.calibrate(
            self, reader, self._labeller(reader), s["n_layers"], s["top_k"], s["aggregate"], s["candidates"],
            self.input_convention, self.batch_size,
        )  # fmt: skip
        log.info(f"FROQ: calibrated on {len(reader)} images, labels={s['labels']} ({self._describe()})")
        if self.calibration_file is not None:
            try:
                froq_file.save_calibration(self.calibration_file, self.calibration, self.identity(), s)
                log.info(f"FROQ: calibration written to {self.calibration_file}")
            except OSError as e:
                log.warning(f"FROQ: cannot write {self.calibration_file} ({e}); the calibration stays in memory")
        return self.calibration

    def _describe(self) -> str:
        c = self.calibration
        return f"{len(c.layers)} layers {c.layers}, calibration Spearman {c.spearman:.3f}"

    # ---- the method API --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> FaceOutput:
        if self.calibration is None:
            self.calibrate(images.device)
        out, q = core.observe(self, images, self.calibration)
        return FaceOutput(embedding=out.embedding, quality=q.float())
