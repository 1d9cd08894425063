"""``load_released``: a released checkpoint of an original repository -> fiqa modules."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fiqa.interop.checkpoints import is_tensor_dict, read_checkpoint
from fiqa.interop.formats import FORMATS, Released, describe


def _hints(obj: Any) -> str:
    state = obj.get("state_dict") if isinstance(obj, Mapping) and "state_dict" in obj else obj
    keys = list(state) if isinstance(state, Mapping) else []
    if isinstance(obj, Mapping) and "fiqa_config" in obj:
        return " It is a fiqa (task=train) checkpoint: load it with fiqa.methods.loading.load_model or task=eval."
    if any(str(k).startswith("backbone.") for k in keys):
        return (
            " Its state_dict has backbone.* keys but not QGFace's IR (backbone.input_layer.0.weight): "
            "another trainer's layout; pass format= to see which keys differ."
        )
    if any(str(k).startswith(("qualtiy.", "module.qualtiy.")) for k in keys):
        return " It looks like EQFace's quality.pth: pass it as quality_path= and backbone.pth as path."
    return ""


def detect_format(obj: Any, source: str = "checkpoint") -> str:
    """The one format whose layout ``obj`` has; else an error listing every format tried and why."""
    reasons = {name: fmt.detect(obj) for name, fmt in FORMATS.items()}
    fits = [name for name, why in reasons.items() if why is None]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise ValueError(f"{source}: ambiguous layout, fits formats {fits}; pass format= explicitly")
    tried = "; ".join(f"{name}: {why}" for name, why in reasons.items())
    raise ValueError(
        f"{source}: not a released-checkpoint layout fiqa.interop knows ({describe(obj)}). Tried "
        f"{list(FORMATS)} -> {tried}.{_hints(obj)} Pass format= explicitly to see which keys differ."
    )


def convert_released(
    obj: Any,
    format: str = "auto",
    arch: str | None = None,
    quality_obj: Any = None,
    source: str = "checkpoint",
    quality_source: str | None = None,
    require_quality: bool = True,
) -> Released:
    """:func:`load_released` on objects already in memory (what ``torch.load`` returned)."""
    name = detect_format(obj, source) if format == "auto" else format
    if name not in FORMATS:
        raise ValueError(f"format={format!r} is not known; choose 'auto' or one of {list(FORMATS)}")
    fmt = FORMATS[name]
    if quality_obj is not None and not fmt.quality_file:
        with_q = [n for n, f in FORMATS.items() if f.quality_file]
        raise ValueError(f"quality_path is only used by format(s) {with_q}, not by {name!r} ({source})")
    if fmt.quality_file:
        return fmt.convert(obj, arch, quality_obj, source, quality_source, require_quality=require_quality)
    return fmt.convert(obj, arch, quality_obj, source, quality_source)


def load_released(
    path: str | Path,
    format: str = "auto",
    arch: str | None = None,
    trust_checkpoint: bool = False,
    quality_path: str | Path | None = None,
    require_quality: bool = True,
) -> Released:
    """Load a released checkpoint of an original repository strictly into fiqa modules.

    Args:
        path: the file (``181952backbone.pth``, ``magface_epoch_00025.pth``,
            ``adaface_ir101_ms1mv2.ckpt``, EQFace ``backbone.pth``, an arcface_torch ``model.pt``).
        format: ``"auto"`` (detected from key names) or one of ``arcface_torch``, ``crfiqa``,
            ``magface``, ``adaface``, ``eqface``.
        arch: e.g. ``iresnet100``, ``ir101``, ``eqface_resnet100``; inferred from the keys when None.
        trust_checkpoint: allow full unpickling (code execution) for files that need it, e.g.
            Lightning checkpoints holding hyper-parameter objects. Only for files you trust.
        quality_path: EQFace's ``quality.pth`` (its quality branch): required for EQFace, whose
            backbone alone has no quality, unless ``require_quality=False`` (then quality = the norm,
            for a caller that replaces the quality anyway, e.g. ``quality=serfiq``).

    Every checkpoint key must land in exactly one parameter or buffer (or be one of the
    format's dropped classifier keys) and every parameter and buffer must be filled, with equal
    shapes; otherwise :class:`~fiqa.interop.checkpoints.CheckpointMismatchError` lists the
    missing, unexpected and mis-shaped keys.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format={format!r} is not known; choose 'auto' or one of {list(FORMATS)}")
    obj = read_checkpoint(path, trust_checkpoint)
    quality_obj = None if quality_path is None else read_checkpoint(quality_path, trust_checkpoint)
    qsource = None if quality_path is None else str(quality_path)
    released = convert_released(obj, format, arch, quality_obj, str(path), qsource, require_quality)
    if not is_tensor_dict(obj) and isinstance(obj, Mapping):
        released.notes.append(f"top-level keys of the file: {list(obj)[:10]}")
    return released
