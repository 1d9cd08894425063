"""Bad input gets a clear error that names the key, option or file (through the real main.py)."""

import pytest

from tests.helpers.run_main import TINY, run_main


def _fails(*overrides, tmp_path):
    proc = run_main(*overrides, f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_unknown_option_lists_the_choices(tmp_path):
    out = _fails("method=crfiqa2", tmp_path=tmp_path)
    assert "method/crfiqa2" in out and "crfiqa" in out and "arcface" in out


def test_misspelled_key_is_named(tmp_path):
    out = _fails("head.margn=0.3", tmp_path=tmp_path)
    assert "margn" in out and "head" in out


def test_eval_without_ckpt_path(tmp_path):
    out = _fails("task=eval", tmp_path=tmp_path)
    assert "ckpt_path" in out


def test_eval_with_missing_checkpoint_file(tmp_path):
    out = _fails("task=eval", f"ckpt_path={tmp_path}/nope.ckpt", tmp_path=tmp_path)
    assert "nope.ckpt" in out and "no such file" in out


def test_eval_without_val_set(tmp_path):
    out = _fails("task=eval", f"ckpt_path={tmp_path}/x.ckpt", "val=[]", tmp_path=tmp_path)
    assert "val set" in out


@pytest.mark.slow  # CI time: runs in make test-full
def test_batch_must_divide_by_world_size(tmp_path):
    out = _fails(*TINY, "trainer=ddp_sim", "data.batch_size=33", tmp_path=tmp_path)
    assert "data.batch_size=33" in out and "world size 2" in out


def test_unknown_task(tmp_path):
    out = _fails("task=fly", tmp_path=tmp_path)
    assert "task='fly'" in out and "train" in out and "eval" in out


def test_unknown_degradation_kind(tmp_path):
    out = _fails(*TINY, "+data.train.degradations.haze=1.0", tmp_path=tmp_path)
    assert "haze" in out and "valid choices" in out


def test_zero_batch_size_names_the_key(tmp_path):
    # it used to fail inside BatchNorm (0) or as "Invalid learning rate: -0.000390625" (-1)
    proc = run_main(*TINY, "data.batch_size=0", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "data.batch_size=0: must be a positive integer" in proc.stderr, proc.stderr[-3000:]
