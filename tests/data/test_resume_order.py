"""The resumable training order (fiqa.data.resume) and the random-state round trip (fiqa.callbacks.resume),
without a Trainer: numbers worked out from the definitions."""

from __future__ import annotations

import random

import numpy as np
import torch

from fiqa.callbacks.resume import _collect_rng, _from_plain, _plain_rng, _set_rng
from fiqa.data.datamodule import FaceDataset
from fiqa.data.resume import EpochSampler, ResumableLoader, epoch_permutation
from fiqa.data.transforms import Compose, RandomHorizontalFlip
from fiqa.utils.checkpoint_io import atomic_torch_save


class Reader:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = np.full((4, 4, 3), 50 + i % 200, np.uint8)
        img[:, :2] = 0  # left half dark: a flip shows
        return img, i % 7, {"index": i}


def test_epoch_order_is_a_function_of_seed_and_epoch_and_shards_like_distributed_sampler():
    n, w = 23, 2
    perm = np.random.default_rng([5, 3, 0x5A3D]).permutation(n)  # the definition
    assert np.array_equal(epoch_permutation(n, 5, 3), perm)
    assert not np.array_equal(epoch_permutation(n, 5, 4), perm)
    shards = []
    for r in range(w):
        s = EpochSampler(list(range(n)), batch_size=3, seed=5, num_replicas=w, rank=r)
        s.set_epoch(3)
        keys = list(s)
        assert all(e == 3 for e, _ in keys) and len(keys) == len(s) == n // w
        shards.append([i for _, i in keys])
    order = perm[: (n // w) * w]
    assert shards[0] == order[0::2].tolist() and shards[1] == order[1::2].tolist()
    assert not set(shards[0]) & set(shards[1])


def test_resume_at_a_batch_continues_the_same_order_once():
    s = EpochSampler(list(range(40)), batch_size=4, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.resume_at(2, 3)
    s.set_epoch(2)  # Lightning sets the same epoch again: the position stays
    assert list(s) == full[12:]
    assert list(s) == full  # used once: the next pass is the whole epoch
    s.resume_at(2, 3)
    s.set_epoch(3)  # another epoch: the position of epoch 2 does not apply
    assert len(list(s)) == 40


def test_loader_state_round_trip_and_end_of_epoch():
    ds = FaceDataset(Reader(40), Compose([]), seed=1)
    s = EpochSampler(ds, batch_size=4, seed=1)
    loader = ResumableLoader(ds, batch_size=4, sampler=s, drop_last=True)
    loader.progress = lambda: 3
    s.set_epoch(2)
    state = loader.state_dict()
    assert state["epoch"] == 2 and state["batches_done"] == 3 and state["num_samples"] == 40
    other = EpochSampler(ds, batch_size=4, seed=1)
    again = ResumableLoader(ds, batch_size=4, sampler=other, drop_last=True)
    again.load_state_dict(state)
    assert other.epoch == 2 and other.start_batch == 3
    again.load_state_dict({**state, "batches_done": 10})  # saved after the epoch's last batch
    assert other.epoch == 3 and other.start_batch == 0


def test_augmentation_depends_on_seed_epoch_and_index_only():
    """A flip with p=0.5: the same (epoch, index) key flips the same way in any process or order."""
    ds = FaceDataset(Reader(64), Compose([RandomHorizontalFlip(0.5)]), seed=9)

    def flipped(key):
        return bool(ds[key]["image"][0, 0, 0] != 0)

    a = [flipped((1, i)) for i in range(64)]
    b = [flipped((1, i)) for i in reversed(range(64))][::-1]
    assert a == b and 10 < sum(a) < 54  # deterministic per key, and really random across keys
    assert a != [flipped((2, i)) for i in range(64)]  # another epoch, other flips
    want = [np.random.default_rng([9, 1, i, 0xA6]).random() < 0.5 for i in range(64)]
    assert a == want  # the definition: one uniform draw of the sample's generator decides the flip


def test_random_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    saved = _plain_rng(_collect_rng())
    atomic_torch_save({"rng": saved}, tmp_path / "s.ckpt")
    want = (torch.rand(3), np.random.rand(3), random.random())
    _set_rng(_from_plain(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"]))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
