"""Crash-safe training, end to end: the real ``main.py`` killed with SIGKILL right after a mid-epoch
checkpoint (one process, and one rank of two under ``trainer=ddp_sim``), or sent SLURM's preemption
signal, then resumed with ``ckpt_path=last``: its per-step training losses must equal an uninterrupted
run's, step for step (1e-6, CPU).

What makes them equal (``fiqa.data.resume``, ``fiqa.callbacks.resume``): the data order of the resumed
epoch continues at the saved batch; each sample's augmentation is seeded by (seed, epoch, index); every
rank's random states, the optimizer, the LR schedule and the loop counters come back from the checkpoint.
The losses include dropout (``backbone.dropout``), so a torch random state left behind would show."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.run_main import ROOT, run_main

STEPS_PER_EPOCH = 12  # 16 identities x 12 images / batch 16
EVERY = 4  # mid-epoch checkpoints at steps 4, 8 (and 16, 20 in epoch 1)
SETTINGS = [
    "backbone=iresnet_tiny",
    "backbone.dropout=0.2",  # the model's random stream takes part in the losses
    "data.train.num_identities=16",
    "data.train.images_per_identity=12",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "val=[]",
    "callbacks.model_checkpoint.monitor=null",
    "callbacks.progress=null",
    "callbacks.quality_plots=null",
    f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
    "callbacks.last_checkpoint.every_minutes=null",
]


def _env(root: Path, run_id: str, **extra: str) -> dict:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "FIQA_ROOT": str(root), "FIQA_RUN_ID": run_id, **extra}
    e.pop("WANDB_API_KEY", None)
    return e


def _run_dir(root: Path, run_id: str) -> Path:
    return root / "logs" / "train" / "runs" / run_id


def losses(run_dir: Path) -> dict[int, float]:
    """``{step: train/loss}`` from the run's CSV log (a row logged again after a resume wins)."""
    out = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def run_until_checkpoint(
    root: Path, run_id: str, overrides: list[str], kill, timeout: float = 300, env: dict | None = None
) -> tuple[int, int, str]:
    """Start ``main.py``; as soon as ``checkpoints/last.ckpt`` exists, call ``kill(proc)``; wait for the
    process (group) to end. Returns (the step the checkpoint then holds, the exit code, the output)."""
    ckpt = _run_dir(root, run_id) / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *overrides],
        cwd=ROOT,
        env={**_env(root, run_id), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    t0 = time.monotonic()
    try:
        while not ckpt.exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"main.py ended ({proc.returncode}) before a checkpoint:\n{proc.stdout.read()[-4000:]}"
                )
            if time.monotonic() - t0 > timeout:
                raise AssertionError("no checkpoint appeared in time")
            time.sleep(0.02)
        kill(proc)
        try:
            out = proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:  # a surviving rank blocked on its dead peer: the cluster kills the job
            os.killpg(proc.pid, signal.SIGKILL)
            out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    return step, proc.returncode, out.decode(errors="replace")


def _sigkill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)


def _sigkill_one_rank(proc) -> None:
    """SIGKILL one of the two DDP ranks Lightning spawned (not the launcher process)."""
    for _ in range(200):
        ranks = [
            c for c in _children(proc.pid) if "multiprocessing" in _cmdline(c) and "resource_tracker" not in _cmdline(c)
        ]
        if len(ranks) >= 2:
            os.kill(ranks[-1], signal.SIGKILL)
            return
        time.sleep(0.02)
    raise AssertionError(f"did not find the 2 spawned ranks among {_children(proc.pid)}")


