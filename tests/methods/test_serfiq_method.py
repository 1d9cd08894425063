"""method=serfiq / quality=serfiq on a trained fiqa checkpoint, through the real main.py and in process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiqa.methods.loading import load_model
from fiqa.methods.serfiq import SERFIQ
from fiqa.quality.serfiq_torch import quality_from_embeddings, stochastic_embeddings
from tests.helpers.run_main import read_metrics, run_main

SMALL = ["val.synth.dataset.num_pairs=40", "val.synth.dataset.num_identities=20", "data.val_batch_size=40",
         "data.num_workers=0", "trainer=cpu", "callbacks.progress=null"]  # fmt: skip


@pytest.mark.slow  # CI time: runs in make test-full
def test_method_serfiq_evaluates_a_trained_checkpoint(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    bad = run_main("method=serfiq", f"ckpt_path={ckpt}", *SMALL, f"hydra.run.dir={tmp_path / 'a'}", check=False)
    assert bad.returncode != 0 and "quality.p" in bad.stderr  # trained without dropout: p must be given
    run_main("method=serfiq", f"ckpt_path={ckpt}", "quality.p=0.5", "quality.T=10", *SMALL,
             f"hydra.run.dir={tmp_path / 'b'}")  # fmt: skip
    m = read_metrics(tmp_path / "b")
    assert "val/synth/quality_spearman" in m and -1.0 <= m["val/synth/quality_spearman"] <= 1.0
    own = run_main("task=eval", f"ckpt_path={ckpt}", *SMALL, f"hydra.run.dir={tmp_path / 'c'}")
    assert own.returncode == 0
    # SER-FIQ keeps the model's embeddings: the verification metrics are the model's own
    assert read_metrics(tmp_path / "c")["val/synth/acc"] == m["val/synth/acc"]


def test_serfiq_wrapper_equals_the_core_and_keeps_the_embedding(trained_run):
    model = load_model(str(trained_run / "checkpoints" / "last.ckpt")).eval()
    wrapped = SERFIQ(model, T=8, p=0.3, seed=1).eval()
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        out = wrapped(x)
        np.testing.assert_allclose(out.embedding.numpy(), model(x).embedding.numpy(), rtol=1e-5, atol=1e-6)
        fmap = model.backbone.trunk(x)
        ref = quality_from_embeddings(
            stochastic_embeddings(model.backbone, fmap, 8, 0.3, torch.Generator().manual_seed(1))
        )
    np.testing.assert_allclose(out.quality.numpy(), ref.float().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        SERFIQ(model, p=0.3, normalize="minmax")
