"""The only instantiation path: config -> datamodule, method, callbacks, loggers, trainer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fiqa.callbacks.corrupt import CorruptRecords
from fiqa.callbacks.resume import ResumeData, RngStates
from fiqa.callbacks.store_config import StoreConfig
from fiqa.data.build import build_datamodule
from fiqa.data.datamodule import FaceDataModule
from fiqa.data.transforms import ToModelInput
from fiqa.methods.base import FaceModule
from fiqa.methods.loading import build_method, load_model
from fiqa.utils.instantiate import instantiate_plain, instantiate_values
from fiqa.utils.logging import get_logger
from fiqa.utils.resolvers import device_count

log = get_logger(__name__)
log_all = get_logger(__name__, rank_zero_only=False)  # every rank, prefixed with it


@dataclass
class Built:
    datamodule: FaceDataModule
    method: FaceModule
    trainer: L.Trainer
    config: dict  # the resolved run config (stored in checkpoints)


def hydra_mode() -> RunMode | None:
    return HydraConfig.get().mode if HydraConfig.initialized() else None


def resolved_config(cfg: DictConfig) -> dict:
    """The run config with every interpolation resolved (the ``hydra`` node dropped)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    for node in ("pack", "score", "export", "compare", "benchmark"):  # only their own task reads them
        if c.get("task") != {"score": "quality"}.get(node, node):
            c.pop(node, None)
    return c


def build_val(cfg: DictConfig) -> tuple[dict, dict]:
    """(datasets by name, the method's view: {name: {flip, protocols}}); order = ``val=[...]`` order."""
    datasets, method_view = {}, {}
    for name, v in (cfg.get("val") or {}).items():
        if not isinstance(v, DictConfig) or "dataset" not in v:
            raise ValueError(f"val.{name}: a val set needs a 'dataset' (with _target_) and 'protocols'; got {v}")
        datasets[name] = instantiate_plain(v.dataset)
        method_view[name] = {
            "flip": bool(v.get("flip", True)),
            "protocols": instantiate_values(v.get("protocols")),
            "score": v.get("score", "cosine"),
            "qmagface": OmegaConf.to_container(v.qmagface, resolve=True) if v.get("qmagface") else None,
        }
    return datasets, method_view


def fill_num_classes(cfg: DictConfig, datamodule: FaceDataModule) -> None:
    """``data.num_classes: null`` -> the training data's class count, written into the config so the
    head is built with it and the checkpoint's stored config holds it."""
    if cfg.data.get("num_classes") is not None or datamodule.train_reader is None:
        return
    n = getattr(datamodule.train_reader, "num_classes", None)
    if n is None:
        raise ValueError("data.num_classes is null and the training reader does not report a class count: set it")
    with open_dict(cfg):
        cfg.data.num_classes = int(n)
    datamodule.num_classes = int(n)
    log.info(f"data.num_classes = {int(n)} (from {datamodule.train_reader!r})")


def build_callbacks(cfg: DictConfig, run_config: Mapping) -> list:
    """Ours on every run (the config in the checkpoint, skipped-record counts, every rank's random states),
    then ``callbacks.*``."""
    callbacks = [StoreConfig(run_config), CorruptRecords(), RngStates(), ResumeData()]
    for name, c in (cfg.get("callbacks") or {}).items():
        if isinstance(c, DictConfig) and "_target_" in c:
            callbacks.append(instantiate(c))
        elif c is not None:
            raise ValueError(f"callbacks.{name} has no _target_; got {c}")
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, c in (cfg.get("logger") or {}).items():
        if not isinstance(c, DictConfig) or "_target_" not in c:
            raise ValueError(f"logger.{name} has no _target_; got {c}")
        kw = {}
        if c._target_.endswith("WandbLogger"):  # offline without a key, group = sweep, name, tags, job_type
            from fiqa.callbacks.wandb_setup import logger_kwargs

            kw = logger_kwargs(cfg, c)
        loggers.append(instantiate(c, **kw))
    return loggers


def cluster_environment() -> str | None:
    """The Lightning cluster environment whose launcher started this process (torchrun, srun, LSF),
    detected as Lightning detects it; None when Lightning starts any DDP processes itself."""
    from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment

    for env in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment):  # Lightning's order
        if env.detect():
            return env.__name__
    return None