def _assert_same_losses(resumed: dict, reference: dict, from_step: int) -> None:
    total = 2 * STEPS_PER_EPOCH
    wanted = [s for s in reference if s >= from_step]
    assert wanted and max(reference) >= total - 1, sorted(reference)
    missing = [s for s in wanted if s not in resumed]
    assert not missing, f"the resumed run logged no loss at steps {missing}"
    diff = {s: abs(resumed[s] - reference[s]) for s in wanted}
    worst = max(diff, key=diff.get)
    assert diff[worst] <= 1e-6, (
        f"step {worst}: resumed loss {resumed[worst]!r} vs uninterrupted {reference[worst]!r}; "
        f"all differences: { {s: f'{d:.2g}' for s, d in diff.items()} }"
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict[int, float]]:
    """Uninterrupted runs, one process and 2 DDP ranks; their step losses."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for name, trainer in (("one", "trainer=cpu"), ("ddp", "trainer=ddp_sim")):
        run_main(*SETTINGS, trainer, env=_env(root, name), timeout=600)
        out[name] = losses(_run_dir(root, name))
        assert len(out[name]) == 2 * STEPS_PER_EPOCH, sorted(out[name])
    return out


def test_sigkill_mid_epoch_then_resume_gives_identical_losses(reference, tmp_path):
    step, code, _ = run_until_checkpoint(tmp_path, "killed", [*SETTINGS, "trainer=cpu"], _sigkill)
    assert code == -signal.SIGKILL
    assert step % STEPS_PER_EPOCH != 0, f"the checkpoint is not mid-epoch (step {step})"
    proc = run_main(*SETTINGS, "trainer=cpu", "ckpt_path=last", env=_env(tmp_path, "killed"))
    log = proc.stdout + proc.stderr
    assert f"continues at batch {step % STEPS_PER_EPOCH} of {STEPS_PER_EPOCH}" in log, log[-3000:]
    assert "not resumable" not in log  # Lightning's warning: the loader is stateful now
    _assert_same_losses(losses(_run_dir(tmp_path, "killed")), reference["one"], step + 1)
    last = torch.load(_run_dir(tmp_path, "killed") / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * STEPS_PER_EPOCH  # a finished run's last.ckpt is its final state


@pytest.mark.slow  # 30-60 s on 2 cores: make test-full (CI time)
def test_one_ddp_rank_killed_then_resume_gives_identical_losses(reference, tmp_path):
    step, code, _ = run_until_checkpoint(tmp_path, "ddp", [*SETTINGS, "trainer=ddp_sim"], _sigkill_one_rank)
    assert code != 0
    assert step % STEPS_PER_EPOCH != 0, f"the checkpoint is not mid-epoch (step {step})"
    run_main(*SETTINGS, "trainer=ddp_sim", "ckpt_path=last", env=_env(tmp_path, "ddp"))
    _assert_same_losses(losses(_run_dir(tmp_path, "ddp")), reference["ddp"], step + 1)


def test_slurm_preemption_signal_checkpoints_requeues_and_resumes(reference, tmp_path):
    """SIGUSR1 as SLURM sends it (``--signal=SIGUSR1@90``) to a run that looks like a SLURM job, once it
    has written its first checkpoint (step 4): the current step ends, last.ckpt is written, ``scontrol
    requeue <job>`` is called (a stand-in ``scontrol`` on PATH records it), the run exits 0 without a final
    evaluation; the requeued job (same FIQA_RUN_ID, the same command with ckpt_path=last) continues exactly."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}
    slurm["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    overrides = [*SETTINGS, "trainer=cpu", "ckpt_path=last"]  # the job script's one command, run twice
    step, code, out = run_until_checkpoint(
        tmp_path, "slurm", overrides, lambda p: p.send_signal(signal.SIGUSR1), env=slurm
    )
    assert code == 0, out[-4000:]
    assert "no checkpoint in" in out and "starts from scratch" in out  # ckpt_path=last on the first start
    assert calls.read_text().split() == ["requeue", "4242"]
    assert f"SIGUSR1 received: step {step} saved" in out, out[-3000:]
    assert EVERY <= step < 2 * STEPS_PER_EPOCH
    run_dir = _run_dir(tmp_path, "slurm")
    assert not (run_dir / "metrics.json").exists()  # preempted: no final evaluation
    run_main(*overrides, env={**_env(tmp_path, "slurm"), **slurm})
    _assert_same_losses(losses(run_dir), reference["one"], step + 1)
    assert (run_dir / "metrics.json").exists()
