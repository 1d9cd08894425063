"""Every released layout through every door: the same file gives the same embeddings and qualities via
the command line (task=quality), the Python API (``fiqa.quality.score`` on the path, and on
``to_face_module(load_released(...))``) and the exported ONNX model, and all of them equal the
original's own way of feeding the network (its channel order and normalisation, applied here by hand).

State_dicts carry the originals' key names (``tests/interop/originals.py``); the images are real faces
(scikit-image's astronaut, matplotlib's Grace Hopper, insightface's t1.jpg) aligned to 112x112, whose
colour channels differ, so a BGR model fed RGB shows."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import fiqa.quality
from fiqa.data.align import norm_crop
from fiqa.detect import detect
from fiqa.interop import load_released
from fiqa.methods.loading import load_model
from fiqa.methods.released import to_face_module
from fiqa.quality.scoring import score_reader
from tests.helpers.photos import astronaut, grace_hopper, insightface, write_rgb
from tests.helpers.run_main import run_main
from tests.interop import originals as O
from tests.interop.test_arcface_torch_mbf_vit import mbf_state, vit_state

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _he(sd):
    """Conv and linear weights rescaled to He's variance (2 / fan-in) and BN scales moved to 1 + N(0, 0.1),
    so the output depends on the input: with originals.py's N(0, 0.1) values everywhere a tiny net's
    embedding is the same for every image."""
    for k, v in list(sd.items()):
        if k.endswith("weight") and v.dim() >= 2:
            sd[k] = v / 0.1 * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(".weight") and k[: -len("weight")] + "running_var" in sd:
            sd[k] = 1.0 + v
    return sd


def _iresnet(qs=False):
    return _he(O.insightface_iresnet((1, 1, 1, 1), O.TINY, emb=8, side=7, qs=qs))


def _ir():
    return _he(O.adaface_ir((1, 1, 1, 1), O.TINY, emb=8, side=7))


def _qgface():
    sd = O.prefixed(_ir(), "backbone.")
    g = torch.Generator().manual_seed(5)
    sd["head.kernel"] = torch.randn(8, 10, generator=g)  # AdaFace head of 10 classes, its EMA statistics
    sd["head.batch_mean"], sd["head.batch_std"] = torch.tensor([20.0]), torch.tensor([100.0])
    sd["queue_feature"], sd["queue_label"] = torch.randn(8, 16, generator=g), torch.zeros(16)
    return {"state_dict": sd, "epoch": 3}


# name -> (file name, object saved, quality file object or None, original's colour order, mean, std)
LAYOUTS = {
    "arcface_torch": ("model.pt", lambda: _iresnet(), None, "rgb", 127.5, 127.5),
    "crfiqa": ("32572backbone.pth", lambda: _iresnet(qs=True), None, "rgb", 127.5, 127.5),
    "magface_dp": ("magface_epoch_00025.pth", lambda: {"state_dict": O.prefixed(_iresnet(), "module.features.")},
                   None, "bgr", 0.0, 255.0),
    "magface_ddp": ("magface_ddp.pth", lambda: {"state_dict": O.prefixed(_iresnet(), "features.module.")},
                    None, "bgr", 0.0, 255.0),
    "adaface": ("adaface_ir18.ckpt", lambda: {"state_dict": O.prefixed(_ir(), "model.")}, None, "bgr", 127.5, 127.5),
    "qgface": ("qgface.ckpt", _qgface, None, "bgr", 127.5, 127.5),
    "eqface": ("backbone.pth", lambda: O.prefixed(_he(O.eqface_resnet((1, 1, 1, 1), O.TINY, emb=8, side=7)), "module."),
               lambda: O.prefixed(O.eqface_quality(16 * 7 * 7, hidden=4), "module."), "rgb", 127.5, 127.5),
    "arcface_torch_mbf": ("model.pt", lambda: mbf_state(2, (2, 1, 2, 1), 8, gdc=7), None, "rgb", 127.5, 127.5),
    "arcface_torch_vit": ("model.pt", lambda: vit_state(16, 2, 8), None, "rgb", 127.5, 127.5),
}  # fmt: skip


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Four real faces, aligned 112x112 RGB, written as PNG (lossless) into a folder."""
    crops = []
    for img in (astronaut(), grace_hopper(), insightface("t1.jpg")):
        found = detect(img)
        crops += [norm_crop(img, found.landmarks[k]) for k in range(min(2, len(found)))]
    crops = crops[:4]
    root = tmp_path_factory.mktemp("faces")
    for i, c in enumerate(crops):
        write_rgb(root / f"face{i}.png", c)
    return root, np.stack(crops)


def _original(released, crops, color, mean, std):
    """What the original repository computes: pixels in its channel order, (x - mean) / std, its net."""
    x = crops[..., ::-1] if color == "bgr" else crops
    t = (torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() - mean) / std
    with torch.no_grad():
        out = released.backbone(t, return_feature_map=released.quality_kind == "eqface")
        if released.quality_kind == "head":
            q = released.quality_head(out.embedding).squeeze(1)
        elif released.quality_kind == "eqface":
            q = released.quality_head(out.feature_map)
        else:
            q = out.embedding.norm(dim=1)
    return out.embedding.numpy(), q.numpy()


