"""Crash-safe training: the resume checkpoint, the random states in it, and SLURM preemption.

- :class:`LastCheckpoint` writes ``checkpoints/last.ckpt`` every ``every_minutes`` of training (30 by
  default) or every ``every_n_train_steps`` steps, at the end of every epoch (after its validation) and when
  training ends, atomically (``fiqa.utils.checkpoint_io``). It is the file ``ckpt_path=last`` resumes; the
  "best" checkpoint (``callbacks.model_checkpoint``, Lightning's ``ModelCheckpoint``) is kept apart and
  written at validation ends only.
- :class:`RngStates` stores every rank's random states (torch CPU and CUDA, numpy, python) in the
  checkpoint and puts them back when a resumed run starts training, so dropout, Partial FC's sampling or a
  ViT's token masking draw what the interrupted run would have drawn. (The data order and augmentations
  do not depend on them: ``fiqa.data.resume``.)
- :class:`Preemption` turns SLURM's warning signal (``SIGUSR1``, the one Lightning uses:
  ``#SBATCH --signal=SIGUSR1@90``) into a checkpoint at the end of the current step, ``scontrol requeue``
  of the job, and a clean stop. Lightning's own handler saves from inside the signal handler, at any point
  of a step (and runs collectives there under DDP); here the handler only raises a flag, which the ranks
  agree on at the next step end.
"""

from __future__ import annotations

import os
import random
import re
import signal as _signal
import subprocess
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from fiqa.utils.logging import get_logger

log = get_logger(__name__)
log_all = get_logger(__name__, rank_zero_only=False)

LAST = "last.ckpt"


def _distributed(trainer) -> bool:
    import torch.distributed as dist

    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


class LastCheckpoint(Checkpoint):
    """``<dirpath>/last.ckpt``: the whole training state, for resuming.

    Args:
        dirpath: the run's ``checkpoints/`` directory.
        every_minutes: write it after every this many minutes of training (rank 0's clock, broadcast);
            null: not by time.
        every_n_train_steps: write it every this many optimizer steps; null: not by steps. Both may be set.
        filename: the file name (``last.ckpt``).
    """

    def __init__(
        self,
        dirpath: str,
        every_minutes: float | None = 30.0,
        every_n_train_steps: int | None = None,
        filename: str = LAST,
    ):
        if every_minutes is not None and not float(every_minutes) > 0:
            raise ValueError(f"callbacks.last_checkpoint.every_minutes={every_minutes}: must be > 0 or null")
        if every_n_train_steps is not None and int(every_n_train_steps) < 1:
            raise ValueError(
                f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps}: must be >= 1 or null"
            )
        self.dirpath = Path(dirpath)
        self.every_s = None if every_minutes is None else 60.0 * float(every_minutes)
        self.every_n = None if every_n_train_steps is None else int(every_n_train_steps)
        self.filename = filename
        self.last_saved_step: int | None = None
        self._timer = time.monotonic()
        self.saves: list[float] = []  # seconds per save, for the log

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    @property
    def state_key(self) -> str:
        return f"LastCheckpoint[{self.filename}]"

    def _skip(self, trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self.last_saved_step == trainer.global_step
        )

    def save(self, trainer, why: str) -> None:
        """Write the checkpoint (every rank calls this: the state of all ranks goes into it)."""
        t0 = time.perf_counter()
        trainer.save_checkpoint(str(self.path))
        dt = time.perf_counter() - t0
        self.saves.append(dt)
        self.last_saved_step = trainer.global_step
        self._timer = time.monotonic()
        log.info(f"{why}: step {trainer.global_step} saved to {self.path} in {dt:.1f} s")

    def on_train_start(self, trainer, pl_module) -> None:
        self._timer = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._skip(trainer):
            return
        due_steps = self.every_n is not None and trainer.global_step % self.every_n == 0
        due_time = False
        if self.every_s is not None:
            due_time = time.monotonic() - self._timer >= self.every_s
            if _distributed(trainer):
                due_time = bool(trainer.strategy.broadcast(due_time))
        if due_steps or due_time:
            self.save(trainer, f"checkpoint every {self.every_n} steps" if due_steps else "timed checkpoint")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._skip(trainer):
            self.save(trainer, f"end of epoch {trainer.current_epoch}")

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._skip(trainer):
            self.save(trainer, "end of training")
        if self.saves and trainer.is_global_zero:
            log.info(
                f"{len(self.saves)} resume checkpoint(s) written, {np.mean(self.saves):.2f} s each on average "
                f"({sum(self.saves):.1f} s in all)"
            )

    def state_dict(self) -> dict:
        return {"last_saved_step": self.last_saved_step, "dirpath": str(self.dirpath)}

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # nothing to carry: the step counter restarts with the resumed trainer


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (the "best" file, at validation ends), except that a resume into
    another run dir does not carry the interrupted run's best path: Lightning keeps ``best_model_path``
    pointing into the old directory, so the final evaluation of ``task=train`` would load a file of another
    run (or one that is gone). Here the new run's best is chosen among its own validations."""

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old is not None and self.dirpath is not None and os.path.realpath(old) != os.path.realpath(self.dirpath):
            best = state_dict.get("best_model_path")
            log.info(
                f"resume into a new run dir: the interrupted run's best checkpoint ({best}, "
                f"{self.monitor}={_score(state_dict.get('best_model_score'))}) stays in {old}; this run's best is "
                f"chosen among its own validations"
            )
            return
        super().load_state_dict(state_dict)


