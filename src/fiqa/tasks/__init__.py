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


def _serial_opencv_in_this_process() -> None:
    """No OpenCV thread pool in the process that forks DataLoader workers.

    A pool that exists at ``fork`` is inherited without its threads: a worker that then touches it
    (``cv2.setNumThreads`` in the worker init, any parallel cv2 call) waits forever on its condition
    variables. Any cv2 work done in this process before a loader forks (a label pass, an embedding pass
    or decoding with ``data.num_workers=0``) would create one, so it runs serially here; the loader's
    workers are the parallelism (one OpenCV thread each, ``fiqa.data.datamodule._worker_init``)."""
    import cv2

    cv2.setNumThreads(1)


def run(cfg: DictConfig):
    """Dispatch on ``cfg.task``."""
    _serial_opencv_in_this_process()
    tasks = _tasks()
    if cfg.get("task") not in tasks:
        raise ValueError(f"task={cfg.get('task')!r} is not a task; valid choices: {sorted(tasks)}")
    return tasks[cfg.task](cfg)
