"""The channel order fed to the network (data.color) matters to a trained model, and the preview
tool shows the images as the model sees them."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from fiqa.data.datamodule import FaceDataset
from fiqa.data.preview import main as preview_main
from fiqa.data.preview import sample_grid
from fiqa.data.transforms import ToModelInput
from fiqa.tasks import build as B
from tests.conftest import compose_cfg


def test_a_channel_swap_changes_a_trained_models_embedding(tmp_path):
    L.seed_everything(0)
    cfg = compose_cfg(
        ["method=arcface", "data.train.num_identities=8", "data.train.images_per_identity=8", "data.batch_size=16",
         "data.num_workers=0", "val.synth.dataset.num_pairs=20", "trainer=cpu"],
        tmp_path,
    )  # fmt: skip
    built = B.build(cfg)
    model, dm = built.method, built.datamodule
    dm.trainer = None
    loader = torch.utils.data.DataLoader(FaceDataset(dm.train_reader, dm.train_transform), batch_size=16, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for _ in range(4):  # 16 steps: enough to fit colours, seconds on a CPU
        for batch in loader:
            loss = sum(model.losses(model.embed(batch["image"]), batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    images = [dm.train_reader[i][0] for i in range(0, 64, 4)]
    with torch.no_grad():
        rgb = model.backbone(torch.stack([ToModelInput("rgb")(im) for im in images])).embedding
        again = model.backbone(torch.stack([ToModelInput("rgb")(im) for im in images])).embedding
        bgr = model.backbone(torch.stack([ToModelInput("bgr")(im) for im in images])).embedding
    cos = torch.nn.functional.cosine_similarity(rgb, bgr).numpy()
    np.testing.assert_allclose(torch.nn.functional.cosine_similarity(rgb, again).numpy(), 1.0, atol=1e-5)
    print("mean cos rgb vs bgr", cos.mean())
    assert cos.mean() < 0.9, cos  # the same faces, other channel order: other embeddings


def test_to_model_input_bgr_reverses_channels():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255  # pure red in RGB
    x = ToModelInput("bgr")(img)
    assert x[2].min() == 1.0 and x[0].max() == -1.0  # red goes to the last channel


def test_preview_shows_model_inputs_in_rgb(tmp_path):
    cfg = compose_cfg(["data.train.num_identities=4", "data.train.images_per_identity=2", "data.color=bgr",
                       "data.flip=0"], tmp_path)  # fmt: skip
    decoded, shown, labels, info = sample_grid(cfg, n=4, seed=0)
    assert info["color"] == "bgr" and len(shown) == 4
    for d, s in zip(decoded, shown):  # no augmentation: the de-normalised input equals the decoded RGB image
        np.testing.assert_array_equal(d, s)
    out = preview_main([f"out={tmp_path / 'g.png'}", "n=4", "data.train.num_identities=4", "augment=adaface"])
    assert out.stat().st_size > 10_000