def _score(v) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def _collect_rng() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _plain_rng(state: dict) -> dict:
    """Random states as checkpoint-safe values (tensors, lists, ints: ``weights_only`` loads them)."""
    np_state = state["numpy"]
    py = state["python"]
    out = {
        "torch": state["torch"],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), *map(_num, np_state[2:])],
        "python": [py[0], list(py[1]), py[2]],
    }
    if "cuda" in state:
        out["cuda"] = state["cuda"]
    return out


def _num(v):
    return float(v) if isinstance(v, float) else int(v)


def _from_plain(state: dict) -> dict:
    n = state["numpy"]
    py = state["python"]
    out = {
        "torch": state["torch"],
        "numpy": (n[0], np.asarray(n[1].numpy(), dtype=np.uint32), int(n[2]), int(n[3]), float(n[4])),
        "python": (int(py[0]), tuple(int(x) for x in py[1]), py[2]),
    }
    if "cuda" in state:
        out["cuda"] = state["cuda"]
    return out


class RngStates(L.Callback):
    """Every rank's random states in the checkpoint (``{"world_size", "ranks": [state of rank 0, ...]}``),
    restored on each rank when the resumed run starts training."""

    def __init__(self):
        self._to_restore: dict | None = None

    @property
    def state_key(self) -> str:
        return "RngStates"

    def state_dict(self) -> dict:
        mine = _plain_rng(_collect_rng())
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks: list = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        return {"world_size": len(ranks), "ranks": ranks}

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        saved, self._to_restore = self._to_restore, None
        if not saved or not saved.get("ranks"):
            return
        ranks, rank = saved["ranks"], trainer.global_rank
        if len(ranks) != trainer.world_size:
            log.warning(
                f"resume: the interrupted run had {len(ranks)} process(es), this one {trainer.world_size}: the "
                f"random states (dropout, Partial FC sampling) are not restored, so the losses differ from an "
                f"uninterrupted run's (the data order is restored as far as the new world size allows)"
            )
            return
        _set_rng(_from_plain(ranks[rank]))
        if trainer.is_global_zero:
            exact = "exactly, on CPU"
            if trainer.strategy.root_device.type == "cuda":
                exact = (
                    "exactly up to the GPU's own nondeterminism (cuDNN autotuning, atomic adds: "
                    "trainer.deterministic=true removes most of it, at a cost)"
                )
            log.info(
                f"resume: random states of {len(ranks)} rank(s) restored; the run continues {exact} as it "
                f"would have without the interruption"
            )


