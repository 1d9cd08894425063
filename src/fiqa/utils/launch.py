"""Launch-time helpers. Before Hydra starts, main.py gets one run dir for every rank and a clear
error when the SLURM launcher plugin is missing. Inside a run, ranks that Lightning spawned over gloo
(``trainer=ddp_sim``) release their process group at exit (:func:`release_spawned_process_group_at_exit`).

Under ``torchrun`` or a multi-task ``srun``, every rank runs ``main.py`` and composes its own
config, so the time stamp in the run dir (``conf/hydra/default.yaml``:
``${oc.env:FIQA_RUN_ID,${now:...}}``) could differ between ranks that start a second apart.
:func:`prepare` sets ``FIQA_RUN_ID`` to one value all ranks agree on, unless it is set already:

- torchrun: the first rank to get there writes its time stamp into the elastic agent's TCP store
  (served at ``MASTER_ADDR:MASTER_PORT``, ``TORCHELASTIC_USE_AGENT_STORE=True``), every rank reads
  that one back, on every node; with no agent store, torchrun's ``--rdzv-id`` (``TORCHELASTIC_RUN_ID``)
  unless it is the default ``none``; else an error asks for ``FIQA_RUN_ID``;
- srun with several tasks: ``slurm<SLURM_JOB_ID>-<SLURM_STEP_ID>`` (a requeued job keeps its dir).

Jobs of ``hydra/launcher=slurm`` need none of this: the submitting process resolves the sweep dir
once and every task of every job reads it back (Hydra copies the resolved time stamp).

At exit, a spawned gloo rank that still holds its process group meets the others at a monitored
barrier (60 s) and destroys the group. Without this, a rank that had finished its work could abort
at interpreter exit ("terminate called without an active exception"). :class:`fiqa.methods.base.FaceModule`
registers it in ``setup``. torchrun and srun processes are left alone.
"""

from __future__ import annotations

import atexit
import importlib.util
import multiprocessing
import os
from collections.abc import MutableMapping, Sequence
from datetime import datetime, timedelta

RUN_ID = "FIQA_RUN_ID"
STAMP = "%Y-%m-%d_%H-%M-%S"  # the format of the default run dir
STORE_KEY = "fiqa/run_id"
PLUGIN_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")  # hydra/launcher=... options of the plugin


def external_launcher(env: MutableMapping[str, str] = os.environ) -> str | None:
    """``"torchrun"`` or ``"srun"`` when this process is one rank of a job started outside Lightning."""
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    interactive = env.get("SLURM_JOB_NAME") in ("bash", "interactive")  # Lightning ignores SLURM then too
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and not interactive:
        return "srun"
    return None


def agreed_stamp(host: str, port: int, proposal: str, timeout_s: float = 120.0) -> str:
    """The first ``proposal`` written under :data:`STORE_KEY` in the TCP store at ``host:port``
    (atomic compare-and-set: whichever rank comes first wins, the others read its value)."""
    from torch.distributed import TCPStore

    store = TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))
    return store.compare_set(STORE_KEY, "", proposal).decode()


def run_id(env: MutableMapping[str, str] = os.environ) -> str | None:
    """The run id all ranks of this job share; None for a process on its own (Hydra's time stamp)."""
    if env.get(RUN_ID):
        return env[RUN_ID]
    launcher = external_launcher(env)
    if launcher == "srun":
        return f"slurm{env.get('SLURM_JOB_ID', 'job')}-{env.get('SLURM_STEP_ID', '0')}"
    if launcher != "torchrun":
        return None
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        return agreed_stamp(env["MASTER_ADDR"], int(env["MASTER_PORT"]), datetime.now().strftime(STAMP))
    rdzv_id = env.get("TORCHELASTIC_RUN_ID", "")
    if rdzv_id and rdzv_id != "none":
        return rdzv_id
    raise RuntimeError(
        "torchrun started this process without an agent store and without --rdzv-id, so the ranks cannot agree "
        f"on a run dir: set {RUN_ID} to the same value on every node (e.g. {RUN_ID}=$(date +%Y-%m-%d_%H-%M-%S)) "
        "or give torchrun --rdzv-id=<a new id per run>"
    )


def check_launcher_plugin(argv: Sequence[str]) -> None:
    """``hydra/launcher=slurm`` (or ``submitit_*``) without hydra-submitit-launcher: say what to install."""
    wanted = [a for a in argv if a.split("=", 1)[0].lstrip("+") == "hydra/launcher"]
    if not any(a.split("=", 1)[-1] in PLUGIN_LAUNCHERS for a in wanted):
        return
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise SystemExit(
            f"{wanted[-1]} needs the hydra-submitit-launcher plugin, which is not installed: "
            "pip install -e '.[slurm]' (or pip install hydra-submitit-launcher)"
        )


def prepare(argv: Sequence[str], env: MutableMapping[str, str] = os.environ) -> None:
    """Before Hydra starts: check the launcher plugin; pin ``FIQA_RUN_ID`` for the ranks of a torchrun /
    srun job (see the module docstring)."""
    check_launcher_plugin(argv)
    rid = run_id(env)
    if rid is not None:
        env[RUN_ID] = rid


_released_at_exit = False


def release_spawned_process_group_at_exit() -> None:
    """In a process Lightning spawned for DDP over gloo (``trainer=ddp_sim``), destroy the process group
    at exit, after a barrier. Left to interpreter shutdown, gloo's threads sometimes abort the finished
    process ("terminate called without an active exception", SIGABRT) and Lightning then fails the run
    that had succeeded. At exit, not in a hook: Lightning's launcher still gathers the state dict (a
    collective under Partial FC) after the trainer's last hook. Processes started by torchrun or srun are
    not multiprocessing children and keep their group as it is."""
    global _released_at_exit
    import torch.distributed as dist

    if _released_at_exit or multiprocessing.parent_process() is None:
        return
    if not (dist.is_available() and dist.is_initialized()) or dist.get_backend() != "gloo":
        return
    _released_at_exit = True
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=60))  # every rank is past its collectives
        dist.destroy_process_group()
    except Exception as err:  # a peer that died first: nothing left to release cleanly
        print(f"fiqa: the process group was not released at exit ({type(err).__name__}: {err})", flush=True)
