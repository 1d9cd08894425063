"""Tasks: each a function of the composed config alone."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig


def _tasks() -> dict[str, Callable]:
    from fiqa.tasks.align import align
    from fiqa.tasks.benchmark import benchmark
    from fiqa.tasks.compare import compare
    from fiqa.tasks.eval import evaluate
    from fiqa.tasks.export import run as export
    from fiqa.tasks.pack import run as pack
    from fiqa.tasks.quality import quality
    from fiqa.tasks.train import train

    return {
        "align": align,
        "train": train,
        "eval": evaluate,
        "pack": pack,
        "quality": quality,
        "compare": compare,
        "benchmark": benchmark,
        "export": export,
    }


def run(cfg: DictConfig):
    """Dispatch on ``cfg.task``."""
    tasks = _tasks()
    if cfg.get("task") not in tasks:
        raise ValueError(f"task={cfg.get('task')!r} is not a task; valid choices: {sorted(tasks)}")
    return tasks[cfg.task](cfg)
