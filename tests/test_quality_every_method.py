"""task=quality's model path works with every trainable method's checkpoint (built from its config,
saved as task=train saves it, loaded by load_model and scored)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiqa.quality import score
from fiqa.tasks import build as B
from tests.conftest import compose_cfg
from tests.helpers.realdata import synth_images

METHODS = ["arcface", "cosface", "crfiqa", "magface", "qmagface", "adaface", "eqface", "qgface"]


@pytest.mark.parametrize("method", METHODS)
def test_a_checkpoint_of_every_method_scores_images(method, tmp_path):
    cfg = compose_cfg([f"method={method}", "data.train.num_identities=4", "data.train.images_per_identity=2",
                       "val.synth.dataset.num_pairs=20"], tmp_path)  # fmt: skip
    _, view = B.build_val(cfg)
    model = B.build_method(cfg, view)
    path = tmp_path / "m.ckpt"
    torch.save({"fiqa_config": B.resolved_config(cfg), "state_dict": model.state_dict()}, path)
    images = np.stack([im for im, _ in synth_images(2, 2)])
    q = score(images, str(path), device="cpu")
    assert q.shape == (4,) and np.isfinite(q).all()
    loaded = B.load_model(str(path))
    conv = loaded.input_convention
    assert conv["color"] == cfg.data.color and conv["std"] == cfg.data.normalize_std
