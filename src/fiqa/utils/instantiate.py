"""Hydra instantiation helpers every floor uses (config nodes -> objects)."""

from __future__ import annotations

from collections.abc import Mapping

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

__all__ = ["instantiate_plain", "instantiate_values"]


def instantiate_plain(node, **kwargs):
    """``hydra.utils.instantiate`` that re-raises our own errors (bad paths, sizes, files) as they are,
    not wrapped in an InstantiationException, so the message a user reads is the one we wrote."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, OSError, KeyError)) and not isinstance(cause, InstantiationException):
            raise cause from None
        raise


def instantiate_values(node: Mapping | None) -> dict:
    """``{key: instantiate(value) if it has a _target_ else value}`` for a config node."""
    out = {}
    for k, v in (node or {}).items():
        out[k] = (
            instantiate(v)
            if isinstance(v, DictConfig) and "_target_" in v
            else (OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v)
        )
    return out
