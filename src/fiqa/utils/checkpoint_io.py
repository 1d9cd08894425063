"""Checkpoint files that survive crashes: atomic writes, clear errors on write and on load.

:class:`SafeCheckpointIO` is the Trainer's ``CheckpointIO`` plugin on every run (``fiqa.tasks.build``):

- **atomic**: a checkpoint is written to a temporary file in the same directory, flushed, ``fsync``-ed and
  renamed over the target (``os.replace``), so a process killed during the write, a full disk or a quota
  leaves the previous checkpoint whole and loadable; the temporary file is removed on failure;
- **streamed**: ``torch.save`` writes straight into the file (Lightning's own writer first serialises the
  whole checkpoint into memory, a second copy of a 1-2 GB paper-scale checkpoint);
- **one clear error** when the write fails (:class:`CheckpointWriteError`, naming the path, the reason
  and that the previous file is untouched) and when a checkpoint cannot be read
  (:func:`load_training_checkpoint`: missing, truncated, not a torch file, needing full unpickling, or
  not a training checkpoint), never a raw traceback from deep inside torch;
- **safe**: loads with ``weights_only=True`` (no code execution) unless ``trust_checkpoint=true``.

Remote paths (``s3://`` ...) go to Lightning's own writer unchanged.
"""

from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

#: keys every checkpoint Lightning writes for resuming holds
TRAINING_KEYS = ("state_dict", "loops", "optimizer_states", "global_step", "epoch")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous file at the path is untouched."""


class CheckpointReadError(ValueError):
    """A checkpoint file cannot be used: the message says which file and what is wrong."""


def _is_local(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" not in s or s.startswith("file://")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Writer:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write: torch's zip writer reports
    it only as "unexpected pos ...", without the reason (a full disk, a quota, a size limit)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file renamed into place (see the module docstring)."""
    target = Path(str(path).removeprefix("file://"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointWriteError(f"cannot create the checkpoint directory {target.parent}: {err}") from err
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            torch.save(obj, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as caught:
        err = writer.error if writer is not None and writer.error is not None else caught
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(err, (OSError, RuntimeError)):
            raise
        code = getattr(err, "errno", None)
        if code is None and "No space left" in str(err):
            code = errno.ENOSPC
        kept = f"the previous {target.name} is untouched" if target.exists() else "no earlier file was there"
        hint = {
            errno.ENOSPC: f"the disk holding {target.parent} is full: free space there",
            errno.EDQUOT: f"the disk quota for {target.parent} is exhausted: free space there",
            errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
            errno.EACCES: f"no permission to write in {target.parent}",
        }.get(code, "check the file system")
        failure = CheckpointWriteError(
            f"cannot write the checkpoint {target}: {err} ({hint}); {kept}, so a resume from it still works"
        )
        failure.errno = code
        raise failure from err
    _fsync_dir(target.parent)


def describe_load_error(path: str | os.PathLike, err: BaseException, key: str, weights_only: bool) -> str:
    """What is wrong with checkpoint ``path`` given as config key ``key``, in words."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and weights_only or "Weights only load failed" in text:
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return (
            f"{key}={str(path)!r} cannot be loaded safely (weights_only=True refuses the Python objects pickled in "
            f"it: {first}). Load it with trust_checkpoint=true only if you trust where it comes from: full "
            f"unpickling can run any code."
        )
    size = Path(path).stat().st_size if Path(path).is_file() else None
    if isinstance(err, (zipfile.BadZipFile, EOFError)) or any(
        s in text for s in ("central directory", "failed reading zip", "file_size", "PytorchStreamReader", "EOF")
    ):
        return (
            f"{key}={str(path)!r} is truncated or corrupt ({size} bytes; torch says: {text.splitlines()[0]}). "
            f"A write was probably cut off: use an earlier checkpoint of the run (checkpoints/), or the last "
            f"complete one another machine holds."
        )
    if isinstance(err, pickle.UnpicklingError) or "invalid load key" in text:
        return f"{key}={str(path)!r} is not a torch checkpoint ({size} bytes; {text.splitlines()[0]})"
    return f"{key}={str(path)!r} cannot be read: {type(err).__name__}: {text.splitlines()[0] if text else ''}"


def load_checkpoint_file(
    path: str | os.PathLike,
    key: str = "ckpt_path",
    trust_checkpoint: bool = False,
    mmap: bool = False,
    map_location="cpu",
) -> Any:
    """``torch.load`` with ``weights_only=not trust_checkpoint`` and a :class:`CheckpointReadError` naming
    ``key`` and the file for every way it can fail."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{key}={str(path)!r}: no such file (give the path of a .ckpt, e.g. "
            f"logs/train/runs/<time>/checkpoints/last.ckpt)"
        )
    try:
        return torch.load(p, map_location=map_location, weights_only=not trust_checkpoint, mmap=mmap)
    except Exception as err:
        # from None: the message says what torch said; its frames from deep inside torch help nobody
        raise CheckpointReadError(describe_load_error(p, err, key, not trust_checkpoint)) from None


def check_training_checkpoint(path: str | os.PathLike, trust_checkpoint: bool = False) -> dict:
    """Open ``ckpt_path`` of ``task=train`` cheaply (memory-mapped) and check that it can resume a run;
    returns its small entries (step, epoch, the resume state) for the log."""
    ckpt = load_checkpoint_file(path, "ckpt_path", trust_checkpoint, mmap=True)
    if not isinstance(ckpt, dict):
        raise CheckpointReadError(f"ckpt_path={str(path)!r} holds a {type(ckpt).__name__}, not a checkpoint dict")
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise CheckpointReadError(
            f"ckpt_path={str(path)!r} cannot resume training: it lacks {missing} (a weights-only or released "
            f"model?). To start a new run from its weights use init_ckpt={path} instead."
        )
    return {k: ckpt.get(k) for k in ("global_step", "epoch")}


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, streamed local writes and clear read errors (see the module docstring)."""

    def __init__(self, trust_checkpoint: bool = False, key: str = "ckpt_path"):
        super().__init__()
        self.trust_checkpoint, self.key = bool(trust_checkpoint), key

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None):
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        safe = not self.trust_checkpoint if weights_only is None else bool(weights_only)
        return load_checkpoint_file(path, self.key, not safe, map_location=map_location)
