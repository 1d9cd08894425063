"""Every option of every config group composes, and its node instantiates."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fiqa.tasks import build as B
from tests.conftest import CONF, compose_cfg

SMALL = ["data.train.num_identities=4", "data.train.images_per_identity=2", "val.synth.dataset.num_pairs=20"]


def _options(group: str) -> list:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        opts = GlobalHydra.instance().config_loader().get_group_options(group)
    return sorted(opts)


def test_groups_have_the_expected_options():
    assert {"arcface", "cosface", "crfiqa"} <= set(_options("method"))
    assert {
        "iresnet18",
        "iresnet34",
        "iresnet50",
        "iresnet100",
        "iresnet200",
        "iresnet_tiny",
        "mobilefacenet",
        "timm",
    } <= set(_options("backbone"))
    assert {"arcface", "cosface", "combined"} <= set(_options("head"))
    assert {"default", "cpu", "gpu", "ddp", "ddp_sim"} <= set(_options("trainer"))
    assert {"csv", "tensorboard", "wandb"} <= set(_options("logger"))
    assert {"fdr", "overfit", "limit"} <= set(_options("debug"))


@pytest.mark.parametrize("method", _options("method"))
def test_every_method_builds(method, tmp_path):
    cfg = compose_cfg([f"method={method}", *SMALL], tmp_path)
    if method == "serfiq":  # training-free: task=eval on a checkpoint, with the SER-FIQ quality source
        assert cfg.task == "eval" and cfg.method is None and cfg.quality._target_.endswith("SERFIQ")
        return
    _, view = B.build_val(cfg)
    m = B.build_method(cfg, view)
    variants = {"magface_finetune": "magface", "magcosface": "magface"}  # presets of one class
    assert m.__class__.__name__.lower() == variants.get(method, method).replace("_", "")


@pytest.mark.parametrize("backbone", [b for b in _options("backbone")])
def test_every_backbone_composes_and_instantiates(backbone, tmp_path):
    cfg = compose_cfg([f"backbone={backbone}", *SMALL], tmp_path)
    if backbone in ("iresnet50", "iresnet100", "iresnet200", "ir50", "ir101", "eqface_resnet50", "eqface_resnet100"):
        import torch

        with torch.device("meta"):  # big ones: structure only, no memory or init time
            net = instantiate(cfg.backbone)
    else:
        net = instantiate(cfg.backbone)
    assert net.embedding_dim == cfg.backbone.embedding_dim


# Options that read files; tests/test_real_data.py builds each of them on files it writes.
FILE_OPTIONS = {
    "data": {"mxrec", "ms1mv2", "ms1mv3", "casia_webface", "webface4m", "glint360k", "imagefolder", "filelist"},
    "val": {"lfw", "agedb_30", "cfp_fp", "cfp_ff", "calfw", "cplfw", "xqlfw", "tinyface", "scface", "ijbb", "ijbc"},
}


@pytest.mark.parametrize(
    "group", ["head", "optim", "data", "val", "logger", "callbacks", "debug", "experiment", "augment"]
)
def test_every_option_of_group_composes_and_instantiates(group, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for option in sorted(set(_options(group)) - FILE_OPTIONS.get(group, set())):
        overrides = [f"{group}={option}"] if group != "val" else [f"val=[{option}]"]
        if group == "experiment":  # paper-scale experiments, built on the embedded data and a tiny net
            overrides += ["backbone=iresnet_tiny", "data=synthface", "trainer=cpu", "val=[synth]"]
        cfg = compose_cfg([*overrides, *SMALL] if group not in ("val",) else overrides, tmp_path)
        if group == "experiment" and cfg.get("method") is None:  # training-free (SER-FIQ): it needs a model,
            assert cfg.task == "eval"  # and runs on one in tests/test_experiments.py
            continue
        built = B.build(cfg)
        assert built.method is not None and built.trainer is not None


@pytest.mark.parametrize("trainer", _options("trainer"))
def test_every_trainer_composes_and_instantiates(trainer, tmp_path):
    """GPU trainer configs are instantiated with accelerator=cpu on a machine without a GPU (the
    rest of the config is checked as is); they run for real in tests/test_gpu.py on a GPU."""
    import torch

    overrides = [f"trainer={trainer}", *SMALL]
    cfg = compose_cfg(overrides, tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        cfg = compose_cfg(
            [
                *overrides,
                "trainer.accelerator=cpu",
                "trainer.precision=32-true",
                "trainer.devices=1",
                "~trainer.benchmark",
            ]
            if "benchmark" in cfg.trainer
            else [*overrides, "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1"],
            tmp_path,
        )
    tcfg, compile_option = B.split_trainer_config(cfg.trainer)
    assert compile_option is False  # torch.compile is opt-in
    t = instantiate(tcfg)
    assert t is not None


def test_shared_key_names_across_heads(tmp_path):
    for head in _options("head"):
        cfg = compose_cfg([f"head={head}"], tmp_path)
        adaptive = {"magface": "u_m"}  # a margin that depends on the sample: its own keys
        assert {"s", adaptive.get(head, "margin"), "num_classes", "embedding_dim"} <= set(cfg.head), head


def test_method_picks_its_head_but_command_line_wins(tmp_path):
    assert compose_cfg(["method=cosface"], tmp_path).head._target_.endswith("CosFaceHead")
    assert compose_cfg(["method=cosface", "head=arcface"], tmp_path).head._target_.endswith("ArcFaceHead")


def test_val_empty_list_removes_the_node(tmp_path):
    cfg = compose_cfg(["val=[]"], tmp_path)
    assert not cfg.get("val")


def test_run_name_from_choices(tmp_path):
    cfg = compose_cfg(["method=arcface", "backbone=iresnet18"], tmp_path)
    assert cfg.run_name == "arcface-iresnet18"
    assert isinstance(cfg.data, DictConfig) and cfg.data.num_classes == cfg.data.train.num_identities