#: the layouts whose door test runs in the default suite; the others (the same doors, another key layout) in
#: make test-full (CI time)
FAST_DOORS = ("crfiqa", "magface_dp", "arcface_torch")


@pytest.mark.parametrize("name", [n if n in FAST_DOORS else pytest.param(n, marks=pytest.mark.slow) for n in LAYOUTS])
def test_one_file_every_door(name, faces, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (a dev dependency) runs the exported model")
    import onnxruntime as ort

    from fiqa.export.onnx import export_onnx

    fname, make, make_q, color, mean, std = LAYOUTS[name]
    folder, crops = faces
    path = tmp_path / fname
    torch.save(make(), path)
    qpath = None
    if make_q is not None:
        qpath = tmp_path / "quality.pth"
        torch.save(make_q(), qpath)
    released = load_released(path, quality_path=qpath)
    want_e, want_q = _original(released, crops, color, mean, std)
    other_e, other_q = _original(released, crops, "bgr" if color == "rgb" else "rgb", mean, std)
    assert np.abs(want_e - other_e).max() > 1e-2 and np.ptp(want_q) > 1e-3  # the images and the colour order matter

    # the Python API on the path, and on the module made from the released file
    np.testing.assert_allclose(fiqa.quality.score(str(folder), str(path), quality_path=qpath), want_q, **TOL)
    model = to_face_module(load_released(path, quality_path=qpath))
    assert model.input_convention == {"color": color, "mean": 127.5, "std": 127.5}
    q, e = score_reader(model, fiqa.quality.scoring._as_reader(str(folder)), return_embeddings=True, device="cpu")
    np.testing.assert_allclose(q, want_q, **TOL)
    np.testing.assert_allclose(e, want_e, **TOL)

    # the command line
    extra = [f"quality_ckpt_path={qpath}"] if qpath else []
    run_main("task=quality", f"ckpt_path={path}", *extra, f"score.input={folder}", "score.save_embeddings=true",
             "score.num_workers=0", "score.progress=false", "score.histogram=false",
             f"hydra.run.dir={tmp_path / 'q'}")  # fmt: skip
    with open(tmp_path / "q" / "qualities.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path_or_key"] for r in rows] == [f"face{i}.png" for i in range(len(crops))]
    np.testing.assert_allclose([float(r["quality"]) for r in rows], want_q, rtol=1e-6, atol=1e-6)  # 8 digits
    np.testing.assert_allclose(np.load(tmp_path / "q" / "embeddings.npy"), want_e, **TOL)

    # the exported ONNX model, fed RGB pixels: channel order and normalisation are in the graph
    out = tmp_path / "model.onnx"
    export_onnx(load_model(str(path), quality_path=None if qpath is None else str(qpath)), out, None,
                normalize_input=True, check=False)  # fmt: skip
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pixels = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: pixels})))
    np.testing.assert_allclose(got["embedding"], want_e, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["quality"], want_q, rtol=1e-4, atol=1e-5)


def test_bgr_models_get_bgr_through_fiqa_quality_score(faces, tmp_path):
    """A MagFace model scored through the Python API: the same as feeding it BGR x/255 by hand, and not what
    RGB would give (the faces' channels differ enough to move the embedding norm)."""
    _, crops = faces
    path = tmp_path / "magface.pth"
    torch.save(LAYOUTS["magface_dp"][1](), path)
    released = load_released(path)
    bgr_e, bgr_q = _original(released, crops, "bgr", 0.0, 255.0)
    rgb_e, rgb_q = _original(released, crops, "rgb", 0.0, 255.0)
    np.testing.assert_allclose(fiqa.quality.score(crops, str(path)), bgr_q, **TOL)
    model = to_face_module(released)
    np.testing.assert_allclose(fiqa.quality.score(crops, model), bgr_q, **TOL)
    _, e = score_reader(model, fiqa.quality.scoring.ArrayImages(crops), return_embeddings=True, device="cpu")
    np.testing.assert_allclose(e, bgr_e, **TOL)
    assert np.abs(e - rgb_e).max() > 1e3 * TOL["atol"]  # RGB would have given other embeddings


def test_a_model_without_input_convention_cannot_be_scored(faces):
    from fiqa.backbones.iresnet import IResNet
    from fiqa.methods.base import FaceModule

    _, crops = faces
    bare = FaceModule(IResNet(layers=(1, 1, 1, 1), widths=O.TINY, embedding_dim=8))
    with pytest.raises(ValueError, match="no input_convention"):
        fiqa.quality.score(crops, bare)
    bare.input_convention = {"color": "bgr", "mean": 127.5, "std": 127.5}
    assert fiqa.quality.score(crops, bare).shape == (len(crops),)


def test_eqface_backbone_without_its_quality_file_is_refused(tmp_path, faces):
    _, crops = faces
    path = tmp_path / "backbone.pth"
    torch.save(LAYOUTS["eqface"][1](), path)
    with pytest.raises(ValueError, match="quality.pth"):
        fiqa.quality.score(crops, str(path))
    proc = run_main("task=quality", f"ckpt_path={path}", f"score.input={tmp_path}", f"hydra.run.dir={tmp_path / 'q'}",
                    check=False)  # fmt: skip
    assert proc.returncode != 0 and "quality_ckpt_path" in proc.stderr
