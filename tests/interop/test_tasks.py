"""Released checkpoints through the real main.py: task=eval and task=quality on a CR-FIQA-layout
file (``{step}backbone.pth`` with ``qs.*``) and a MagFace-layout one."""

from __future__ import annotations

import csv

import numpy as np
import torch

from fiqa.methods.loading import load_model
from tests.helpers.realdata import synth_images, write_imagefolder
from tests.helpers.run_main import read_metrics, run_main
from tests.interop import originals as O

SMALL_VAL = ["val.synth.dataset.num_pairs=40", "val.synth.dataset.num_identities=20", "data.val_batch_size=40",
             "data.num_workers=0", "trainer=cpu", "callbacks.progress=null"]  # fmt: skip


def test_eval_and_quality_tasks_on_a_released_crfiqa_file(tmp_path):
    sd = O.insightface_iresnet((1, 1, 1, 1), O.TINY, emb=8, side=7, qs=True)
    path = tmp_path / "32572backbone.pth"
    torch.save(sd, path)
    run_main("task=eval", f"ckpt_path={path}", *SMALL_VAL, f"hydra.run.dir={tmp_path / 'e'}")
    m = read_metrics(tmp_path / "e")
    assert 0.0 <= m["val/synth/acc"] <= 1.0 and "val/synth/quality_spearman" in m
    faces = write_imagefolder(tmp_path / "faces", synth_images(2, 2))
    run_main("task=quality", f"ckpt_path={path}", f"score.input={faces}", "score.num_workers=0",
             "score.progress=false", f"hydra.run.dir={tmp_path / 'q'}")  # fmt: skip
    rows = list(csv.reader(open(tmp_path / "q" / "qualities.csv")))
    model = load_model(str(path))
    x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float().sub(127.5).div(127.5) for im, _ in
                     synth_images(2, 2)])  # fmt: skip
    with torch.no_grad():
        expected = model(x).quality.numpy()
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], expected, rtol=1e-5, atol=1e-6)


def test_a_released_magface_model_is_fed_bgr_x_over_255(tmp_path):
    sd = O.insightface_iresnet((1, 1, 1, 1), O.TINY, emb=8, side=7)
    path = tmp_path / "magface_epoch_00025.pth"
    torch.save({"epoch": 25, "arch": "iresnet100", "state_dict": O.prefixed(sd, "features.module.")}, path)
    model = load_model(str(path))
    assert model.input_convention == {"color": "bgr", "mean": 127.5, "std": 127.5}
    img = torch.rand(1, 3, 112, 112) * 255
    with torch.no_grad():
        ours = model((img - 127.5) / 127.5).embedding  # fiqa's contract, BGR as the convention says
        direct = model.backbone(img / 255.0).embedding  # MagFace's own input: BGR, x / 255
    torch.testing.assert_close(ours, direct, rtol=1e-4, atol=1e-5)
