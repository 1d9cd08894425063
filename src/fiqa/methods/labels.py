"""Per-training-image quality labels for the pseudo-label regression methods (``method=distill|ediffiqa|sddfiqa``).

A label source (``method.quality_labels``) is one of

* a CSV path (or ``{source: csv, path: ..., unmatched: error|skip}``) in ``task=quality``'s format: a header
  with ``path_or_key`` and ``quality`` columns, one row per image. Rows are matched to the training samples
  by the training reader's keys (:func:`training_keys`): the same keys ``task=quality`` writes when it scores
  the same data (``score.input=<the .rec | the image folder | the list file>``). Rows of images that are not
  in the training set are ignored (counted in the log); a training sample without a row is an error naming
  the file and a few keys, or, with ``unmatched: skip``, gets no label (NaN: the sample is left out of the
  regression loss);
* ``{source: serfiq|norm|own|sdd, ckpt_path: <FR model>, ...}``: computed over the training set with that
  FR model (ours or an original's released checkpoint, :func:`fiqa.methods.loading.load_model`) before training:
  SER-FIQ (``T``, ``p``, ``seed`` of :class:`fiqa.methods.serfiq.SERFIQ`), the embedding norm, the model's
  own quality, or SDD-FIQA's pseudo-labels (``n_neg``, ``n_pos``, ``repeats``, ``seed``, ``chunk`` of
  :func:`fiqa.quality.sdd.pseudo_labels`). The result is cached in ``cache_dir`` (the run dir): ``labels.csv``
  (``path_or_key,quality``: the raw source values, reusable as a CSV source by another run), ``labels.npy``
  (the normalised labels in training-reader order), with ``teacher=True`` ``teacher_embeddings.npy`` (the
  FR model's embedding of every training image, float16, memory-mapped on load) and ``meta.json``, written
  last: its presence marks a complete cache. A resumed run (same run dir) loads the cache, never recomputes.

Normalisation (``normalize``) over the labelled training samples: ``minmax`` to [0, 1] (default; DifFIQA(R),
eDifFIQA and SDD-FIQA all min-max their labels), ``rank`` (the percentile in [0, 1]) or ``none``.

Under DDP rank 0 computes the cache; the other ranks wait for ``meta.json`` (file polling, so a long
computation does not hit a collective's timeout), then every rank loads it.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fiqa.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["LabelSet", "training_keys", "read_label_csv", "match_labels", "normalize_labels", "load_or_compute"]

MODEL_SOURCES = ("serfiq", "norm", "own", "sdd")
NORMALIZE = ("minmax", "rank", "none")
UNMATCHED = ("error", "skip")
META, LABELS, CSV, TEACHER = "meta.json", "labels.npy", "labels.csv", "teacher_embeddings.npy"


class LabelSet(dict):
    """``{"labels": (N,) float32 normalised (NaN: no label), "raw": (N,) float64,
    "teacher": (N, D) float16 memmap or None, "cached": whether it was read from the cache}``."""


def training_keys(reader) -> list[str]:
    """The key of every training sample, in reader order, as ``task=quality`` names the same image:
    the reader's ``keys`` when it has them; the record key of a ``.rec`` (:class:`fiqa.data.mxrec.MXRecDataset`);
    the path relative to the folder (:class:`fiqa.data.folders.ImageFolder`) or as resolved from the list
    (:class:`fiqa.data.folders.FileList`); otherwise the data set position ``"0" .. "N-1"`` (SynthFace)."""
    keys = getattr(reader, "keys", None)
    if keys is not None and not callable(keys):
        return [str(k) for k in keys]
    if getattr(reader, "image_keys", None) is not None:
        return [str(int(k)) for k in reader.image_keys]
    paths = getattr(reader, "paths", None)
    if paths is not None:
        root = key_root(reader)
        return [os.path.normpath(os.path.relpath(p, root)) if root else str(p) for p in paths]
    return [str(i) for i in range(len(reader))]


def key_root(reader) -> str | None:
    """The directory a path reader's keys are relative to: an image folder's root, a list file's directory."""
    root = getattr(reader, "root", None)
    if root is None and getattr(reader, "list_file", None):
        root = os.path.dirname(os.path.abspath(reader.list_file))
    return os.fspath(root) if root is not None and getattr(reader, "paths", None) is not None else None