def check_cluster(cfg: DictConfig, environment: str) -> None:
    """``trainer.devices`` / ``trainer.num_nodes`` against the processes torchrun or SLURM started (Lightning
    checks this too, later and in its own terms); logs on every rank which launcher started it."""
    t, env = cfg.trainer, os.environ
    per_node, nodes = device_count(t.get("devices", 1)), int(t.get("num_nodes", 1))
    if environment == "TorchElasticEnvironment":
        local, world = int(env.get("LOCAL_WORLD_SIZE", 1)), int(env.get("WORLD_SIZE", 1))
        found = (local, "torchrun --nproc_per_node (LOCAL_WORLD_SIZE)")
        found_nodes = (world // local, f"torchrun --nnodes: WORLD_SIZE={world} / LOCAL_WORLD_SIZE={local}")
        rank = env.get("RANK", "0")
    elif environment == "SLURMEnvironment":
        world = int(env.get("SLURM_NTASKS", 1))
        ntasks, nnodes = env.get("SLURM_NTASKS_PER_NODE"), env.get("SLURM_NNODES")
        found = (int(ntasks), "SLURM --ntasks-per-node, hydra.launcher.tasks_per_node") if ntasks else None
        found_nodes = (int(nnodes), "SLURM --nodes, hydra.launcher.nodes") if nnodes else None
        rank = env.get("SLURM_PROCID", "0")
    else:
        return
    if found and per_node is not None and per_node != found[0]:
        raise ValueError(
            f"trainer.devices={t.get('devices')} but the launcher started {found[0]} process(es) per node "
            f"({found[1]}): set trainer.devices={found[0]} (one process per device)"
        )
    if found_nodes and found_nodes[0] != nodes:
        raise ValueError(
            f"trainer.num_nodes={nodes} but the job runs on {found_nodes[0]} node(s) ({found_nodes[1]}): "
            f"set trainer.num_nodes={found_nodes[0]}"
        )
    log_all.info(f"{environment}: this process is rank {rank} of {world}, started by the launcher, not Lightning")


def _spawns(strategy: Any) -> bool:
    """True when the strategy starts its processes with multiprocessing (spawn/fork), which does not
    re-run the command line."""
    if isinstance(strategy, DictConfig):
        return strategy.get("start_method") in ("spawn", "fork", "forkserver")
    return isinstance(strategy, str) and any(k in strategy for k in ("spawn", "fork", "notebook"))


def check_launch(cfg: DictConfig) -> None:
    """Checks before anything is built, on every rank:

    - under torchrun / SLURM (Lightning's TorchElasticEnvironment / SLURMEnvironment): ``trainer.devices``
      and ``trainer.num_nodes`` must match the processes the launcher started (:func:`check_cluster`);
    - a local ``-m`` sweep with DDP processes that Lightning starts itself is refused: Lightning re-runs
      ``sys.argv`` in every child (``_hydra_subprocess_cmd``), so each child would re-launch the sweep.
      Spawned processes (``trainer=ddp_sim``, ``start_method: spawn``) do not re-run it and are allowed.
    """
    environment = cluster_environment()
    if environment is not None:
        check_cluster(cfg, environment)
        return
    if hydra_mode() != RunMode.MULTIRUN:
        return
    t = cfg.trainer
    count, nodes = device_count(t.get("devices", 1)), int(t.get("num_nodes", 1))
    many = (count is None and str(t.get("accelerator")) != "cpu") or (count or 1) > 1 or nodes > 1
    if many and not _spawns(t.get("strategy")):
        raise ValueError(
            "a local multirun (-m) cannot use DDP processes started by Lightning (trainer.devices="
            f"{t.get('devices')}, trainer.num_nodes={nodes}): Lightning re-runs the command line in every child, "
            "so each child would re-run the sweep. Ways out: (1) hydra/launcher=slurm (one SLURM job per sweep "
            "point; srun starts the processes); (2) run each point without -m under torchrun "
            "(torchrun --nproc_per_node=N main.py ... trainer.devices=N); (3) trainer=ddp_sim (CPU processes "
            "spawned by Lightning, safe under -m) for tests."
        )


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_backbone(method: FaceModule, option: Any) -> None:
    """``trainer.compile``: false | true | one of :data:`COMPILE_MODES`. Compiles the backbone in place
    (``nn.Module.compile``: parameter names and checkpoints stay as they are); the heads, the quality
    heads and the losses stay eager (small, float32, data-dependent shapes under Partial FC).

    The graph is specialised to the training batch (``dynamic=False``; the train loader drops its last
    batch, so there is one shape). With dynamo's default, a second batch size (another run in the same
    process, or an evaluation batch) turns the batch dimension symbolic, and the symbolic graph, which
    then serves training too, loses the layout and fusion choices that make compile pay. Evaluation runs
    the backbone eager (:meth:`FaceModule.embed`), so it neither recompiles nor replaces that graph."""
    if option is None or option is False or str(option).lower() in ("false", "none", "off"):
        return
    mode = "default" if option is True or str(option).lower() in ("true", "on") else str(option)
    if mode not in COMPILE_MODES:
        raise ValueError(f"trainer.compile={option!r} is not valid; choose false, true or one of {list(COMPILE_MODES)}")
    method.backbone.compile(mode=mode, dynamic=False)
    method.compiled_backbone = True
    log.info(f"trainer.compile: backbone compiled with torch.compile(mode={mode!r}); the first steps are slow")


#: ``trainer.*`` keys that are ours, not ``lightning.Trainer`` arguments, with their defaults
OWN_TRAINER_KEYS = {"compile": False, "on_nonfinite": "error"}
NONFINITE_CHOICES = ("error", "skip")


def split_trainer_config(trainer_cfg: DictConfig) -> tuple[DictConfig, Any]:
    """``cfg.trainer`` without our own keys (what ``lightning.Trainer`` takes), and ``compile``."""
    tcfg, own = split_own_trainer_keys(trainer_cfg)
    return tcfg, own["compile"]


def split_own_trainer_keys(trainer_cfg: DictConfig) -> tuple[DictConfig, dict]:
    """``cfg.trainer`` without :data:`OWN_TRAINER_KEYS`, and those keys' values."""
    tcfg = trainer_cfg.copy()
    with open_dict(tcfg):
        own = {k: tcfg.pop(k, default) for k, default in OWN_TRAINER_KEYS.items()}
    if own["on_nonfinite"] not in NONFINITE_CHOICES:
        raise ValueError(
            f"trainer.on_nonfinite={own['on_nonfinite']!r} is not valid; choose one of {list(NONFINITE_CHOICES)}"
        )
    return tcfg, own


def build_plugins(cfg: DictConfig, tcfg: DictConfig) -> list:
    """Our checkpoint writer/reader (atomic, clear errors, ``weights_only`` unless ``trust_checkpoint``),
    after any plugins the trainer config names."""
    from fiqa.utils.checkpoint_io import SafeCheckpointIO

    given = tcfg.get("plugins")
    plugins = [] if given is None else [instantiate(p) if isinstance(p, DictConfig) else p for p in given]
    if not any(hasattr(p, "save_checkpoint") and hasattr(p, "load_checkpoint") for p in plugins):
        plugins.append(SafeCheckpointIO(trust_checkpoint=bool(cfg.get("trust_checkpoint", False))))
    return plugins


def build_trainer(cfg: DictConfig, run_config: Mapping, method: FaceModule) -> L.Trainer:
    """The Lightning Trainer from ``cfg.trainer``; our own keys (``compile``, ``on_nonfinite``) are taken out
    first; our checkpoint IO is added to the plugins."""
    tcfg, own = split_own_trainer_keys(cfg.trainer)
    compile_backbone(method, own["compile"])
    method.on_nonfinite = own["on_nonfinite"]
    plugins = build_plugins(cfg, tcfg)
    with open_dict(tcfg):
        tcfg.pop("plugins", None)
    return instantiate(
        tcfg, callbacks=build_callbacks(cfg, run_config), logger=build_loggers(cfg) or False, plugins=plugins
    )


def build(cfg: DictConfig, with_train: bool = True) -> Built:
    check_launch(cfg)
    val_datasets, val_view = build_val(cfg)
    datamodule = build_datamodule(cfg.data, val_datasets, with_train=with_train, augment_cfg=cfg.get("augment"))
    fill_num_classes(cfg, datamodule)
    run_config = resolved_config(cfg)
    method = build_method(cfg, val_view)
    trainer = build_trainer(cfg, run_config, method)
    return Built(datamodule, method, trainer, run_config)


def replaces_quality(cfg: DictConfig) -> bool:
    """Whether ``quality=...`` replaces the model's own quality (``norm``, ``serfiq``, ``random``)."""
    q = cfg.get("quality")
    return isinstance(q, DictConfig) and "_target_" in q


def wrap_quality(method: FaceModule, quality_cfg: Any) -> FaceModule:
    """Replace the model's quality by another source (``quality=serfiq|norm``; ``own`` keeps it)."""
    if quality_cfg is None or not isinstance(quality_cfg, DictConfig) or "_target_" not in quality_cfg:
        return method
    wrapped = instantiate_plain(quality_cfg)(method)
    wrapped.input_convention = getattr(method, "input_convention", None)
    return wrapped


def build_from_checkpoint(cfg: DictConfig) -> tuple[Built, FaceModule]:
    """Rebuild the model from the checkpoint (ours or a released one), evaluate on the current ``val``."""
    check_launch(cfg)
    val_datasets, val_view = build_val(cfg)
    method = load_model(
        cfg.ckpt_path,
        val_view,
        bool(cfg.get("trust_checkpoint", False)),
        str(cfg.get("ckpt_format", "auto")),
        cfg.get("quality_ckpt_path"),
        require_quality=not replaces_quality(cfg),
    )
    method = wrap_quality(method, cfg.get("quality"))
    data_cfg = method.source_config.data if getattr(method, "source_config", None) is not None else cfg.data
    conv = method.input_convention
    datamodule = build_datamodule(data_cfg, val_datasets, with_train=False)
    datamodule.to_input = ToModelInput(conv["color"], conv["mean"], conv["std"])
    run_config = resolved_config(cfg)
    trainer = build_trainer(cfg, run_config, method)
    return Built(datamodule, method, trainer, run_config), method
