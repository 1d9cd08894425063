"""Every paper recipe (``conf/experiment/*.yaml``) composes and runs two optimizer steps with the stand-in
overrides its ``experiments/<paper>/README.md`` documents (SynthFace, a tiny backbone, CPU), so a recipe
cannot rot. In process (compose + ``fiqa.tasks.run``), a few seconds each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))

#: the documented stand-in: paper-scale data, backbone and schedule replaced by a CPU-sized run
STAND_IN = [
    "data=synthface",
    "data.train.num_identities=16",
    "data.train.images_per_identity=8",
    "data.num_classes=16",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer=cpu",
    "trainer.precision=32-true",
    "trainer.max_steps=2",
    "trainer.max_epochs=1",
    "val=[]",
    "callbacks.model_checkpoint.monitor=null",
    "callbacks.progress=null",
    "callbacks.quality_plots=null",
    "logger=csv",
]
#: per recipe: its backbone stand-in (default iresnet_tiny) and what else it needs
EXTRA: dict[str, list[str]] = {"serfiq_ms1mv2_r100": ["backbone=iresnet_tiny", "val=[synth]"]}
#: recipes that need another recipe's checkpoint: {name: (config key, the recipe that makes it)}
NEEDS: dict[str, tuple[str, str]] = {
    "eqface_ms1mv2_r100_step2": ("method.step1_ckpt", "eqface_ms1mv2_r100_step1"),
    "eqface_ms1mv2_r100_step3": ("method.teacher_ckpt", "eqface_ms1mv2_r100_step2"),
}
#: training-free recipes: they evaluate an FR model given as ckpt_path
ON_A_MODEL: set[str] = {"serfiq_ms1mv2_r100"}


def _overrides(name: str) -> list[str]:
    extra = EXTRA.get(name, ["backbone=iresnet_tiny"])
    return [f"experiment={name}", *STAND_IN, *extra]


def _run(name: str, out: Path, *more: str) -> Path:
    from fiqa.tasks import run

    cfg = compose_cfg([*_overrides(name), *more], output_dir=out)
    run(cfg)
    return out


def test_every_recipe_is_covered():
    assert EXPERIMENTS, "no conf/experiment/*.yaml"
    for name, (_, source) in NEEDS.items():
        assert name in EXPERIMENTS and source in EXPERIMENTS, name


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_recipe_runs_two_steps_on_the_stand_in(name, tmp_path, trained_run):
    chain, n = [name], name
    while n in NEEDS:  # e.g. EQFace step 3 <- step 2 <- step 1
        n = NEEDS[n][1]
        chain.insert(0, n)
    made: dict[str, Path] = {}
    for step in chain:
        more = [f"{NEEDS[step][0]}={made[NEEDS[step][1]] / 'checkpoints' / 'last.ckpt'}"] if step in NEEDS else []
        if step in ON_A_MODEL:
            more.append(f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}")
        made[step] = _run(step, tmp_path / step, *more)
    if name in ON_A_MODEL:
        assert (made[name] / "metrics.json").is_file() or any(made[name].iterdir())
        return
    ck = torch.load(made[name] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 2 and ck["fiqa_config"]["task"] == "train"
