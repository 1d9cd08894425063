from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose_cfg(overrides=(), output_dir="/tmp/fiqa-test"):
    """The real composed config, with the hydra node set so ${hydra:...} resolves."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(Path(CONF).parent)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides):
        return compose_cfg(overrides, output_dir=tmp_path)

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short CR-FIQA training run (tiny backbone, SynthFace) shared by every test that needs a
    trained fiqa checkpoint: ``<run>/checkpoints/last.ckpt``."""
    from tests.helpers.run_main import TINY, TINY_VAL, run_main

    run = tmp_path_factory.mktemp("train")
    run_main(*TINY, *TINY_VAL, f"hydra.run.dir={run}")
    return run
