"""FaceDataModule's arguments: a bad batch size, worker count or flip probability is a ValueError that
names the config key (not a learning-rate or BatchNorm error far from it)."""

from __future__ import annotations

import numpy as np
import pytest

from fiqa.data.datamodule import FaceDataModule


@pytest.mark.parametrize("value", [0, -1, 2.5, "8", True, None])
def test_batch_size_must_be_a_positive_integer(value):
    with pytest.raises(
        ValueError, match=rf"^data\.batch_size={value!r}: must be a positive integer \(the global batch"
    ):
        FaceDataModule(batch_size=value)


@pytest.mark.parametrize("value", [0, -4, 1.0])
def test_val_batch_size_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=rf"^data\.val_batch_size={value!r}: must be a positive integer"):
        FaceDataModule(val_batch_size=value)


@pytest.mark.parametrize("value", [-1, 1.5, "2"])
def test_num_workers_must_be_an_integer_from_zero(value):
    with pytest.raises(ValueError, match=rf"^data\.num_workers={value!r}: must be an integer >= 0"):
        FaceDataModule(num_workers=value)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5", None])
def test_flip_must_be_a_probability(value):
    with pytest.raises(ValueError, match=r"^data\.flip=.*: must be a number in \[0, 1\]"):
        FaceDataModule(flip=value)


def test_good_values_are_kept():
    dm = FaceDataModule(batch_size=np.int64(64), val_batch_size=1, num_workers=0, flip=1)
    assert (dm.batch_size, dm.val_batch_size, dm.num_workers) == (64, 1, 0)
    assert type(dm.batch_size) is int
    FaceDataModule(flip=0.0)
    FaceDataModule(flip=np.float32(0.25))