def _key_variants(key: str, root: str | None) -> list[str]:
    """A key and its spellings that denote the same file (normalised, absolute, relative to ``root``)."""
    out = [key, os.path.normpath(key)]
    if root:
        full = key if os.path.isabs(key) else os.path.join(root, key)
        out += [os.path.normpath(os.path.abspath(full)), os.path.normpath(os.path.relpath(os.path.abspath(full), root))]
    return list(dict.fromkeys(out))


def read_label_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """``(keys, qualities)`` of a ``path_or_key,quality`` CSV (``task=quality``'s ``qualities.csv``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"method.quality_labels={str(path)!r}: no such CSV file")
    keys, values = [], []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or "path_or_key" not in rows.fieldnames or "quality" not in rows.fieldnames:
            raise ValueError(
                f"{path}: a label CSV needs the columns 'path_or_key' and 'quality' (task=quality's qualities.csv); "
                f"its header is {rows.fieldnames}"
            )
        for lineno, row in enumerate(rows, 2):
            try:
                values.append(float(row["quality"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {lineno}: quality {row['quality']!r} is not a number") from None
            keys.append(row["path_or_key"])
    if not keys:
        raise ValueError(f"{path}: the label CSV has no rows")
    return keys, np.asarray(values, np.float64)


def match_labels(
    csv_keys: list[str], values: np.ndarray, train_keys: list[str], root: str | None, origin: str, unmatched: str
) -> np.ndarray:
    """The CSV's value of every training sample (reader order); NaN where ``unmatched='skip'`` and no row."""
    if unmatched not in UNMATCHED:
        raise ValueError(f"method.quality_labels.unmatched={unmatched!r} is not valid; choose one of {list(UNMATCHED)}")
    seen: dict[str, int] = {}
    for i, k in enumerate(csv_keys):
        if k in seen:
            raise ValueError(f"{origin}: key {k!r} appears more than once (data rows {seen[k] + 1} and {i + 1})")
        seen[k] = i
    index = dict(seen)  # exact keys first, then their other spellings
    for i, k in enumerate(csv_keys):
        for v in _key_variants(k, root):
            index.setdefault(v, i)
    out = np.full(len(train_keys), np.nan, np.float64)
    used = np.zeros(len(csv_keys), bool)
    missing = []
    for j, k in enumerate(train_keys):
        hit = next((index[v] for v in _key_variants(k, root) if v in index), None)
        if hit is None:
            missing.append(k)
            continue
        out[j], used[hit] = values[hit], True
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        msg = (
            f"{origin}: {len(missing)} of {len(train_keys)} training samples have no row (keys {shown}); the CSV's "
            f"first keys: {', '.join(repr(k) for k in csv_keys[:3])}. Score the training data itself with "
            f"task=quality score.input=<the training .rec / folder / list>, or set method.quality_labels="
            f"{{source: csv, path: ..., unmatched: skip}} to leave those samples out of the regression loss"
        )
        if unmatched == "error":
            raise ValueError(msg)
        log.warning(msg.split(". Score")[0] + ": they are left out of the regression loss (unmatched=skip)")
    if (~used).any():
        log.info(f"{origin}: {int((~used).sum())} rows name images outside the training set and are ignored")
    return out


def normalize_labels(raw: np.ndarray, how: str = "minmax") -> np.ndarray:
    """float32 labels from the raw values (NaN stays NaN): ``minmax`` to [0, 1], ``rank`` (percentile in
    [0, 1], ties averaged) or ``none``."""
    if how not in NORMALIZE:
        raise ValueError(f"method.normalize={how!r} is not valid; choose one of {list(NORMALIZE)}")
    raw = np.asarray(raw, np.float64)
    ok = np.isfinite(raw)
    if not ok.any():
        raise ValueError("no training sample has a finite quality label")
    out = np.full(raw.shape, np.nan)
    if how == "none":
        out[ok] = raw[ok]
    elif how == "minmax":
        lo, hi = raw[ok].min(), raw[ok].max()
        out[ok] = (raw[ok] - lo) / (hi - lo) if hi > lo else 0.5
    else:
        from scipy.stats import rankdata

        r = rankdata(raw[ok])
        out[ok] = (r - 1) / max(ok.sum() - 1, 1)
    return out.astype(np.float32)


