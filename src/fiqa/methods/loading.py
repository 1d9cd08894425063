"""A method from a config (``build_method``) or from a checkpoint file (``load_model``): fiqa's own
checkpoints are rebuilt from the config stored in them, the originals' released files through
:mod:`fiqa.interop` into a :class:`~fiqa.methods.released.ReleasedModel`."""

from __future__ import annotations

from collections.abc import Mapping

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fiqa.callbacks.store_config import CONFIG_KEY
from fiqa.interop import load_released
from fiqa.methods.base import FaceModule
from fiqa.methods.released import to_face_module
from fiqa.utils.checkpoint_io import load_checkpoint_file
from fiqa.utils.instantiate import instantiate_values
from fiqa.utils.logging import get_logger

__all__ = ["build_method", "input_convention", "is_fiqa_checkpoint", "load_checkpoint", "load_model"]

log = get_logger(__name__)


def build_method(cfg: DictConfig, val_view: Mapping[str, Mapping]) -> FaceModule:
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.head) if cfg.get("head") else None
    optim = instantiate_values(cfg.get("optim"))
    method = instantiate(cfg.method, backbone=backbone, head=head, optim=optim, val_sets=dict(val_view))
    method.input_convention = input_convention(cfg.data)
    return method


def load_checkpoint(path: str, trust_checkpoint: bool = False, key: str = "ckpt_path") -> dict:
    """A checkpoint loaded with ``weights_only=True`` (no code execution); errors name ``key`` and the file
    and say what is wrong (missing, truncated, unsafe, not a torch file)."""
    return load_checkpoint_file(path, key, trust_checkpoint)


def is_fiqa_checkpoint(ckpt: Mapping) -> bool:
    return isinstance(ckpt, Mapping) and CONFIG_KEY in ckpt and "state_dict" in ckpt


def input_convention(data_cfg: Mapping) -> dict:
    """What the network is fed: ``{"color", "mean", "std"}`` from a data config."""
    return {
        "color": data_cfg.get("color", "rgb"),
        "mean": float(data_cfg.get("normalize_mean", 127.5)),
        "std": float(data_cfg.get("normalize_std", 127.5)),
    }


def load_model(
    path: str,
    val_view: Mapping[str, Mapping] | None = None,
    trust_checkpoint: bool = False,
    ckpt_format: str = "auto",
    quality_path: str | None = None,
    arch: str | None = None,
    require_quality: bool = True,
    key: str = "ckpt_path",
) -> FaceModule:
    """A model from a checkpoint, ready for evaluation or scoring, with ``input_convention`` set.

    A fiqa checkpoint is rebuilt from the config stored in it; anything else is an original's released
    checkpoint, loaded strictly through :func:`fiqa.interop.load_released` (``ckpt_format``).
    ``require_quality=False`` (another quality source replaces the model's) lets a two-file release
    (EQFace) load from its backbone alone."""
    ckpt = load_checkpoint(path, trust_checkpoint, key) if ckpt_format in ("auto", "fiqa") else None
    if ckpt is not None and is_fiqa_checkpoint(ckpt):
        train_cfg = OmegaConf.create(ckpt[CONFIG_KEY])
        method = build_method(train_cfg, val_view or {})
        method.load_state_dict(ckpt["state_dict"], strict=True)
        method.iso_scale = ckpt.get("fiqa_iso_scale")
        method.source_config = train_cfg
        return method
    if ckpt_format == "fiqa":
        raise ValueError(f"{key}={path!r} holds no '{CONFIG_KEY}': it was not written by fiqa's task=train")
    released = load_released(
        path,
        format=ckpt_format,
        arch=arch,
        trust_checkpoint=trust_checkpoint,
        quality_path=quality_path,
        require_quality=require_quality,
    )
    method = to_face_module(released)  # carries its input convention (ReleasedModel)
    method.val_sets = dict(val_view or {})
    method.source_config = None
    log.info(f"loaded a released {released.format} checkpoint ({released.arch}) from {path}")
    return method
