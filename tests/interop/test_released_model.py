"""to_face_module: a released model runs through FaceModule's validation loop, with the
original's input normalisation applied inside and no extra state in its state_dict."""

import lightning as L
import torch
from torch.utils.data import DataLoader

from fiqa.interop import convert_released
from fiqa.methods.base import FaceModule
from fiqa.methods.released import ReleasedModel, to_face_module
from tests.interop import originals as O


def test_validation_loop_on_a_released_crfiqa_model():
    r = convert_released(O.insightface_iresnet((1, 1, 1, 1), O.TINY, emb=8, side=2, qs=True))
    model = to_face_module(r, val_sets={"toy": {"flip": True, "protocols": {}}})
    assert isinstance(model, FaceModule) and isinstance(model, ReleasedModel) and model.head is None
    assert not model.training
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "quality_head"}  # no input buffers
    data = DataLoader([{"image": torch.randn(3, 32, 32), "index": i} for i in range(6)], batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(model, dataloaders=data, verbose=False)
    res = model.val_results["toy"]
    assert (
        list(res["indices"]) == list(range(6)) and res["embeddings"].shape == (6, 8) and res["qualities"].shape == (6,)
    )


def test_input_remap_only_where_the_original_differs():
    adaface = convert_released({"state_dict": O.prefixed(O.adaface_ir((1, 1, 1, 1), O.TINY, emb=8, side=2), "model.")})
    model = to_face_module(adaface, channels_last=False)
    x = torch.randn(2, 3, 32, 32)
    assert not model.remap and model.to_original_input(x) is x
    assert model.color == "bgr"
    magface = convert_released(
        {"state_dict": O.prefixed(O.insightface_iresnet((1, 1, 1, 1), O.TINY, emb=8, side=2), "module.features.")}
    )
    model = to_face_module(magface, channels_last=False)
    torch.testing.assert_close(
        model.to_original_input(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)).flatten(),
        torch.tensor([0.0, 0.5, 1.0]),
    )
