"""Faults around checkpoints and training: a write that fails half way (file-size limit, as a full disk
would), truncated / unsafe / wrong checkpoints given to ``ckpt_path``, ``ckpt_path=last`` and a run dir,
non-finite losses, a resume into a new run dir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fiqa.utils.checkpoint_io import (
    CheckpointReadError,
    CheckpointWriteError,
    atomic_torch_save,
    check_training_checkpoint,
    load_checkpoint_file,
)
from tests.helpers.run_main import ROOT, TINY, run_main

FAST = [*TINY, "val=[]", "callbacks.model_checkpoint.monitor=null", "callbacks.quality_plots=null"]


def test_atomic_save_replaces_the_file_whole(tmp_path):
    path = tmp_path / "ck" / "last.ckpt"
    atomic_torch_save({"a": torch.arange(3)}, path)
    atomic_torch_save({"a": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(5))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint_loadable(tmp_path):
    """The kernel refuses the write past 64 KiB (RLIMIT_FSIZE: EFBIG, the way a full disk gives ENOSPC)
    in a child process: the error names the file and the reason, the old checkpoint loads unchanged and no
    temporary file is left behind."""
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.ones(10)}, path)
    before = path.read_bytes()
    code = f"""
import resource, signal, sys, torch
sys.path.insert(0, {str(ROOT / "src")!r})
from fiqa.utils.checkpoint_io import atomic_torch_save, CheckpointWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    atomic_torch_save({{"w": torch.ones(1_000_000)}}, {str(path)!r})
except CheckpointWriteError as err:
    print("ERROR", err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERROR cannot write the checkpoint" in out.stdout, out.stdout + out.stderr
    assert str(path) in out.stdout and "File too large" in out.stdout
    assert "the previous last.ckpt is untouched" in out.stdout
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(10))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_an_unwritable_directory_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointWriteError, match="cannot create the checkpoint directory"):
        atomic_torch_save({}, tmp_path / "file" / "sub" / "last.ckpt")


def _good_checkpoint(tmp_path) -> Path:
    run_main(*FAST, "callbacks.last_checkpoint.every_minutes=null", f"hydra.run.dir={tmp_path / 'good'}")
    return tmp_path / "good" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return _good_checkpoint(tmp_path_factory.mktemp("good"))


def test_broken_checkpoints_name_the_file_and_the_fault(good, tmp_path):
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match=r"truncated\.ckpt.*is truncated or corrupt"):
        load_checkpoint_file(truncated)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"hello, not a checkpoint at all")
    with pytest.raises(CheckpointReadError, match="junk.ckpt"):
        load_checkpoint_file(junk)
    weights = tmp_path / "weights.ckpt"
    torch.save({"state_dict": torch.load(good, weights_only=True)["state_dict"]}, weights)
    with pytest.raises(CheckpointReadError, match="cannot resume training: it lacks .*init_ckpt="):
        check_training_checkpoint(weights)
    info = check_training_checkpoint(good)
    assert info["global_step"] == 4 and info["epoch"] == 0


class _Code:  # unpickling it would run code
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.slow  # CI time: runs in make test-full
def test_unsafe_checkpoints_are_refused_by_the_key_they_were_given_as(good, tmp_path):
    ck = torch.load(good, weights_only=True)
    ck["extra"] = _Code()
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(ck, unsafe)
    for key in ("ckpt_path", "init_ckpt"):
        proc = run_main(*FAST, f"{key}={unsafe}", f"hydra.run.dir={tmp_path / key}", check=False)
        err = proc.stderr
        assert proc.returncode != 0 and "pwned" not in proc.stdout
        assert f"{key}='{unsafe}' cannot be loaded safely" in err and "trust_checkpoint=true" in err, err[-2000:]
        assert "torch/serialization.py" not in err  # no frames from deep inside torch
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(good.read_bytes()[:1000])
    proc = run_main(*FAST, f"ckpt_path={truncated}", f"hydra.run.dir={tmp_path / 'cut'}", check=False)
    assert proc.returncode != 0 and "is truncated or corrupt" in proc.stderr
    assert "torch/serialization.py" not in proc.stderr