class ResumeData(L.Callback):
    """Puts the training loader at the saved position when a run resumes, whatever Lightning's order.

    Lightning hands a stateful loader its state before creating the epoch's iterator, except when the
    loader was set up earlier: ``trainer.estimated_stepping_batches`` (which a step-wise LR schedule asks
    for in ``configure_optimizers``) sets up the data, and creates its iterator, before the checkpoint is
    restored, so the state is never given and the resumed epoch would start over. Here the state is read
    from the checkpoint, given to the loader (:class:`fiqa.data.resume.ResumableLoader`) when training
    starts, and the iterator is made again from it."""

    def __init__(self):
        self._states: list | None = None

    @property
    def state_key(self) -> str:
        return "ResumeData"

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        loops = checkpoint.get("loops") or {}
        self._states = ((loops.get("fit_loop") or {}).get("state_dict") or {}).get("combined_loader")

    def on_train_start(self, trainer, pl_module) -> None:
        from fiqa.data.resume import ResumableLoader

        states, self._states = self._states, None
        loader = trainer.train_dataloader
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if not states or not isinstance(loader, ResumableLoader) or fetcher is None:
            if states is None and trainer.fit_loop.restarting and not isinstance(loader, ResumableLoader):
                log.warning(
                    f"resume: the training loader ({type(loader).__name__}) cannot continue the interrupted "
                    f"epoch's order: the rest of that epoch is not the samples the interrupted run had left"
                )
            return
        loader.load_state_dict(states[0])
        iter(fetcher)  # the epoch's iterator again, from the restored position


SIGNALS = {"SIGUSR1": _signal.SIGUSR1, "SIGUSR2": _signal.SIGUSR2, "SIGTERM": _signal.SIGTERM}


class Preemption(L.Callback):
    """A checkpoint at the next step end, a requeue and a clean stop when ``signal`` arrives.

    Args:
        signal: the signal SLURM sends before it stops the job (``#SBATCH --signal=SIGUSR1@90``).
        requeue: ``auto`` (``scontrol requeue $SLURM_JOB_ID`` when the job runs under SLURM), true, false.
    """

    def __init__(self, signal: str = "SIGUSR1", requeue: str | bool = "auto"):
        if str(signal) not in SIGNALS:
            raise ValueError(f"callbacks.preemption.signal={signal!r} is not valid; choose one of {list(SIGNALS)}")
        if requeue not in ("auto", True, False):
            raise ValueError(f"callbacks.preemption.requeue={requeue!r} is not valid; choose auto, true or false")
        self.signum = SIGNALS[str(signal)]
        self.requeue = requeue
        self.requested = False
        self.preempted = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.requested = True  # no I/O here: the step end does the work

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = _signal.signal(self.signum, self._handler)  # replaces Lightning's SLURM handler

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            _signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        flag = self.requested
        if _distributed(trainer):
            t = torch.tensor([1.0 if flag else 0.0], device=pl_module.device)
            flag = bool(trainer.strategy.reduce(t, reduce_op="sum").item() > 0)
        if not flag or self.preempted:
            return
        self.preempted = True
        name = _signal.Signals(self.signum).name
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if last is not None:
            if last.last_saved_step != trainer.global_step:
                last.save(trainer, f"{name}: preemption checkpoint")
            where = last.path
        else:
            where = Path(trainer.default_root_dir) / "checkpoints" / LAST
            trainer.save_checkpoint(str(where))
        trainer.should_stop = True
        if trainer.is_global_zero:
            self._requeue()
            log.warning(
                f"{name} received: step {trainer.global_step} saved to {where}; training stops here. Resume with "
                f"ckpt_path=last (same FIQA_RUN_ID) or ckpt_path={where}"
            )

    def _requeue(self) -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if self.requeue is False or (self.requeue == "auto" and not job):
            return
        if not job or not re.fullmatch(r"[0-9_]+", job):
            log.warning(f"callbacks.preemption.requeue: no valid SLURM job id ({job!r}); the job is not requeued")
            return
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning(
                f"scontrol requeue {job} failed ({err}); requeue the job by hand and resume with ckpt_path=last"
            )
            return
        if done.returncode == 0:
            log.info(f"SLURM job {job} requeued (scontrol requeue {job})")
        else:
            log.warning(f"scontrol requeue {job} exited {done.returncode}: {done.stderr.strip()}")
