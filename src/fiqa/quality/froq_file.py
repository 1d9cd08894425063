"""FROQ's calibration file (``quality.calibration_file``): a small JSON beside the model, written
atomically, that knows which model (path, size, mtime, a fingerprint of its weights) and which settings made
it; a stale one raises :class:`StaleCalibrationError` naming the fields that differ."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from fiqa.quality.froq import FORMAT, VERSION, Calibration

__all__ = ["StaleCalibrationError", "file_identity", "load_calibration", "model_fingerprint", "save_calibration"]


class StaleCalibrationError(ValueError):
    """A stored calibration belongs to another model or other settings."""


def file_identity(path: str | os.PathLike) -> dict:
    """``{"path", "size", "mtime_ns"}`` of a model file."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def model_fingerprint(module: nn.Module, sample: int = 4096) -> str:
    """A device-independent digest of ``module``'s state: names, dtypes, shapes and the exact bytes of up to
    ``sample`` evenly strided values of every tensor (any retraining changes it)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if not isinstance(t, Tensor):
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // sample)
            h.update(flat[::step][:sample].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def save_calibration(path: str | os.PathLike, calibration: Calibration, model: Mapping, settings: Mapping) -> None:
    """Write the calibration JSON atomically (``model``: identity of the model; ``settings``: how it was made)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": dict(model),
        "settings": dict(settings),
        "calibration": calibration.to_dict(),
    }
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, p)


def load_calibration(
    path: str | os.PathLike, model: Mapping | None = None, settings: Mapping | None = None
) -> Calibration:
    """Read a calibration JSON; with ``model``/``settings`` given, a file of another model (size, mtime or
    weights differ) or other settings raises :class:`StaleCalibrationError` naming the file and the fields."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"quality.calibration_file={str(p)!r} cannot be read as a FROQ calibration: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "calibration" not in doc:
        raise ValueError(f"quality.calibration_file={str(p)!r} is not a FROQ calibration (format {FORMAT!r})")
    stored_model, stored_settings = doc.get("model") or {}, doc.get("settings") or {}
    diffs = []
    for key in ("size", "mtime_ns", "fingerprint"):
        if model and key in model and key in stored_model and model[key] != stored_model[key]:
            diffs.append(f"model {key}: file {stored_model[key]!r}, now {model[key]!r}")
    for key in sorted(set(settings or {}) | set(stored_settings)):
        if settings is not None and (settings.get(key) != stored_settings.get(key)):
            diffs.append(f"{key}: file {stored_settings.get(key)!r}, now {settings.get(key)!r}")
    if diffs:
        raise StaleCalibrationError(
            f"quality.calibration_file={str(p)!r} is stale (made for model {stored_model.get('path')!r}): "
            + "; ".join(diffs)
            + ". Delete it, set quality.recalibrate=true to overwrite it, or give another quality.calibration_file."
        )
    try:
        return Calibration.from_dict(doc["calibration"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"quality.calibration_file={str(p)!r}: {e}") from e
