"""The only instantiation path: config -> datamodule, method, callbacks, loggers, trainer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from fiqa.callbacks.corrupt import CorruptRecords
from fiqa.callbacks.resume import ResumeData, RngStates
from fiqa.callbacks.store_config import CONFIG_KEY, StoreConfig
from fiqa.data.datamodule import FaceDataModule
from fiqa.data.transforms import ToModelInput
from fiqa.methods.base import FaceModule
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


def _instantiate(node, **kwargs):
    """``hydra.utils.instantiate`` that re-raises our own errors (bad paths, sizes, files) as they are,
    not wrapped in an InstantiationException, so the message a user reads is the one we wrote."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, OSError, KeyError)) and not isinstance(cause, InstantiationException):
            raise cause from None
        raise


def _instantiate_values(node: Mapping | None) -> dict:
    """``{key: instantiate(value) if it has a _target_ else value}`` for a config node."""
    out = {}
    for k, v in (node or {}).items():
        out[k] = (
            instantiate(v)
            if isinstance(v, DictConfig) and "_target_" in v
            else (OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v)
        )
    return out


def build_val(cfg: DictConfig) -> tuple[dict, dict]:
    """(datasets by name, the method's view: {name: {flip, protocols}}); order = ``val=[...]`` order."""
    datasets, method_view = {}, {}
    for name, v in (cfg.get("val") or {}).items():
        if not isinstance(v, DictConfig) or "dataset" not in v:
            raise ValueError(f"val.{name}: a val set needs a 'dataset' (with _target_) and 'protocols'; got {v}")
        datasets[name] = _instantiate(v.dataset)
        method_view[name] = {
            "flip": bool(v.get("flip", True)),
            "protocols": _instantiate_values(v.get("protocols")),
            "score": v.get("score", "cosine"),
            "qmagface": OmegaConf.to_container(v.qmagface, resolve=True) if v.get("qmagface") else None,
        }
    return datasets, method_view


#: Keys of a ``data`` node that say where the data is; the reader takes them by interpolation.
DATA_SOURCE_KEYS = ("root", "list", "list_root", "num_images")


def _plain(node: DictConfig, key: str) -> Any:
    v = node[key]  # resolved in the context of the whole config
    return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v


def build_datamodule(
    data_cfg: DictConfig, val_datasets: Mapping[str, Any], with_train: bool = True, augment_cfg: Any = None
) -> FaceDataModule:
    """The datamodule; the training reader only ``with_train`` (an eval never needs ``data.root``)."""
    kwargs = {k: _plain(data_cfg, k) for k in data_cfg if k not in DATA_SOURCE_KEYS and k != "train"}
    train = _instantiate(_plain(data_cfg, "train")) if with_train and data_cfg.get("train") else None
    augment = None
    if with_train and isinstance(augment_cfg, DictConfig) and "_target_" in augment_cfg:
        augment = _instantiate(augment_cfg)
    return _instantiate(kwargs, train=train, val_sets=dict(val_datasets), augment=augment)


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


def build_method(cfg: DictConfig, val_view: Mapping[str, Mapping]) -> FaceModule:
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.head) if cfg.get("head") else None
    optim = _instantiate_values(cfg.get("optim"))
    method = instantiate(cfg.method, backbone=backbone, head=head, optim=optim, val_sets=dict(val_view))
    method.input_convention = input_convention(cfg.data)
    return method


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


def load_checkpoint(path: str, trust_checkpoint: bool = False, key: str = "ckpt_path") -> dict:
    """A checkpoint loaded with ``weights_only=True`` (no code execution); errors name ``key`` and the file
    and say what is wrong (missing, truncated, unsafe, not a torch file)."""
    from fiqa.utils.checkpoint_io import load_checkpoint_file

    return load_checkpoint_file(path, key, trust_checkpoint)


def is_fiqa_checkpoint(ckpt: Mapping) -> bool:
    return isinstance(ckpt, Mapping) and CONFIG_KEY in ckpt and "state_dict" in ckpt


def input_convention(data_cfg: Mapping) -> dict:
    """What the network is fed: ``{"color", "mean", "std"}`` from a data config."""
    return {
        "color": data_cfg.get("color", "rgb"),
        "mean": float(data_cfg.get("normalize_mean", 127.5)),
        "std": float(data_cfg.get("normalize_std", 127.5)),
    }


def load_model(
    path: str,
    val_view: Mapping[str, Mapping] | None = None,
    trust_checkpoint: bool = False,
    ckpt_format: str = "auto",
    quality_path: str | None = None,
    arch: str | None = None,
    require_quality: bool = True,
    key: str = "ckpt_path",
) -> FaceModule:
    """A model from a checkpoint, ready for evaluation or scoring, with ``input_convention`` set.

    A fiqa checkpoint is rebuilt from the config stored in it; anything else is an original's released
    checkpoint, loaded strictly through :func:`fiqa.interop.load_released` (``ckpt_format``).
    ``require_quality=False`` (another quality source replaces the model's) lets a two-file release
    (EQFace) load from its backbone alone."""
    ckpt = load_checkpoint(path, trust_checkpoint, key) if ckpt_format in ("auto", "fiqa") else None
    if ckpt is not None and is_fiqa_checkpoint(ckpt):
        train_cfg = OmegaConf.create(ckpt[CONFIG_KEY])
        method = build_method(train_cfg, val_view or {})
        method.load_state_dict(ckpt["state_dict"], strict=True)
        method.iso_scale = ckpt.get("fiqa_iso_scale")
        method.source_config = train_cfg
        return method
    if ckpt_format == "fiqa":
        raise ValueError(f"{key}={path!r} holds no '{CONFIG_KEY}': it was not written by fiqa's task=train")
    from fiqa.interop import load_released, to_face_module

    released = load_released(
        path,
        format=ckpt_format,
        arch=arch,
        trust_checkpoint=trust_checkpoint,
        quality_path=quality_path,
        require_quality=require_quality,
    )
    method = to_face_module(released)  # carries its input convention (ReleasedModel)
    method.val_sets = dict(val_view or {})
    method.source_config = None
    log.info(f"loaded a released {released.format} checkpoint ({released.arch}) from {path}")
    return method


def replaces_quality(cfg: DictConfig) -> bool:
    """Whether ``quality=...`` replaces the model's own quality (``norm``, ``serfiq``, ``random``)."""
    q = cfg.get("quality")
    return isinstance(q, DictConfig) and "_target_" in q


def wrap_quality(method: FaceModule, quality_cfg: Any) -> FaceModule:
    """Replace the model's quality by another source (``quality=serfiq|norm``; ``own`` keeps it)."""
    if quality_cfg is None or not isinstance(quality_cfg, DictConfig) or "_target_" not in quality_cfg:
        return method
    wrapped = _instantiate(quality_cfg)(method)
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
