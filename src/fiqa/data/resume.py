"""A training data order that a resumed run continues exactly.

A plain ``DataLoader(shuffle=True)`` (or Lightning's ``DistributedSampler``) starts an epoch's order
again after a mid-epoch resume: some batches are trained twice, others never. Here:

- :class:`EpochSampler` draws the epoch's permutation from ``(seed, epoch)`` alone, shards it over the
  ranks (rank ``r`` of ``w`` takes positions ``r, r + w, ...``, as ``DistributedSampler`` does), and can
  start an epoch at a given batch. It yields ``(epoch, index)`` keys, so
  :class:`fiqa.data.datamodule.FaceDataset` seeds each sample's augmentation from ``(seed, epoch, index)``:
  the same sample gets the same augmentation whatever the worker, the number of workers or a resume;
- :class:`ResumableLoader` is a ``DataLoader`` with Lightning's ``state_dict`` / ``load_state_dict``
  interface: Lightning stores its state in every checkpoint (``loops.fit_loop.state_dict.combined_loader``)
  and hands it back before the resumed epoch's iterator is created. The state is the epoch and the number
  of batches the training loop has *processed* in it (asked from the trainer, because the loader's own
  iterator runs ahead: worker prefetch, Lightning's one-batch lookahead). Its own ``generator`` keeps
  the worker base seeds off the global torch generator, so creating an iterator (once per epoch, once more
  on a resume) leaves the model's random stream (dropout, Partial FC sampling) where it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fiqa.utils.logging import get_logger

log = get_logger(__name__)

STATE_VERSION = 1


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` samples in ``epoch``: a function of ``(seed, epoch)`` alone."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x5A3D]).permutation(n)


class EpochSampler(DistributedSampler):
    """Shuffled, sharded, drop-last training order that can start an epoch at batch ``k``.

    A ``DistributedSampler`` subclass so that Lightning keeps it as it is under DDP (it replaces any other
    sampler by its own). Each rank gets ``len(dataset) // world`` samples an epoch; the loader drops the
    last incomplete batch."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed), drop_last=True)
        self.batch_size = int(batch_size)
        self.start_batch = 0  # batches of the current epoch to pass over (set by a resume, used once)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.start_batch = 0  # a resume position belongs to the epoch it was saved in
        super().set_epoch(int(epoch))

    def resume_at(self, epoch: int, batch: int) -> None:
        self.epoch, self.start_batch = int(epoch), int(batch)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n, w = len(self.dataset), self.num_replicas
        order = epoch_permutation(n, self.seed, self.epoch)[: (n // w) * w]
        mine = order[self.rank :: w]
        start, self.start_batch = self.start_batch * self.batch_size, 0
        epoch = self.epoch
        for i in mine[start:].tolist():
            yield (epoch, i)

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` whose position Lightning saves and restores.

    ``progress``: ``() -> training batches processed in the sampler's current epoch`` (from the trainer),
    set by :class:`fiqa.data.datamodule.FaceDataModule` (None: the loader reports no state). The epoch is
    the sampler's own (the one it last iterated), so a checkpoint written after an epoch ended, when the
    trainer's epoch counter has moved on, still names the epoch its batch count belongs to."""

    progress: Callable[[], int] | None = None

    def state_dict(self) -> dict:
        sampler = self.sampler
        if self.progress is None or not isinstance(sampler, EpochSampler):
            return {}
        epoch, done = sampler.epoch, self.progress()
        return {
            "version": STATE_VERSION,
            "epoch": int(epoch),
            "batches_done": int(done),
            "batch_size": sampler.batch_size,
            "world_size": sampler.num_replicas,
            "seed": sampler.seed,
            "num_samples": len(sampler.dataset),
        }

    def load_state_dict(self, state: dict) -> None:
        sampler = self.sampler
        if not state or not isinstance(sampler, EpochSampler):
            return
        differs = {
            k: (state.get(k), now)
            for k, now in (
                ("batch_size", sampler.batch_size),
                ("world_size", sampler.num_replicas),
                ("seed", sampler.seed),
                ("num_samples", len(sampler.dataset)),
            )
            if state.get(k) != now
        }
        epoch, done = int(state.get("epoch", 0)), int(state.get("batches_done", 0))
        if done >= sampler.batches_per_epoch:  # saved at the end of an epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        sampler.resume_at(epoch, done)
        if state == getattr(self, "_loaded", None):  # given again (fiqa.callbacks.resume.ResumeData): said once
            return
        self._loaded = dict(state)
        if differs:
            said = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differs.items())
            log.warning(
                f"resume: the training data order differs from the interrupted run's ({said}); the run continues "
                f"at epoch {epoch} batch {done} of the new order, so the rest of that epoch is not exactly the "
                f"samples the interrupted run had left"
            )
        if done:
            log.info(
                f"resume: epoch {epoch} continues at batch {done} of {sampler.batches_per_epoch} (the same "
                f"samples, order and augmentations as the interrupted run)"
            )


def torch_generator(seed: int) -> torch.Generator:
    """The loader's own generator (worker base seeds), seeded from the run seed."""
    return torch.Generator().manual_seed(int(seed) & 0xFFFFFFFFFFFF)
