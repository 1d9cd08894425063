"""task=pack pack.input=DIR_OR_LIST pack.out_dir=DIR: an image folder or a list file -> train.rec + train.idx.

The keys of ``cfg.pack`` are the arguments of :func:`fiqa.data.pack.pack_dataset` (``conf/pack/default.yaml``);
the same tool is ``python -m fiqa.data.pack``."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from fiqa.data.pack import pack_dataset
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


def run(cfg: DictConfig) -> dict:
    if cfg.get("pack") is None:
        raise ValueError("task=pack needs the pack config group (pack.input=..., pack.out_dir=...)")
    kwargs = OmegaConf.to_container(cfg.pack, resolve=True, throw_on_missing=True)
    summary = pack_dataset(**kwargs)
    log.info(
        f"packed {summary['num_images']} images of {summary['num_classes']} identities ({summary['layout']}) into "
        f"{summary['rec']}: {summary['bytes']} bytes in {summary['seconds']:.1f} s ({summary['images_per_s']} images/s)"
    )
    return summary
