"""ONNX export of a FaceModule: ``images (B,3,S,S) -> (embedding (B,D), quality (B,))``.

:func:`export_onnx` takes any :class:`~fiqa.methods.base.FaceModule` (a fiqa checkpoint rebuilt by
``task=export``, or a released checkpoint mapped by ``fiqa.interop``), exports it in eval mode and
fp32, checks the file in onnxruntime against PyTorch and writes ``<out>.json`` beside it.

Exporter choice. Both of torch's exporters handle our iresnet backbones (PReLU, BatchNorm in eval,
flatten, dropout in eval, a channels-last input copy) with a dynamic batch axis, and match PyTorch
to ~1e-5 (checked on iresnet_tiny and iresnet50 with torch 2.14). The default is ``dynamo``
(``torch.export`` + onnxscript): it is torch's default exporter since 2.9, present with the same
arguments in torch 2.11, while the TorchScript exporter (``exporter="torchscript"``, i.e.
``dynamo=False``) is deprecated and warns that it will be removed. The TorchScript exporter is
kept as a choice: it is ~10x faster and needs no onnxscript. The dynamo exporter writes opset 18
natively; a lower ``opset`` goes through onnx's version converter (fine for these graphs), and
the opset actually written is read back from the file and reported.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fiqa.data.transforms import COLORS
from fiqa.utils.logging import get_logger

log = get_logger(__name__)

EXPORTERS = ("dynamo", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAMES = ("embedding", "quality")
PIP_HINT = "pip install onnx onnxscript onnxruntime  (or: pip install -e '.[dev]')"


class ExportCheckError(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


def _floats(value: Any, key: str) -> float | tuple[float, ...]:
    if isinstance(value, (int, float)):
        return float(value)
    vals = tuple(float(v) for v in value)
    if len(vals) not in (1, 3):
        raise ValueError(f"{key} must be a number or 3 numbers (one per channel), got {list(vals)}")
    return vals[0] if len(vals) == 1 else vals


@dataclass(frozen=True)
class InputConvention:
    """How a model wants its images: uint8-range pixels in channel order ``color``, ``size`` x ``size``,
    then ``(x - mean) / std`` (numbers, or 3 per channel in the network's channel order)."""

    color: str = "rgb"
    mean: float | tuple[float, ...] = 127.5
    std: float | tuple[float, ...] = 127.5
    size: int = 112

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"input convention: color must be one of {list(COLORS)}, got {self.color!r}")
        object.__setattr__(self, "mean", _floats(self.mean, "input convention mean"))
        object.__setattr__(self, "std", _floats(self.std, "input convention std"))
        object.__setattr__(self, "size", int(self.size))
        if any(s == 0 for s in (self.std if isinstance(self.std, tuple) else (self.std,))):
            raise ValueError(f"input convention: std must be non-zero, got {self.std}")

    @classmethod
    def from_config(cls, cfg: Mapping) -> InputConvention:
        """From a fiqa run config (e.g. the one stored in a checkpoint): ``data.color``,
        ``data.normalize_mean``, ``data.normalize_std`` and ``backbone.input_size``."""
        data, backbone = cfg.get("data") or {}, cfg.get("backbone") or {}
        return cls(
            color=data.get("color", "rgb"),
            mean=data.get("normalize_mean", 127.5),
            std=data.get("normalize_std", 127.5),
            size=backbone.get("input_size", 112) or 112,
        )

    @classmethod
    def coerce(cls, value: InputConvention | Mapping) -> InputConvention:
        if isinstance(value, InputConvention):
            return value
        unknown = set(value) - {"color", "mean", "std", "size"}
        if unknown:
            raise ValueError(f"input convention: unknown keys {sorted(unknown)}; valid: color, mean, std, size")
        return cls(**dict(value))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def _tensor(self, v: float | tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(v if isinstance(v, tuple) else (v,), dtype=torch.float32).view(1, -1, 1, 1)

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8-range float RGB (B,3,H,W) -> the model's input (channel order, then (x - mean) / std)."""
        x = rgb.flip(1) if self.color == "bgr" else rgb
        return (x - self._tensor(self.mean)) / self._tensor(self.std)


class ExportWrapper(nn.Module):
    """``images -> (embedding (B,D), quality (B,))`` as plain fp32 tensors. With ``normalize_input``
    the images are uint8-range float RGB and the convention's channel order and normalisation run
    in the graph; otherwise they are already the model's input."""

    def __init__(self, model: nn.Module, convention: InputConvention, normalize_input: bool = False):
        super().__init__()
        self.model = model
        self.normalize_input = bool(normalize_input)
        self.bgr = convention.color == "bgr"
        self.register_buffer("mean", convention._tensor(convention.mean), persistent=False)
        self.register_buffer("std", convention._tensor(convention.std), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images
        if self.normalize_input:
            if self.bgr:
                x = x.flip(1)
            x = (x - self.mean) / self.std
        out = self.model(x)
        return out.embedding.float(), out.quality.float().reshape(-1)


def require_onnx(exporter: str) -> None:
    """Clear errors for an unknown exporter and for missing packages (optional: the dev extra)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"export.exporter={exporter!r} is not valid; choose one of {list(EXPORTERS)}")
    needed = ("onnx", "onnxscript") if exporter == "dynamo" else ("onnx",)
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(f"ONNX export ({exporter} exporter) needs {', '.join(missing)}: {PIP_HINT}")


def _inference_copy(module: nn.Module) -> nn.Module:
    """A CPU fp32 eval-mode copy; the caller's module is left as it was. The training-only margin
    ``head`` (class centres, e.g. 85k x 512 for MS1MV2: ``forward`` never uses it) and a Lightning
    trainer the module may be attached to are not copied."""
    skip = [getattr(module, "_trainer", None), getattr(module, "head", None)]
    memo = {id(obj): None for obj in skip if obj is not None}
    return copy.deepcopy(module, memo).float().cpu().eval()


def sample_images(n: int, convention: InputConvention, normalize_input: bool, seed: int = 0) -> torch.Tensor:
    """Random uint8-range RGB images, as the exported graph takes them (normalised unless ``normalize_input``)."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (n, 3, convention.size, convention.size), generator=g).float()
    return rgb if normalize_input else convention.normalize(rgb)


@contextlib.contextmanager
def _quiet(names: Sequence[str] = ("onnx_ir", "onnxscript")) -> Iterator[None]:
    """During the export only: onnxscript's optimiser logs every pass at INFO (hundreds of lines
    in a run's console); keep its warnings. The levels are restored afterwards."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(
    wrapper: nn.Module, example: torch.Tensor, out: Path, opset: int, dynamic_batch: bool, exporter: str
) -> None:
    common = {"input_names": [INPUT_NAME], "output_names": list(OUTPUT_NAMES), "opset_version": int(opset)}
    if exporter == "dynamo":
        shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
        torch.onnx.export(
            wrapper,
            (example,),
            str(out),
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
            **common,
        )
    else:
        axes = {n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
        torch.onnx.export(wrapper, (example,), str(out), dynamo=False, dynamic_axes=axes, **common)


def _finish_file(out: Path, metadata: Mapping[str, Any]) -> int:
    """Check the file with onnx's checker, store ``metadata`` in it; returns the opset it holds."""
    import onnx

    model = onnx.load(str(out))
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v if isinstance(v, str) else json.dumps(v))
    onnx.save(model, str(out))
    onnx.checker.check_model(str(out))
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def check_onnxruntime(
    wrapper: nn.Module,
    out: Path,
    convention: InputConvention,
    normalize_input: bool,
    batch_sizes: Sequence[int],
    atol: float,
) -> dict | None:
    """Run the file in onnxruntime and the wrapper in PyTorch on random batches; ``None`` when
    onnxruntime is not installed. Raises :class:`ExportCheckError` above ``atol``."""
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning(f"onnxruntime is not installed: {out} was not checked ({PIP_HINT})")
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    diffs = {name: 0.0 for name in OUTPUT_NAMES}
    for i, n in enumerate(batch_sizes):
        x = sample_images(n, convention, normalize_input, seed=i + 1)
        with torch.no_grad():
            ref = [t.numpy() for t in wrapper(x)]
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        for name, r, g in zip(OUTPUT_NAMES, ref, got):
            if r.shape != g.shape:
                raise ExportCheckError(f"{out}: onnxruntime output {name!r} has shape {g.shape}, PyTorch {r.shape}")
            diffs[name] = max(diffs[name], float(abs(r.astype("float64") - g.astype("float64")).max()))
    result = {
        "max_abs_diff": max(diffs.values()),
        **{f"max_abs_diff_{k}": v for k, v in diffs.items()},
        "check_batch_sizes": list(batch_sizes),
        "atol": float(atol),
        "onnxruntime": ort.__version__,
    }
    if not result["max_abs_diff"] <= atol:  # also catches NaN
        raise ExportCheckError(
            f"{out}: onnxruntime differs from PyTorch by {result['max_abs_diff']:.3g} (embedding "
            f"{diffs['embedding']:.3g}, quality {diffs['quality']:.3g}), more than export.atol={atol:g}. "
            f"Try the other exporter (export.exporter=torchscript|dynamo) or another export.opset."
        )
    return result


def export_onnx(
    module: nn.Module,
    out: str | Path,
    input_convention: InputConvention | Mapping | None,
    opset: int = 17,
    dynamic_batch: bool = True,
    normalize_input: bool = False,
    *,
    batch_size: int = 1,
    exporter: str = "dynamo",
    check: bool = True,
    atol: float = 1e-4,
    source: str | None = None,
) -> dict:
    """Export ``module`` (``forward(images) -> FaceOutput``) to ``out`` and describe it in ``<out>.json``.

    ``input_convention`` (an :class:`InputConvention` or a dict of its fields; ``None``: the module's
    ``input_convention`` attribute, set by ``fiqa.methods.loading.load_model``) is recorded, and applied
    in the graph with ``normalize_input``.
    Input ``images`` (B,3,S,S) float: the model's input (``input_convention`` applied by the caller),
    or with ``normalize_input`` uint8-range RGB with the convention in the graph. Outputs
    ``embedding`` (B,D) and ``quality`` (B,). The batch axis is dynamic unless ``dynamic_batch`` is
    false (then it is ``batch_size``). With ``check`` (and onnxruntime installed) the file is run
    against PyTorch and must match to ``atol``. Returns the dict written to ``<out>.json``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"export.batch_size must be >= 1, got {batch_size}")
    require_onnx(exporter)
    if input_convention is None:
        input_convention = getattr(module, "input_convention", None) or {}
    convention = InputConvention.coerce(input_convention)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(_inference_copy(module), convention, normalize_input).eval()
    # a dynamic axis is traced with batch 2 (torch.export specialises sizes 0 and 1)
    example = sample_images(2 if dynamic_batch else int(batch_size), convention, normalize_input)
    with torch.no_grad():
        dim = wrapper(example)[0].shape[1]
    batch = "batch" if dynamic_batch else int(batch_size)
    info: dict[str, Any] = {
        "file": out.name,
        "source": None if source is None else str(source),
        "input_name": INPUT_NAME,
        "input_shape": [batch, 3, convention.size, convention.size],
        "normalize_input": bool(normalize_input),
        "input": (
            "float32 RGB in [0, 255]; the graph applies the channel order and (x - mean) / std"
            if normalize_input
            else "float32, already in the channel order `color` and normalised as (x - mean) / std"
        ),
        **convention.to_dict(),
        "output_names": list(OUTPUT_NAMES),
        "output_shapes": {"embedding": [batch, int(dim)], "quality": [batch]},
        "dynamic_batch": bool(dynamic_batch),
        "exporter": exporter,
        "torch": torch.__version__,
    }
    t0 = time.perf_counter()
    with _quiet():
        _export(wrapper, example, out, opset, dynamic_batch, exporter)
    info["opset"] = _finish_file(out, {"fiqa": {k: v for k, v in info.items() if k != "torch"}})
    log.info(f"exported {out} ({exporter} exporter, opset {info['opset']}) in {time.perf_counter() - t0:.1f} s")
    if info["opset"] != int(opset):
        log.warning(f"{out} holds opset {info['opset']}, not the requested export.opset={opset}")
    checked = None
    if check:
        sizes = (1, 3) if dynamic_batch else (int(batch_size),)
        checked = check_onnxruntime(wrapper, out, convention, normalize_input, sizes, atol)
    info.update(checked or {"max_abs_diff": None})
    if checked:
        log.info(f"onnxruntime matches PyTorch: max abs difference {checked['max_abs_diff']:.3g} (atol {atol:g})")
    Path(f"{out}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
