"""FaceDataModule: a training reader, named validation sets, one global batch size."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fiqa.data.images import ImageDecodeError
from fiqa.data.recordio import RecordIOError
from fiqa.data.resume import EpochSampler, ResumableLoader, torch_generator
from fiqa.data.transforms import Compose, RandomHorizontalFlip, ToModelInput
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


#: What ``data.skip_corrupt`` skips: damaged records and undecodable images (never a missing file).
CORRUPT_ERRORS = (RecordIOError, ImageDecodeError)


class FaceDataset(Dataset):
    """Reader + transform -> dict samples. Every sample carries its index, so validation can
    drop the duplicates a DistributedSampler pads with.

    ``skip_corrupt`` (training only): a damaged record or undecodable image is replaced by the next
    readable sample (deterministic), its error logged, and the sample's ``skipped`` field counts the
    records passed over, which :class:`fiqa.callbacks.corrupt.CorruptRecords` sums per epoch."""

    MAX_CONSECUTIVE_CORRUPT = 100

    def __init__(self, reader, transform, skip_corrupt: bool = False, seed: int | None = None):
        self.reader, self.transform, self.skip_corrupt = reader, transform, bool(skip_corrupt)
        self.seed = seed
        self._rng, self._rng_pid = None, None

    def rng(self) -> np.random.Generator:
        """This process's generator for the transforms, seeded from ``torch.initial_seed()`` (set
        per DataLoader worker from the run seed, rank and worker id; the run seed in the main process)."""
        if self._rng is None or self._rng_pid != os.getpid():
            self._rng, self._rng_pid = np.random.default_rng(torch.initial_seed()), os.getpid()
        return self._rng

    def __len__(self) -> int:
        return len(self.reader)

    def _read(self, i: int):
        if not self.skip_corrupt:
            return self.reader[i], 0
        n = len(self.reader)
        for skipped in range(min(self.MAX_CONSECUTIVE_CORRUPT, n)):
            j = (i + skipped) % n
            try:
                return self.reader[j], skipped
            except CORRUPT_ERRORS as err:
                log.warning(f"data.skip_corrupt: skipping training sample {j}: {err}")
        raise RuntimeError(
            f"data.skip_corrupt: {min(self.MAX_CONSECUTIVE_CORRUPT, n)} consecutive training samples from {i} "
            f"are unreadable; the data set is damaged beyond skipping"
        )

    def sample_rng(self, epoch: int, i: int) -> np.random.Generator:
        """The generator of sample ``i``'s transforms in ``epoch``: a function of ``(seed, epoch, i)``, so a
        resumed run, another worker count or another rank draws the same augmentation for it."""
        return np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch), int(i), 0xA6])

    def __getitem__(self, key) -> dict:
        """``key``: an index, or ``(epoch, index)`` from :class:`fiqa.data.resume.EpochSampler` (training)."""
        if isinstance(key, (tuple, list)):
            epoch, i = int(key[0]), int(key[1])
            rng = self.sample_rng(epoch, i) if self.seed is not None else self.rng()
        else:
            i, rng = int(key), self.rng()
        (img, label, meta), skipped = self._read(i)
        x = self.transform(img, rng)
        return {
            **(x if isinstance(x, dict) else {"image": x}),  # a MultiView transform gives {name: view}
            # plain scalars: default_collate makes one int64 / float32 tensor per batch (cheaper than one per sample)
            "label": int(label),
            "index": int(meta.get("index", i)),
            "degradation": np.float32(meta.get("degradation", np.nan)),
            "skipped": int(skipped),
        }


class MultiView:
    """A training augment that returns several views of one image, ``augment(img, rng) -> (v_0, v_1, ...)``
    (uint8 HxWx3 each, e.g. :class:`fiqa.data.augment_presets.QGFaceViews`), and the sample key of each view
    (``names``; one of them must be ``image``). With it, :class:`FaceDataModule` passes each view through
    the flip and ToModelInput on its own (independent flips), and a training sample holds one tensor per
    name, e.g. ``image`` (high-quality view) and ``image_lq`` (low-quality view) for QGFace."""

    def __init__(self, augment, names=("image_lq", "image")):
        names = tuple(str(n) for n in names)
        if "image" not in names or len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"augment.names must be >= 2 distinct sample keys, one of them 'image'; got {list(names)}")
        self.augment, self.names = augment, names

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple:
        views = self.augment(img, rng)
        if not isinstance(views, (tuple, list)) or len(views) != len(self.names):
            got = f"{len(views)} views" if isinstance(views, (tuple, list)) else type(views).__name__
            raise ValueError(
                f"augment.names={list(self.names)}: {self.augment!r} must return {len(self.names)} views, got {got}"
            )
        return tuple(views)

    def __repr__(self) -> str:
        return f"MultiView({self.augment!r}, names={list(self.names)})"


class _ViewsToInput:
    """MultiView -> ``{name: per_view(view)}`` (each view flipped and converted on its own)."""

    def __init__(self, views: MultiView, per_view):
        self.views, self.per_view = views, per_view

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict:
        return {n: self.per_view(v, rng) for n, v in zip(self.views.names, self.views(img, rng))}

    def __repr__(self) -> str:
        return f"{self.views!r} -> each: {self.per_view!r}"


def _worker_init(_: int) -> None:
    # One OpenCV thread per DataLoader worker: the workers are the parallelism.
    cv2.setNumThreads(1)


class FaceDataModule(L.LightningDataModule):
    """``batch_size`` is the **global** batch (as papers report it): each of the world's
    processes loads ``batch_size / world_size``.

    Input convention (one place, :class:`~fiqa.data.transforms.ToModelInput`): readers yield RGB;
    ``color`` is the channel order the network is fed and ``(x - normalize_mean) / normalize_std`` its
    scaling, both set per method (AdaFace/QGFace/MagFace: bgr; MagFace: mean 0, std 255). Training
    transform: ``augment`` (uint8 -> uint8, the ``augment`` config group) -> flip -> ToModelInput; a
    :class:`MultiView` augment (``augment=qgface``) gives several views, each flipped and converted on its own."""

    def __init__(
        self,
        train=None,
        val_sets: Mapping[str, Any] | None = None,
        batch_size: int = 128,
        val_batch_size: int = 256,
        num_workers: int = 2,
        color: str = "rgb",
        flip: float = 0.5,
        num_classes: int | None = None,
        pin_memory: bool = False,
        normalize_mean: float = 127.5,
        normalize_std: float = 127.5,
        augment=None,
        skip_corrupt: bool = False,
        seed: int | None = None,
    ):
        super().__init__()
        self.seed = seed  # the data order and augmentation seed; None: the run seed (seed_everything)
        self.skip_corrupt = bool(skip_corrupt)
        self.augment = augment
        self.train_reader = train
        self.val_sets = dict(val_sets or {})

        def _int(key: str, value, low: int, what: str) -> int:  # an int (not a bool, 2.5 or "8") >= low
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"data.{key}={value!r}: must be {what}")
            return int(value)

        self.batch_size = _int("batch_size", batch_size, 1, "a positive integer (the global batch over all devices)")
        self.val_batch_size = _int("val_batch_size", val_batch_size, 1, "a positive integer (the batch per device)")
        self.num_workers = _int("num_workers", num_workers, 0, "an integer >= 0 (loader processes per device)")
        if isinstance(flip, bool) or not isinstance(flip, (int, float, np.number)) or not 0 <= flip <= 1:
            raise ValueError(f"data.flip={flip!r}: must be a number in [0, 1] (the probability of a horizontal flip)")
        self.pin_memory = bool(pin_memory)
        self.to_input = ToModelInput(color, normalize_mean, normalize_std)
        steps = (
            [augment] if augment is not None and not (isinstance(augment, Compose) and not augment.transforms) else []
        )
        self.train_transform = (
            _ViewsToInput(augment, Compose([RandomHorizontalFlip(flip), self.to_input]))
            if isinstance(augment, MultiView)
            else Compose([*steps, RandomHorizontalFlip(flip), self.to_input])
        )
        self.num_classes = num_classes
        if (
            train is not None
            and num_classes is not None
            and hasattr(train, "num_classes")
            and int(train.num_classes) != int(num_classes)
        ):
            raise ValueError(f"data.num_classes={num_classes} but the training data has {train.num_classes} classes")
        self.per_device_batch = self.batch_size

    @property
    def val_names(self) -> list:
        return list(self.val_sets)

    def val_targets(self, i: int) -> dict:
        """What the protocols of validation set ``i`` need (``issame``, ``degradation`` ...)."""
        ds = self.val_sets[self.val_names[i]]
        return ds.targets() if hasattr(ds, "targets") else {}

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        if stage in (None, "fit") and self.batch_size % world:
            raise ValueError(
                f"data.batch_size={self.batch_size} is the global batch and must divide by the "
                f"world size {world} (devices x nodes); use a multiple of {world}"
            )
        self.per_device_batch = max(self.batch_size // world, 1)
        if world > 1 and stage in (None, "fit"):
            log.info(f"global batch {self.batch_size} = {world} processes x {self.per_device_batch}")

    def _loader(self, dataset, batch_size: int, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_worker_init,
        )

    def data_seed(self) -> int:
        """``seed`` if given, else the run seed ``seed_everything`` set (``PL_GLOBAL_SEED``, every rank)."""
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    def _progress(self) -> int:
        """Training batches the trainer has processed in the current epoch, for :class:`ResumableLoader`."""
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        """The training loader: :class:`fiqa.data.resume.EpochSampler` (shuffled from ``(seed, epoch)``, this
        rank's shard) in a :class:`fiqa.data.resume.ResumableLoader`, so a mid-epoch resume continues the
        epoch's order exactly."""
        if self.train_reader is None:
            raise ValueError("no training data: set data=<name> (e.g. data=synthface)")
        if len(self.train_reader) < self.per_device_batch:
            raise ValueError(
                f"the training set has {len(self.train_reader)} images, fewer than one batch "
                f"({self.per_device_batch}): lower data.batch_size"
            )
        seed = self.data_seed()
        dataset = FaceDataset(self.train_reader, self.train_transform, self.skip_corrupt, seed=seed)
        t = self.trainer
        world, rank = (t.world_size, t.global_rank) if t is not None else (1, 0)
        sampler = EpochSampler(dataset, self.per_device_batch, seed, num_replicas=world, rank=rank)
        if len(sampler) < self.per_device_batch:
            raise ValueError(
                f"the training set has {len(self.train_reader)} images: {len(sampler)} per process, fewer than one "
                f"batch ({self.per_device_batch}): lower data.batch_size"
            )
        loader = ResumableLoader(
            dataset,
            batch_size=self.per_device_batch,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_worker_init,
            generator=torch_generator(seed),
        )
        loader.progress = self._progress if t is not None else None
        return loader

    def val_dataloader(self) -> list:
        return [
            self._loader(FaceDataset(ds, self.to_input), self.val_batch_size, False) for ds in self.val_sets.values()
        ]

    def test_dataloader(self) -> list:
        return self.val_dataloader()
