"""The DDP run-dir and launch contract (issue 8): torchrun across nodes (a 2-node run simulated on one
machine: two ``torchrun --nnodes=2 --node_rank=i`` processes on 127.0.0.1 with gloo), SLURM through
``hydra/launcher=slurm`` (hydra-submitit-launcher), ``-m`` with DDP processes started by Lightning
refused, and every rank resolving the same run dir (``FIQA_RUN_ID``, or agreed on automatically)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from fiqa.callbacks.store_config import CONFIG_KEY
from fiqa.tasks import build as B
from fiqa.utils import launch, resolvers
from tests.conftest import compose_cfg
from tests.helpers.run_main import ROOT, TINY, TINY_VAL, read_metrics, run_main

TINY_NO_TRAINER = [o for o in TINY if not o.startswith("trainer=")]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d$")
HAS_SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
needs_submitit = pytest.mark.skipif(
    not HAS_SUBMITIT, reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]')"
)
# what torchrun / srun put into a worker's environment; cleared so the host's own never leaks in
LAUNCHER_VARS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                 "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_JOB_NAME",
                 "SLURM_LOCALID", "SLURM_NODEID", "FIQA_RUN_ID")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCHER_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and k != "WANDB_API_KEY"}
    env.update(PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env["FIQA_ROOT"] = str(tmp_path)
    env.update(extra)
    return env


def run_together(tmp_path: Path, commands: list[tuple[list[str], dict]], timeout: int = 420) -> list[tuple[int, str]]:
    """Start every (command, extra env) at once, as the processes of one job; each one's (exit code, output)."""
    procs, logs = [], []
    for i, (cmd, env) in enumerate(commands):
        log = tmp_path / f"process{i}.out"
        with log.open("w") as f:  # files, not pipes: a full pipe would stall a rank inside a collective
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_base_env(tmp_path, **env), stdout=f,
                                          stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        logs.append(log)
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:  # our own processes (and their children: each runs in the session we started)
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(p.returncode, log.read_text()) for p, log in zip(procs, logs)]


