"""The datamodule from a ``data`` config node (every task builds its data this way)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fiqa.data.datamodule import FaceDataModule
from fiqa.utils.instantiate import instantiate_plain

__all__ = ["DATA_SOURCE_KEYS", "build_datamodule"]


#: Keys of a ``data`` node that say where the data is; the reader takes them by interpolation.
DATA_SOURCE_KEYS = ("root", "list", "list_root", "num_images")


def _plain(node: DictConfig, key: str) -> Any:
    v = node[key]  # resolved in the context of the whole config
    return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v


def build_datamodule(
    data_cfg: DictConfig, val_datasets: Mapping[str, Any], with_train: bool = True, augment_cfg: Any = None
) -> FaceDataModule:
    """The datamodule; the training reader only ``with_train`` (an eval never needs ``data.root``)."""
    kwargs = {k: _plain(data_cfg, k) for k in data_cfg if k not in DATA_SOURCE_KEYS and k != "train"}
    train = instantiate_plain(_plain(data_cfg, "train")) if with_train and data_cfg.get("train") else None
    augment = None
    if with_train and isinstance(augment_cfg, DictConfig) and "_target_" in augment_cfg:
        augment = instantiate_plain(augment_cfg)
    return instantiate_plain(kwargs, train=train, val_sets=dict(val_datasets), augment=augment)