def spec_of(quality_labels: Any) -> dict:
    """``method.quality_labels`` as a plain dict with ``source``."""
    if quality_labels is None:
        raise ValueError(
            "this method regresses quality labels: set method.quality_labels=<labels.csv> (task=quality's format) "
            "or method.quality_labels={source:serfiq|norm|own|sdd,ckpt_path:<FR model>}"
        )
    if isinstance(quality_labels, (str, os.PathLike)):
        return {"source": "csv", "path": str(quality_labels)}
    spec = {k: (v if not hasattr(v, "items") else dict(v)) for k, v in dict(quality_labels).items()}
    src = spec.get("source", "csv" if "path" in spec else None)
    if src not in ("csv", *MODEL_SOURCES):
        raise ValueError(
            f"method.quality_labels.source={src!r} is not valid; choose csv or one of {list(MODEL_SOURCES)}"
        )
    if src == "csv" and not spec.get("path"):
        raise ValueError("method.quality_labels.source=csv needs path=<labels.csv>")
    if src != "csv" and not spec.get("ckpt_path"):
        raise ValueError(f"method.quality_labels.source={src} needs ckpt_path=<the FR model that computes it>")
    spec["source"] = src
    return spec


def identities(reader) -> np.ndarray:
    """The identity label of every training sample (the reader's ``labels`` array, else read sample by sample)."""
    lab = getattr(reader, "labels", None)
    if lab is not None and len(lab) == len(reader):
        return np.asarray(lab).astype(np.int64).ravel()
    if hasattr(reader, "images_per_identity"):  # SynthFace: sample i is of identity i // images_per_identity
        return np.arange(len(reader), dtype=np.int64) // int(reader.images_per_identity)
    return np.asarray([int(reader[i][1]) for i in range(len(reader))], np.int64)


MODEL_KEYS = {
    "serfiq": ("T", "p", "seed", "chunk"),
    "sdd": ("n_neg", "n_pos", "repeats", "seed", "chunk"),
}


def compute_source(
    spec: Mapping, reader, device, batch_size: int = 128, num_workers: int = 0, teacher: bool = False
) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """``(raw labels, teacher embeddings or None, the FR model)`` of a model source over ``reader``:
    one pass of the FR model (:func:`fiqa.quality.embed.embed_set`, unflipped images)."""
    from fiqa.methods.loading import load_model
    from fiqa.quality.embed import embed_set

    src = spec["source"]
    extra = set(spec) - {
        "source",
        "ckpt_path",
        "trust_checkpoint",
        "ckpt_format",
        "batch_size",
        *MODEL_KEYS.get(src, ()),
    }
    if extra:
        raise ValueError(f"method.quality_labels: keys {sorted(extra)} are not options of source={src}")
    model = load_model(
        str(spec["ckpt_path"]),
        {},
        bool(spec.get("trust_checkpoint", False)),
        str(spec.get("ckpt_format", "auto")),
        require_quality=src == "own",
        key="method.quality_labels.ckpt_path",
    )
    model = model.to(device).eval()
    others = {}
    if src == "serfiq":
        from fiqa.methods.serfiq import SERFIQ

        kw = {k: spec[k] for k in MODEL_KEYS["serfiq"] if spec.get(k) is not None}
        others["serfiq"] = SERFIQ(model, **kw).to(device).eval()
    bs = int(spec.get("batch_size", batch_size))
    log.info(f"quality labels: {src} of {len(reader)} training images with {spec['ckpt_path']} on {device}")
    t0 = time.time()
    out = embed_set(reader, model, flip=False, others=others, batch_size=bs, num_workers=num_workers, device=device)
    if src == "sdd":
        from fiqa.quality.sdd import pseudo_labels

        kw = {k: spec[k] for k in MODEL_KEYS["sdd"] if spec.get(k) is not None}
        raw = pseudo_labels(out["embeddings"], identities(reader), device=device, **kw)
    else:
        raw = np.asarray(out[src], np.float64)
    log.info(f"quality labels: {src} computed in {time.time() - t0:.1f} s")
    emb = out["embeddings"].astype(np.float16) if teacher else None
    return raw, emb, model


