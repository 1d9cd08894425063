"""The real main.py, end to end, on a tiny SynthFace (subprocesses; nothing mocked)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers.run_main import TINY, TINY_VAL, read_metrics, run_main


@pytest.mark.parametrize("method", ["arcface", "cosface", "crfiqa"])
def test_fast_dev_run_every_method(method, tmp_path):
    proc = run_main(f"method={method}", "debug=fdr", *TINY, *TINY_VAL, f"hydra.run.dir={tmp_path}")
    assert "fast_dev_run" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def test_train_writes_metrics_plots_and_checkpoints(trained):
    m = read_metrics(trained)
    for key in (
        "val/synth/acc",
        "val/synth/acc_std",
        "val/synth/val@far1e-3",
        "val/synth/quality_spearman",
        "val/synth/fnmr@fmr1e-2",
        "val/synth/fnmr@fmr1e-2_reject0.2",
        "val/acc_mean",
    ):
        assert key in m, key
    assert 0.0 <= m["val/synth/acc"] <= 1.0
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert {r["metric"]: float(r["value"]) for r in rows}["val/synth/acc"] == pytest.approx(m["val/synth/acc"])
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    assert (trained / "quality_vs_degradation_synth.png").stat().st_size > 1000
    assert (trained / "quality_hist_synth.png").is_file()
    assert (trained / "csv" / "metrics.csv").is_file()


def test_eval_reproduces_train_metrics_from_the_checkpoint_alone(trained, tmp_path):
    # no model/data options on the command line: everything comes from the checkpoint's stored config
    run_main(
        "task=eval",
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
        "trainer=cpu",
        "data.num_workers=0",
        "val.synth.dataset.num_pairs=200",
        "val.synth.dataset.num_identities=50",
        "callbacks.progress=null",
        f"hydra.run.dir={tmp_path}",
    )
    assert read_metrics(tmp_path) == pytest.approx(read_metrics(trained), abs=1e-6)


def test_resume_from_last_checkpoint(trained, tmp_path):
    last = trained / "checkpoints" / "last.ckpt"
    run_main(
        *TINY,
        *TINY_VAL,
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        f"ckpt_path={last}",
        f"hydra.run.dir={tmp_path}",
    )
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    train_rows = [r for r in rows if r.get("train/loss")]
    epochs = {int(r["epoch"]) for r in train_rows}
    assert epochs == {1}, f"resumed run should train epoch 1 only, trained {epochs}"
    steps = [int(r["step"]) for r in train_rows]
    assert min(steps) >= 4  # 16 ids x 8 images / 32 = 4 steps per epoch were done before the resume


def test_overfit_drives_the_loss_down(tmp_path):
    run_main(
        *TINY,
        "debug=overfit",
        "trainer.max_epochs=15",
        "method=arcface",
        "trainer.log_every_n_steps=1",
        "val=[]",
        f"hydra.run.dir={tmp_path}",
    )
    rows = [r for r in csv.DictReader((tmp_path / "csv" / "metrics.csv").open()) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0], losses


def test_multirun_sweep_gives_each_job_its_dir(tmp_path):
    # the default sweep dir (logs/train/multiruns/<time>/<job>), moved under tmp_path by FIQA_ROOT
    run_main("-m", "method=arcface,crfiqa", *TINY, *TINY_VAL, env={"FIQA_ROOT": str(tmp_path)})
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    dirs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [d.name for d in dirs] == ["0", "1"]
    for d in dirs:
        assert "val/synth/acc" in read_metrics(d)
    cfgs = [(d / ".hydra" / "overrides.yaml").read_text() for d in dirs]
    assert "method=arcface" in cfgs[0] and "method=crfiqa" in cfgs[1]


def test_single_run_goes_to_the_default_run_dir(tmp_path):
    run_main("debug=fdr", *TINY, *TINY_VAL, env={"FIQA_ROOT": str(tmp_path), "FIQA_RUN_ID": "fixed"})
    assert (tmp_path / "logs" / "train" / "runs" / "fixed" / ".hydra" / "config.yaml").is_file()


def test_wandb_offline_without_key(tmp_path):
    run_main("logger=wandb", "debug=limit", *TINY, "val=[]", f"hydra.run.dir={tmp_path}")
    runs = list(Path(tmp_path).glob("wandb/offline-run-*"))
    assert len(runs) == 1, list(Path(tmp_path).rglob("*"))[:20]


def test_init_ckpt_copies_the_backbone_and_refuses_a_misfit(trained, tmp_path):
    import torch

    from fiqa.tasks import build as B
    from fiqa.tasks.train import init_backbone
    from tests.conftest import compose_cfg

    ckpt = trained / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(["method=magface_finetune", "data.train.num_identities=16", f"init_ckpt={ckpt}",
                       "val.synth.dataset.num_pairs=20"], tmp_path)  # fmt: skip
    built = B.build(cfg)
    init_backbone(built.method, cfg)
    source = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for k, v in built.method.backbone.state_dict().items():
        torch.testing.assert_close(v, source[f"backbone.{k}"])
    assert built.method.head.l_a == 1.0  # the fine-tuning preset
    bad = compose_cfg(["backbone=mobilefacenet", f"init_ckpt={ckpt}", "val.synth.dataset.num_pairs=20"], tmp_path)
    with pytest.raises(ValueError, match="does not fit backbone="):
        init_backbone(B.build(bad).method, bad)
