"""DDP simulated with spawned CPU processes (gloo): training works, and validation gathers and
de-duplicates so the metrics equal the single-process ones for the same checkpoint."""

import pytest

from tests.helpers.run_main import TINY, TINY_VAL, read_metrics, run_main


@pytest.mark.slow
def test_ddp_sim_trains_and_validates(tmp_path):
    run_main(*TINY, *TINY_VAL, "trainer=ddp_sim", f"hydra.run.dir={tmp_path}")
    assert "val/synth/acc" in read_metrics(tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow  # 30-60 s on 2 cores: make test-full (CI time)
def test_ddp_validation_equals_single_process(tmp_path):
    train = tmp_path / "train"
    run_main(*TINY, *TINY_VAL, "method=arcface", f"hydra.run.dir={train}")
    ckpt = train / "checkpoints" / "last.ckpt"
    common = [
        "task=eval",
        f"ckpt_path={ckpt}",
        "data.num_workers=0",
        "callbacks.progress=null",
        # 199 pairs = 398 images: 3 ranks get 133 each, so the sampler pads one duplicate
        "val.synth.dataset.num_pairs=199",
        "val.synth.dataset.num_identities=50",
        "data.val_batch_size=64",
    ]
    run_main(*common, "trainer=cpu", f"hydra.run.dir={tmp_path / 'one'}")
    run_main(*common, "trainer=ddp_sim", "trainer.devices=3", f"hydra.run.dir={tmp_path / 'three'}")
    one, three = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "three")
    assert set(one) == set(three)
    assert three == pytest.approx(one, abs=1e-5)
