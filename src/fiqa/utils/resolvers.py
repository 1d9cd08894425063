"""Narrow OmegaConf resolvers (never ``eval``), registered once by :func:`register` (main.py does).

They are used by ``conf/hydra/launcher/slurm.yaml`` only, and resolved in the process that submits
the SLURM jobs (the launcher reads its parameters once, before any job runs):

- ``${fiqa.slurm_tasks:${trainer.devices}}``: SLURM tasks per node = processes per node;
- ``${fiqa.slurm_gpus:${trainer.accelerator},${trainer.devices}}``: GPUs per node (null on CPU);
- ``${fiqa.slurm_cpus:${data.num_workers}}``: CPUs per task = loader workers + the training process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

GPU_ACCELERATORS = ("gpu", "cuda")


def device_count(devices: Any) -> int | None:
    """How many processes per node ``trainer.devices`` asks for; None when Lightning decides
    (``auto``, ``-1``: every visible device)."""
    if isinstance(devices, bool):
        raise ValueError(f"trainer.devices={devices!r} is not a device count")
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    if not isinstance(devices, str) and hasattr(devices, "__len__"):  # ListConfig
        return len(devices)
    s = str(devices).strip()
    if s in ("auto", "-1"):
        return None
    if "," in s:  # "0,1" = GPU indices
        return len([p for p in s.split(",") if p.strip()])
    try:
        return int(s)
    except ValueError:
        raise ValueError(
            f"trainer.devices={devices!r} is not a device count (an int, a list of indices or auto)"
        ) from None


def slurm_tasks(devices: Any) -> int:
    n = device_count(devices)
    if n is None or n < 1:
        raise ValueError(
            f"hydra/launcher=slurm needs trainer.devices to be the number of processes per node "
            f"(one SLURM task per device); got trainer.devices={devices!r}: set e.g. trainer.devices=4"
        )
    return n


def slurm_gpus(accelerator: Any, devices: Any) -> int | None:
    return slurm_tasks(devices) if str(accelerator) in GPU_ACCELERATORS else None


def slurm_cpus(num_workers: Any) -> int:
    return int(num_workers or 0) + 1


RESOLVERS = {"fiqa.slurm_tasks": slurm_tasks, "fiqa.slurm_gpus": slurm_gpus, "fiqa.slurm_cpus": slurm_cpus}


def register() -> None:
    """Register the resolvers (idempotent)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