def torchrun_nodes(tmp_path: Path, overrides, nnodes: int = 2, **env: str) -> list[tuple[int, str]]:
    """One ``torchrun --nnodes=N --nproc_per_node=1 --node_rank=i`` per simulated node, all on 127.0.0.1
    (torchrun's default static rendezvous, whose run id is "none", at a free port)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", "--nproc_per_node=1",
           "--master_addr=127.0.0.1", f"--master_port={port}"]  # fmt: skip
    return run_together(
        tmp_path, [([*cmd, f"--node_rank={i}", str(ROOT / "main.py"), *overrides], env) for i in range(nnodes)]
    )


def _show(results) -> str:
    return "\n".join(f"--- node {i} (exit {rc}) ---\n{out[-5000:]}" for i, (rc, out) in enumerate(results))


# -- 2 nodes simulated with torchrun -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("run_id", ["sim2", None], ids=["FIQA_RUN_ID", "agreed"])
def test_two_nodes_with_torchrun_share_one_run_dir(tmp_path, run_id):
    # "agreed": no FIQA_RUN_ID, and torchrun's static rendezvous has the run id "none", so the ranks can only
    # share a dir through the agent's store (fiqa.utils.launch); without it main.py stops with an error
    overrides = [*TINY_NO_TRAINER, *TINY_VAL, "trainer=ddp_cpu", "trainer.num_nodes=2"]
    results = torchrun_nodes(tmp_path, overrides, **({"FIQA_RUN_ID": run_id} if run_id else {}))
    assert [rc for rc, _ in results] == [0, 0], _show(results)

    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # both ranks resolved the same run dir
    run = runs[0]
    assert run.name == run_id if run_id else STAMP.match(run.name), run.name

    # Lightning saw 2 processes started by torchrun and started none itself
    (out0, out1) = (out for _, out in results)
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in out0
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out1
    assert (out0 + out1).count("Initializing distributed") == 2
    assert "train_ddp_process" not in out0 + out1  # the job name of children Lightning would start
    log = (run / "main.log").read_text()  # both ranks log here: the same dir
    assert "TorchElasticEnvironment: this process is rank 0 of 2" in log
    assert "[rank 1] TorchElasticEnvironment: this process is rank 1 of 2" in log
    assert "global batch 32 = 2 processes x 16" in log  # each rank loads its shard, 16 a step

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts  # last + best, written once (rank 0)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 16 ids x 8 images = 128 samples, 64 per rank; 16 per rank and step: 4 steps in the epoch
    assert ckpt["global_step"] == 4
    assert ckpt[CONFIG_KEY]["trainer"]["num_nodes"] == 2
    assert "val/synth/acc" in read_metrics(run)


@pytest.mark.slow
def test_torchrun_with_the_wrong_trainer_devices_names_the_keys(tmp_path):
    overrides = [*TINY_NO_TRAINER, *TINY_VAL, "trainer=ddp_cpu", "trainer.devices=2"]
    ((rc, out),) = torchrun_nodes(tmp_path, overrides, nnodes=1)
    assert rc != 0
    assert "trainer.devices=2 but the launcher started 1 process(es) per node" in out, out[-3000:]
    assert "set trainer.devices=1" in out
    assert "Epoch" not in out and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_two_srun_tasks_share_one_run_dir(tmp_path):
    # what `srun --nodes=2 --ntasks-per-node=1 python main.py ...` gives each task (SLURM itself is not here)
    port = str(_free_port())
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "main", "SLURM_NTASKS": "2",
             "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_LOCALID": "0",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "main.py"), *TINY_NO_TRAINER, *TINY_VAL, "trainer=ddp_cpu", "trainer.num_nodes=2"]
    tasks = [(cmd, {**slurm, "SLURM_PROCID": str(i), "SLURM_NODEID": str(i)}) for i in range(2)]
    results = run_together(tmp_path, tasks)
    assert [rc for rc, _ in results] == [0, 0], _show(results)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert run.name == "slurm4242-0"
    log = (run / "main.log").read_text()
    assert "SLURMEnvironment: this process is rank 0 of 2" in log
    assert "[rank 1] SLURMEnvironment: this process is rank 1 of 2" in log
    assert "val/synth/acc" in read_metrics(run)


# -- the checks, in process, with the environment torchrun / srun would set ---------------------------


def _torchrun_env(mp, local: int, world: int, rank: int = 0) -> None:
    mp.setenv("TORCHELASTIC_RUN_ID", "none")
    mp.setenv("LOCAL_WORLD_SIZE", str(local))
    mp.setenv("WORLD_SIZE", str(world))
    mp.setenv("RANK", str(rank))


def _srun_env(mp, per_node: int, nodes: int, rank: int = 0) -> None:
    mp.setenv("SLURM_NTASKS", str(per_node * nodes))
    mp.setenv("SLURM_NTASKS_PER_NODE", str(per_node))
    mp.setenv("SLURM_NNODES", str(nodes))
    mp.setenv("SLURM_PROCID", str(rank))
    mp.setenv("SLURM_JOB_NAME", "main")
    mp.setenv("SLURM_JOB_ID", "4242")
    mp.setenv("SLURM_STEP_ID", "0")


def test_torchrun_sizes_must_match_the_trainer(clean_env, tmp_path):
    _torchrun_env(clean_env, local=2, world=4)
    assert B.cluster_environment() == "TorchElasticEnvironment"
    B.check_launch(compose_cfg(["trainer=ddp_cpu", "trainer.devices=2", "trainer.num_nodes=2"], tmp_path))
    with pytest.raises(ValueError, match=r"trainer.devices=1 .*--nproc_per_node.*set trainer.devices=2"):
        B.check_launch(compose_cfg(["trainer=ddp_cpu", "trainer.num_nodes=2"], tmp_path))
    with pytest.raises(ValueError, match=r"trainer.num_nodes=1 but the job runs on 2 node\(s\).*--nnodes"):
        B.check_launch(compose_cfg(["trainer=ddp_cpu", "trainer.devices=2"], tmp_path))


def test_slurm_tasks_must_match_the_trainer(clean_env, tmp_path):
    _srun_env(clean_env, per_node=2, nodes=2)
    assert B.cluster_environment() == "SLURMEnvironment"
    B.check_launch(compose_cfg(["trainer=ddp_cpu", "trainer.devices=2", "trainer.num_nodes=2"], tmp_path))
    with pytest.raises(ValueError, match=r"trainer.devices=4 .*SLURM --ntasks-per-node.*set trainer.devices=2"):
        B.check_launch(compose_cfg(["trainer=ddp_cpu", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path))
    with pytest.raises(ValueError, match=r"trainer.num_nodes=1 .*SLURM --nodes.*set trainer.num_nodes=2"):
        B.check_launch(compose_cfg(["trainer=ddp_cpu", "trainer.devices=2"], tmp_path))
    clean_env.setenv("SLURM_JOB_NAME", "interactive")  # an salloc shell: Lightning ignores SLURM, and so do we
    assert B.cluster_environment() is None


# -- -m with DDP processes started by Lightning ------------------------------------------------------


WAYS_OUT = ("hydra/launcher=slurm", "torchrun", "trainer=ddp_sim")


@pytest.mark.parametrize(
    ("trainer", "refused"),
    [
        (["trainer=ddp"], True),  # GPUs, devices=auto: Lightning would re-run the command line per device
        (["trainer=ddp_cpu", "trainer.devices=2"], True),
        (["trainer=cpu", "trainer.num_nodes=2"], True),
        (["trainer=ddp_sim"], False),  # spawned: the children do not re-run the command line
        (["trainer=ddp_sim", "trainer.devices=3"], False),
        (["trainer=cpu"], False),
        (["trainer=ddp_cpu"], False),  # 1 device, 1 node: nothing to start
    ],
)
def test_multirun_with_lightning_started_ddp_is_refused(clean_env, tmp_path, trainer, refused):
    cfg = compose_cfg(["hydra.mode=MULTIRUN", *trainer], tmp_path)
    if not refused:
        B.check_launch(cfg)
        return
    with pytest.raises(ValueError, match="Ways out") as err:
        B.check_launch(cfg)
    assert all(w in str(err.value) for w in WAYS_OUT), err.value


def test_multirun_under_torchrun_is_not_refused(clean_env, tmp_path):
    _torchrun_env(clean_env, local=2, world=2)
    B.check_launch(compose_cfg(["hydra.mode=MULTIRUN", "trainer=ddp_cpu", "trainer.devices=2"], tmp_path))


@pytest.mark.slow  # one main.py process: ~6-12 s here, mostly importing Lightning
def test_main_multirun_with_trainer_ddp_fails_before_training(tmp_path):
    proc = run_main(
        "-m", "method=arcface,crfiqa", *TINY_NO_TRAINER, *TINY_VAL, "trainer=ddp",
        check=False, env={"FIQA_ROOT": str(tmp_path)},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "a local multirun (-m) cannot use DDP processes started by Lightning" in out, out[-3000:]
    assert all(w in out for w in WAYS_OUT)
    assert "Initializing distributed" not in out and "Epoch" not in out
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.json"))


@pytest.mark.slow
def test_main_multirun_with_ddp_sim_runs_every_point(tmp_path):
    run_main("-m", "method=arcface,crfiqa", *TINY_NO_TRAINER, *TINY_VAL, "trainer=ddp_sim",
             env={"FIQA_ROOT": str(tmp_path)})  # fmt: skip
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    for job in ("0", "1"):
        assert "val/synth/acc" in read_metrics(sweep / job)
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()


# -- one run id for every rank ----------------------------------------------------------------------


def test_fiqa_run_id_is_kept(clean_env):
    env = {"FIQA_RUN_ID": "mine", "TORCHELASTIC_RUN_ID": "none"}
    launch.prepare(["trainer=ddp_cpu"], env)
    assert env["FIQA_RUN_ID"] == "mine"


def test_a_lone_process_keeps_hydras_time_stamp():
    env: dict = {}
    launch.prepare([], env)
    assert "FIQA_RUN_ID" not in env


def test_torchrun_ranks_agree_through_the_agent_store():
    from torch.distributed import TCPStore

    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # what the torchrun agent serves
    base = {"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(server.port)}  # fmt: skip
    first = {**base, "RANK": "1"}
    launch.prepare([], first)
    time.sleep(1.1)  # a rank starting a second later would stamp another second
    second = {**base, "RANK": "0"}
    launch.prepare([], second)
    assert STAMP.match(first["FIQA_RUN_ID"])
    assert second["FIQA_RUN_ID"] == first["FIQA_RUN_ID"]


def test_torchrun_without_a_store_uses_the_rdzv_id_or_asks_for_fiqa_run_id():
    env = {"TORCHELASTIC_RUN_ID": "job7", "TORCHELASTIC_USE_AGENT_STORE": "False"}
    launch.prepare([], env)
    assert env["FIQA_RUN_ID"] == "job7"
    with pytest.raises(RuntimeError, match="FIQA_RUN_ID.*--rdzv-id"):
        launch.prepare([], {"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "False"})


def test_srun_tasks_share_the_slurm_job_and_step():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "1"}
    launch.prepare([], env)
    assert env["FIQA_RUN_ID"] == "slurm4242-1"
    one_task = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242"}
    launch.prepare([], one_task)  # a single process (sbatch without srun): Hydra's time stamp
    assert "FIQA_RUN_ID" not in one_task


# -- SLURM through hydra-submitit-launcher -----------------------------------------------------------


@needs_submitit
def test_slurm_launcher_takes_its_sizes_from_the_trainer(tmp_path):
    resolvers.register()
    cfg = compose_cfg(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                       "hydra.launcher.partition=gpu"], tmp_path)  # fmt: skip
    launcher = instantiate(cfg.hydra.launcher)  # what Hydra builds before it submits anything
    assert type(launcher).__name__ == "SlurmLauncher"
    p = launcher.params
    assert (p["nodes"], p["tasks_per_node"], p["gpus_per_node"], p["partition"]) == (2, 4, 4, "gpu")
    assert p["cpus_per_task"] == cfg.data.num_workers + 1
    assert p["submitit_folder"].startswith(str(cfg.hydra.sweep.dir))  # sbatch files live in the sweep dir

    cpu = instantiate(
        compose_cfg(["hydra/launcher=slurm", "trainer=ddp_cpu", "trainer.devices=2"], tmp_path).hydra.launcher
    )
    assert (cpu.params["tasks_per_node"], cpu.params["gpus_per_node"]) == (2, None)

    auto = compose_cfg(["hydra/launcher=slurm", "trainer=ddp"], tmp_path)  # devices: auto
    with pytest.raises(Exception, match=r"needs trainer.devices to be the number of processes per node"):
        instantiate(auto.hydra.launcher)


def test_slurm_launcher_without_the_plugin_says_what_to_install(monkeypatch):
    launch.check_launcher_plugin(["hydra/launcher=basic"])  # not the plugin's: nothing to check
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "submitit" in name else real(name, *a))
    with pytest.raises(SystemExit, match=r"pip install -e '.\[slurm\]'"):
        launch.check_launcher_plugin(["-m", "hydra/launcher=slurm", "method=arcface,crfiqa"])


@pytest.mark.parametrize(("devices", "count"), [(1, 1), ("4", 4), ([0, 1], 2), ("0,1", 2), ("auto", None), (-1, None)])
def test_device_count(devices, count):
    assert resolvers.device_count(devices) == count


@pytest.mark.slow
@needs_submitit
def test_submitit_local_multirun_runs_each_point_as_a_job(tmp_path):
    # the SLURM launcher's local twin: each sweep point is a submitit job (a separate process)
    run_main("-m", "hydra/launcher=submitit_local", "method=arcface,crfiqa", *TINY, *TINY_VAL,
             env={"FIQA_ROOT": str(tmp_path)})  # fmt: skip
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()  # one sweep dir, resolved once
    for job in ("0", "1"):
        assert "val/synth/acc" in read_metrics(sweep / job)
    assert "method=arcface" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit's files, in the sweep dir