@pytest.mark.slow  # CI time: runs in make test-full
def test_ckpt_path_last_and_a_run_dir(good, tmp_path):
    proc = run_main(*FAST, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'x'}", check=False, env={"FIQA_RUN_ID": ""})
    assert proc.returncode != 0 and "FIQA_RUN_ID is not set" in proc.stderr
    run_dir = good.parents[1]
    proc = run_main(*FAST, "trainer.max_epochs=2", f"ckpt_path={run_dir}", f"hydra.run.dir={tmp_path / 'resumed'}")
    log = proc.stdout + proc.stderr
    assert f"resuming from {good}" in log and "(epoch 0, step 4)" in log
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    # the final evaluation uses this run's own checkpoints, not the interrupted run's dir
    assert str(run_dir) not in "\n".join(line for line in log.splitlines() if "final evaluation" in line)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_main(*FAST, f"ckpt_path={empty}", f"hydra.run.dir={tmp_path / 'e'}", check=False)
    assert proc.returncode != 0 and "is a directory without checkpoints/last.ckpt" in proc.stderr


def test_a_diverging_run_stops_naming_step_samples_and_last_finite_loss(tmp_path):
    """lr 1e6: the first steps are finite, then the loss overflows. The run stops before the optimizer
    step; every checkpoint on disk holds finite weights; with on_nonfinite=skip the run finishes and counts."""
    blow = [*FAST, "optim.optimizer.lr=1e6", "trainer.gradient_clip_val=null", "trainer.max_epochs=3"]
    blow += ["callbacks.last_checkpoint.every_n_train_steps=1", "callbacks.last_checkpoint.every_minutes=null"]
    proc = run_main(*blow, f"hydra.run.dir={tmp_path / 'err'}", check=False)
    err = proc.stderr
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "non-finite training loss" in err and "sample indices (data set positions): [" in err, err[-3000:]
    assert "the last finite loss was" in err
    for ck in (tmp_path / "err" / "checkpoints").glob("*.ckpt"):
        sd = torch.load(ck, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()), ck
    proc = run_main(*blow, "trainer.on_nonfinite=skip", f"hydra.run.dir={tmp_path / 'skip'}")
    assert "trainer.on_nonfinite=skip: non-finite loss" in proc.stdout + proc.stderr
    sd = torch.load(tmp_path / "skip" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
    bad = run_main(*FAST, "trainer.on_nonfinite=ignore", f"hydra.run.dir={tmp_path / 'bad'}", check=False)
    assert bad.returncode != 0 and "trainer.on_nonfinite='ignore' is not valid" in bad.stderr


def test_best_and_resume_checkpoints_are_apart(tmp_path):
    """With a step and a time interval for last.ckpt: the best file is written at validation ends only, rated
    with that validation's accuracy, the final evaluation is of it, and last.ckpt is written by time too."""
    from tests.helpers.run_main import TINY_VAL, read_metrics

    proc = run_main(*TINY, *TINY_VAL, "trainer.max_epochs=2", "callbacks.quality_plots=null",
                    "callbacks.last_checkpoint.every_n_train_steps=3", "callbacks.last_checkpoint.every_minutes=0.0005",
                    f"hydra.run.dir={tmp_path}")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "timed checkpoint: step" in log and "checkpoint every 3 steps: step 3" in log
    (best,) = (tmp_path / "checkpoints").glob("epoch*.ckpt")
    ck = torch.load(best, weights_only=True)
    assert ck["global_step"] % 4 == 0  # 4 steps an epoch: saved at an epoch's validation, not mid-epoch
    acc = float(best.stem.split("acc")[1])
    assert abs(read_metrics(tmp_path)["val/acc_mean"] - acc) < 1e-4  # the final evaluation is of that file
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
