"""README's determinism claim: the same command on the same machine, torch build and thread count gives the
same numbers bit for bit, and the data-loader workers do not change them (the data order and every
augmentation are functions of the seed). Runs the real main.py (tiny, 1 epoch) three times."""

from __future__ import annotations

import csv

import pytest

from tests.helpers.run_main import TINY, TINY_VAL, read_metrics, run_main

# a job with a step schedule, augmentation and validation: the loss curve and every metric are compared
ARGS = [*TINY, *TINY_VAL, "trainer.max_epochs=2", "seed=7", "trainer.log_every_n_steps=1"]
THREADS = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def _losses(run_dir) -> list:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = [(r["step"], r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(out) >= 4, f"expected a logged train/loss per step, got {len(out)} rows"
    return out


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    d = tmp_path_factory.mktemp("det") / "a"
    run_main(*ARGS, f"hydra.run.dir={d}", env=THREADS)
    return d


def test_the_same_command_gives_the_same_numbers_bit_for_bit(first, tmp_path):
    run_main(*ARGS, f"hydra.run.dir={tmp_path}", env=THREADS)
    a, b = read_metrics(first), read_metrics(tmp_path)
    assert a.keys() == b.keys() and "val/synth/acc" in a
    assert a == b  # exact float equality, every metric
    assert _losses(first) == _losses(tmp_path)  # and every logged loss, as written (repr of the float)


def test_data_loader_workers_do_not_change_the_numbers(first, tmp_path):
    run_main(*ARGS, "data.num_workers=2", f"hydra.run.dir={tmp_path}", env=THREADS)
    assert read_metrics(first) == read_metrics(tmp_path)
    assert _losses(first) == _losses(tmp_path)