def _write_cache(cache: Path, keys: list[str], raw: np.ndarray, labels: np.ndarray, emb, meta: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / META).unlink(missing_ok=True)
    with open(cache / (CSV + ".tmp"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_or_key", "quality"])
        w.writerows([k, f"{v:.10g}"] for k, v in zip(keys, raw))
    os.replace(cache / (CSV + ".tmp"), cache / CSV)
    np.save(cache / ("tmp_" + LABELS), labels)
    os.replace(cache / ("tmp_" + LABELS), cache / LABELS)
    if emb is not None:
        np.save(cache / ("tmp_" + TEACHER), emb)
        os.replace(cache / ("tmp_" + TEACHER), cache / TEACHER)
    tmp = cache / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, cache / META)  # last: marks the cache complete


def _read_cache(cache: Path, meta_expected: Mapping, n: int, teacher: bool) -> LabelSet:
    meta = json.loads((cache / META).read_text())
    for k in ("spec", "normalize", "n"):
        if meta.get(k) != meta_expected.get(k):
            raise ValueError(
                f"the quality-label cache {cache} was made with {k}={meta.get(k)!r}, this run asks for "
                f"{meta_expected.get(k)!r}: start a new run (another run dir) or delete {cache}"
            )
    if teacher and not (cache / TEACHER).is_file():
        raise ValueError(f"the quality-label cache {cache} has no {TEACHER}: delete {cache} to recompute it")
    _, raw = read_label_csv(cache / CSV)
    labels = np.load(cache / LABELS)
    if labels.shape != (n,):
        raise ValueError(f"{cache / LABELS}: {labels.shape} labels for {n} training samples: delete {cache}")
    emb = np.load(cache / TEACHER, mmap_mode="r") if teacher else None
    log.info(f"quality labels: reusing the cache {cache} (source {meta['spec'].get('source')}, made {meta['made']})")
    return LabelSet(labels=labels, raw=raw, teacher=emb, cached=True)


def load_or_compute(
    quality_labels: Any,
    reader,
    cache_dir: str | os.PathLike | None,
    normalize: str = "minmax",
    device="cpu",
    teacher: bool = False,
    rank: int = 0,
    wait_s: float = 86400.0,
    batch_size: int = 128,
    num_workers: int = 0,
) -> LabelSet:
    """The labels of every training sample (see the module docstring). ``teacher``: also the FR model's
    embeddings (eDifFIQA's consistency target; a model source only). ``rank`` != 0 waits for rank 0's cache."""
    spec = spec_of(quality_labels)
    n = len(reader)
    keys = training_keys(reader)
    if spec["source"] == "csv":
        if teacher:
            raise ValueError(
                "this method needs the FR model's embeddings of the training images (its consistency term): give "
                "method.quality_labels={source:...,ckpt_path:<FR model>}, not a CSV"
            )
        csv_keys, values = read_label_csv(spec["path"])
        raw = match_labels(
            csv_keys, values, keys, key_root(reader), str(spec["path"]), str(spec.get("unmatched", "error"))
        )
        return LabelSet(labels=normalize_labels(raw, normalize), raw=raw, teacher=None, cached=False)
    if cache_dir is None:
        raise ValueError("method.label_cache must name a directory for the computed quality labels")
    cache = Path(cache_dir)
    expected = {"spec": json.loads(json.dumps(spec, default=str)), "normalize": normalize, "n": n}
    if (cache / META).is_file():
        return _read_cache(cache, expected, n, teacher)
    if rank != 0:
        t0 = time.time()
        while not (cache / META).is_file():
            if time.time() - t0 > wait_s:
                raise TimeoutError(
                    f"rank {rank}: rank 0 did not write the quality-label cache {cache} in {wait_s:.0f} s"
                )
            time.sleep(2.0)
        return _read_cache(cache, expected, n, teacher)
    raw, emb, _ = compute_source(spec, reader, device, batch_size, num_workers, teacher)
    labels = normalize_labels(raw, normalize)
    meta = {**expected, "made": time.strftime("%Y-%m-%d %H:%M:%S"), "reader": repr(reader)}
    _write_cache(cache, keys, raw, labels, emb, meta)
    log.info(f"quality labels: cached in {cache}")
    return _read_cache(cache, expected, n, teacher)
