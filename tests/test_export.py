"""ONNX export: onnxruntime matches PyTorch to 1e-4 (dynamic batch, both input modes, both exporters);
``task=export`` through the real main.py on a trained checkpoint."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.data.transforms import ToModelInput
from fiqa.export import InputConvention, export_onnx
from fiqa.export.onnx import ExportCheckError, require_onnx
from fiqa.heads.fc import ArcFaceHead
from fiqa.methods.base import FaceModule
from fiqa.methods.crfiqa import CRFIQA
from fiqa.types import BackboneOutput

MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (pip install onnx onnxscript onnxruntime)"
)
ATOL = 1e-4
# the TorchScript exporter (export.exporter=torchscript, tested here too) warns that it is deprecated
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]


def tiny_crfiqa(seed: int = 0) -> CRFIQA:
    """iresnet_tiny + CR-FIQA quality head, with BatchNorm statistics and affine parameters far from
    their initial 0/1 (calibrated on random images, then perturbed), left in training mode."""
    torch.manual_seed(seed)
    model = CRFIQA(iresnet_tiny(dropout=0.4), head=ArcFaceHead(num_classes=10, embedding_dim=128))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None  # cumulative average: running stats = the statistics of the batches below
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 112, 112))
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean.add_(0.1 * torch.randn_like(bn.running_mean))
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.4))
            bn.weight.uniform_(0.6, 1.4)
            bn.bias.uniform_(-0.2, 0.2)
        model.quality_head.bias.fill_(0.3)
    return model


def rgb_batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


@needs_onnx
@pytest.mark.parametrize(
    "normalize_input,color,exporter",
    [(False, "rgb", "dynamo"), (True, "bgr", "dynamo"), (True, "rgb", "torchscript"), (False, "bgr", "torchscript")],
)
def test_onnxruntime_matches_pytorch(tmp_path, normalize_input, color, exporter):
    import onnx
    import onnxruntime as ort

    model = tiny_crfiqa()
    conv = {"color": color, "mean": 127.5, "std": 127.5} if color == "rgb" else {"color": color, "mean": 120, "std": 64}
    out = tmp_path / "m.onnx"
    info = export_onnx(model, out, conv, normalize_input=normalize_input, exporter=exporter)

    assert model.training and model.head is not None  # the caller's module is left as it was
    assert info["max_abs_diff"] <= ATOL and info["opset"] == 17 and info["check_batch_sizes"] == [1, 3]
    desc = json.loads((tmp_path / "m.onnx.json").read_text())
    assert desc == json.loads(json.dumps(info))
    assert (desc["color"], desc["mean"], desc["size"], desc["normalize_input"]) == (
        color, float(conv["mean"]), 112, normalize_input,
    )  # fmt: skip
    assert desc["output_names"] == ["embedding", "quality"]
    assert desc["output_shapes"] == {"embedding": ["batch", 128], "quality": ["batch"]}

    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["embedding", "quality"]
    assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # a symbolic (dynamic) batch

    # the reference: the data pipeline's own transform, then the PyTorch model in eval mode
    to_input = ToModelInput(color, conv["mean"], conv["std"])
    model.eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        rgb = rgb_batch(n, seed=n)
        x = torch.stack([to_input(img) for img in rgb])
        with torch.no_grad():
            ref = model(x)
        feed = rgb.transpose(0, 3, 1, 2).astype(np.float32) if normalize_input else x.numpy()
        emb, q = session.run(None, {"images": feed})
        assert emb.shape == (n, 128) and q.shape == (n,)
        np.testing.assert_allclose(emb, ref.embedding.numpy(), rtol=0, atol=ATOL)
        np.testing.assert_allclose(q, ref.quality.numpy(), rtol=0, atol=ATOL)
        assert ref.embedding.abs().max() > 0.5 and (n == 1 or ref.quality.std() > 1e-3)  # non-trivial outputs


@needs_onnx
def test_static_batch_and_default_quality(tmp_path):
    import onnxruntime as ort

    model = FaceModule(iresnet_tiny())  # quality = the embedding norm (a ReduceL2 in the graph)
    model.input_convention = {"color": "rgb", "mean": 127.5, "std": 127.5}  # as load_model sets it
    info = export_onnx(model, tmp_path / "s.onnx", None, dynamic_batch=False, batch_size=2, exporter="torchscript")
    assert info["input_shape"] == [2, 3, 112, 112] and info["check_batch_sizes"] == [2]
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 112, 112]
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ref = model.eval()(x)
    emb, q = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(q, ref.quality.numpy(), rtol=0, atol=ATOL)


class NoisyQuality(FaceModule):
    def quality(self, out: BackboneOutput) -> torch.Tensor:
        return torch.rand(out.embedding.shape[0])  # not reproducible in another runtime


@needs_onnx
def test_check_fails_with_a_clear_error(tmp_path):
    with pytest.raises(ExportCheckError, match=r"onnxruntime differs from PyTorch by .* export.atol=0.0001"):
        export_onnx(NoisyQuality(iresnet_tiny()), tmp_path / "n.onnx", {}, exporter="torchscript")
    info = export_onnx(NoisyQuality(iresnet_tiny()), tmp_path / "n.onnx", {}, exporter="torchscript", check=False)
    assert info["max_abs_diff"] is None


def test_importing_the_export_code_imports_no_onnx_package():
    code = (
        "import sys, fiqa.export, fiqa.tasks.export; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxscript', 'onnxruntime')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_missing_packages_name_the_pip_command(monkeypatch):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"needs onnxscript: pip install onnx onnxscript onnxruntime"):
        require_onnx("dynamo")


def test_input_convention_errors_and_config():
    with pytest.raises(ValueError, match=r"color must be one of \['rgb', 'bgr'\]"):
        InputConvention(color="yuv")
    with pytest.raises(ValueError, match="unknown keys"):
        InputConvention.coerce({"colour": "rgb"})
    with pytest.raises(ValueError, match="exporter='onnx' is not valid"):
        export_onnx(FaceModule(iresnet_tiny()), "x.onnx", {}, exporter="onnx")
    c = InputConvention.from_config(
        {"data": {"color": "bgr", "normalize_mean": 0, "normalize_std": 255}, "backbone": {"input_size": 112}}
    )
    assert c.to_dict() == {"color": "bgr", "mean": 0.0, "std": 255.0, "size": 112}
    rgb = torch.arange(3.0).view(1, 3, 1, 1)
    assert c.normalize(rgb).flatten().tolist() == pytest.approx([2 / 255, 1 / 255, 0.0])


@needs_onnx
@pytest.mark.slow  # CI time: runs in make test-full
def test_task_export_through_main(trained_run, tmp_path):
    import onnxruntime as ort

    from fiqa.methods.loading import load_model
    from tests.helpers.run_main import run_main

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "onnx" / "model.onnx"
    run_main("task=export", f"ckpt_path={ckpt}", f"export.out={out}", "export.normalize_input=true",
             f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    desc = json.loads((tmp_path / "onnx" / "model.onnx.json").read_text())
    assert desc["source"] == str(ckpt) and desc["max_abs_diff"] <= ATOL and desc["opset"] == 17
    assert (desc["color"], desc["mean"], desc["std"], desc["size"]) == ("rgb", 127.5, 127.5, 112)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["export/max_abs_diff"] == pytest.approx(desc["max_abs_diff"])

    model = load_model(str(ckpt)).eval()
    rgb = rgb_batch(4, seed=0)
    x = torch.stack([ToModelInput()(img) for img in rgb])
    with torch.no_grad():
        ref = model(x)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    emb, q = session.run(None, {"images": rgb.transpose(0, 3, 1, 2).astype(np.float32)})
    np.testing.assert_allclose(emb, ref.embedding.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(q, ref.quality.numpy(), rtol=0, atol=ATOL)
