"""OFIQ unified-score preset: the crop geometry, the LMedS similarity, the warp/resize/crop on a synthetic
image, the BGR / 255 NCHW blob, OnnxNorm on tiny ONNX graphs built here, and unified_quality end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fiqa.quality.iso_scale import sigmoid_map
from fiqa.quality.ofiq import (
    OFIQ_ALIGNED_SIZE,
    OFIQ_CROP_COLS,
    OFIQ_CROP_ROWS,
    OFIQ_INPUT_SIZE,
    OFIQ_RESIZE,
    OFIQ_TARGET_616,
    OnnxNorm,
    landmarks5_from_wflw98,
    ofiq_align,
    ofiq_input,
    ofiq_similarity,
    unified_quality,
)

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
CROP_OFFSET = np.array([OFIQ_CROP_COLS[0], OFIQ_CROP_ROWS[0]], dtype=np.float64)  # (x, y) = (40, 33)


def similarity(deg: float, scale: float, shift) -> np.ndarray:
    th = np.deg2rad(deg)
    a = scale * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return np.hstack([a, np.asarray(shift, dtype=np.float64)[:, None]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def invert(m: np.ndarray) -> np.ndarray:
    ai = np.linalg.inv(m[:, :2])
    return np.hstack([ai, (-ai @ m[:, 2])[:, None]])


# ------------------------------------------------------------------------------------------ geometry


def test_constants():
    assert OFIQ_TARGET_616.tolist() == [[251, 272], [364, 272], [308, 336], [262, 402], [355, 402]]
    assert (OFIQ_ALIGNED_SIZE, OFIQ_RESIZE, OFIQ_INPUT_SIZE) == (616, 192, 112)
    assert OFIQ_CROP_ROWS == (33, 145) and OFIQ_CROP_COLS == (40, 152)  # bottom 192 - 47, right 192 - 40
    assert OFIQ_CROP_ROWS[1] - OFIQ_CROP_ROWS[0] == OFIQ_CROP_COLS[1] - OFIQ_CROP_COLS[0] == 112
    with pytest.raises(ValueError):
        OFIQ_TARGET_616[0, 0] = 0.0  # read-only


def test_ofiq_crop_is_arcface_like():
    # OFIQ's pipeline applied to its own point set: 616 -> 192 scales by 192/616, the crop subtracts (40, 33)
    pts = OFIQ_TARGET_616 * OFIQ_RESIZE / OFIQ_ALIGNED_SIZE - CROP_OFFSET
    dev = np.linalg.norm(pts - ARCFACE_112, axis=1)
    # per point: 0.10, 0.29, 0.03, 0.13, 0.12 px (ArcFace's eyes are not level: 51.70 vs 51.50): the max is
    # 0.29 px, so OFIQ's crop is the ArcFace 112 crop
    assert dev.max() < 0.6
    assert dev.max() == pytest.approx(0.288, abs=0.005)
    # with cv2.resize's pixel-centre convention, p -> (p + 0.5) * 192/616 - 0.5, the pixels land 0.34 px up-left
    # of that: 0.43 .. 0.51 px from the template, still within 0.6 px
    exact = (OFIQ_TARGET_616 + 0.5) * OFIQ_RESIZE / OFIQ_ALIGNED_SIZE - 0.5 - CROP_OFFSET
    assert np.linalg.norm(exact - ARCFACE_112, axis=1).max() < 0.6


def test_similarity_recovers_inverse():
    t = similarity(10.0, 0.5, (37.3, 81.9))
    landmarks = apply(t, OFIQ_TARGET_616)  # an exact similarity image of the targets
    m = ofiq_similarity(landmarks)
    assert m.shape == (2, 3) and m.dtype == np.float64
    inv = invert(t)
    # rotation/scale part to 1e-6; OpenCV fits in float32, so the translation (hundreds of px) only to ~1e-4
    assert np.abs(m[:, :2] - inv[:, :2]).max() < 1e-6
    assert np.abs(m[:, 2] - inv[:, 2]).max() < 2e-4
    assert np.abs(apply(m, landmarks) - OFIQ_TARGET_616).max() < 1e-4
    # an exactly representable case (no rotation, dyadic scale) is exact
    t2 = similarity(0.0, 0.5, (10.0, 20.0))
    assert np.allclose(ofiq_similarity(apply(t2, OFIQ_TARGET_616)), invert(t2), atol=1e-9, rtol=0)


def test_similarity_is_robust_to_one_outlier():
    # LMedS: one badly misplaced point (a wrong mouth corner) does not pull the fit
    t = similarity(-7.0, 0.8, (50.0, 40.0))
    landmarks = apply(t, OFIQ_TARGET_616)
    landmarks[4] += (40.0, -25.0)
    m = ofiq_similarity(landmarks)
    assert np.abs(apply(m, landmarks[:4]) - OFIQ_TARGET_616[:4]).max() < 1e-3


def test_similarity_errors():
    with pytest.raises(ValueError, match=r"no similarity from landmarks5 \[\[10.0, 10.0\]"):
        ofiq_similarity(np.full((5, 2), 10.0))
    with pytest.raises(ValueError, match=r"shape \(5, 2\).*got shape \(4, 2\)"):
        ofiq_similarity(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        ofiq_similarity(np.r_[OFIQ_TARGET_616[:4], [[np.nan, 1.0]]])


def test_landmarks5_from_wflw98():
    lm = np.zeros((98, 2))
    lm[60], lm[64] = (10, 20), (15, 23)  # midpoint (12.5, 21.5) -> C round (13, 22)
    lm[68], lm[72] = (40, 20), (47, 20.4)  # (47, 20.4) is first rounded to (47, 20): midpoint (43.5, 20) -> (44, 20)
    lm[54], lm[76], lm[82] = (30, 40), (20, 60), (38.5, 61)
    out = landmarks5_from_wflw98(lm)
    assert out.tolist() == [[13, 22], [44, 20], [30, 40], [20, 60], [39, 61]]
    with pytest.raises(ValueError, match=r"\(98, 2\)"):
        landmarks5_from_wflw98(np.zeros((68, 2)))


# ------------------------------------------------------------------------------------------ align


def dot_image(h: int, w: int, centres: np.ndarray, sigma: float, colour) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    blob = np.zeros((h, w))
    for cx, cy in centres:
        blob = np.maximum(blob, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)))
    return np.clip(np.rint(blob[..., None] * np.asarray(colour, dtype=np.float64)), 0, 255).astype(np.uint8)


def centroid(img2d: np.ndarray, near, r: int = 5):
    x0, y0 = (int(round(v)) for v in near)
    win = img2d[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1].astype(np.float64)
    yy, xx = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
    return np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])


def test_align_puts_dots_on_the_targets():
    t = similarity(10.0, 0.5, (90.0, 60.0))
    landmarks = apply(t, OFIQ_TARGET_616)
    img = dot_image(360, 400, landmarks, sigma=2.0, colour=(250, 120, 10))
    crop = ofiq_align(img, landmarks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    expected = OFIQ_TARGET_616 * OFIQ_RESIZE / OFIQ_ALIGNED_SIZE - CROP_OFFSET
    # cv2.resize samples pixel centres: p -> (p + 0.5) * 192/616 - 0.5, i.e. 0.34 px up-left of p * 192/616
    half_pixel = (OFIQ_TARGET_616 + 0.5) * OFIQ_RESIZE / OFIQ_ALIGNED_SIZE - 0.5 - CROP_OFFSET
    found = np.stack([centroid(crop[..., 0], e) for e in expected])
    assert np.linalg.norm(found - expected, axis=1).max() < 1.5
    assert np.linalg.norm(found - half_pixel, axis=1).max() < 0.25
    # RGB in, RGB out: the dots stay red > green > blue
    for x, y in np.rint(found).astype(int):
        r, g, b = crop[y, x].astype(int)
        assert r > g > b
    # the corners lie outside the warped image: black border
    # a 300x300 grey image lands on [200, 500]^2 of the 616 frame (a pure shift by +200); the crop's corner
    # pixel samples about (130, 130) there: outside the image, so black; its centre (about 309, 309) is grey
    grey = ofiq_align(np.full((300, 300, 3), 200, np.uint8), OFIQ_TARGET_616 - 200.0)
    assert grey[0, 0].tolist() == [0, 0, 0] and grey[56, 56].tolist() == [200, 200, 200]


def test_align_errors():
    with pytest.raises(ValueError, match="uint8 HxWx3.*float64"):
        ofiq_align(np.zeros((100, 100, 3)), OFIQ_TARGET_616)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        ofiq_align(np.zeros((100, 100), np.uint8), OFIQ_TARGET_616)


# ------------------------------------------------------------------------------------------ blob


def test_input_blob_is_bgr_over_255_nchw():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    blob = ofiq_input(crops)
    assert blob.shape == (3, 3, 112, 112) and blob.dtype == np.float32 and blob.flags.c_contiguous
    assert np.array_equal(blob[:, 0], crops[..., 2].astype(np.float32) / np.float32(255))  # B first
    assert np.array_equal(blob[:, 1], crops[..., 1].astype(np.float32) / np.float32(255))
    assert np.array_equal(blob[:, 2], crops[..., 0].astype(np.float32) / np.float32(255))
    assert blob.min() >= 0 and blob.max() <= 1
    assert ofiq_input(crops[0]).shape == (1, 3, 112, 112)
    with pytest.raises(ValueError, match=r"\(N, 112, 112, 3\).*\(2, 96, 96, 3\)"):
        ofiq_input(np.zeros((2, 96, 96, 3), np.uint8))


# ------------------------------------------------------------------------------------------ OnnxNorm


def build_model(path, kind: str, batch="N", chw=(3, 8, 8), dim=4, seed=0):
    """A tiny ONNX graph: ``norm`` = Flatten -> ReduceL2 (output (N, 1)); ``embed`` = Flatten -> MatMul W
    (output (N, dim)). Returns W (or None)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    flat = int(np.prod(chw))
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *chw])
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1)]
    inits = []
    w = None
    if kind == "norm":
        nodes.append(helper.make_node("ReduceL2", ["flat"], ["out"], axes=[1], keepdims=1))
        out_shape = [batch, 1]
    else:
        w = np.random.default_rng(seed).standard_normal((flat, dim)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "W"))
        nodes.append(helper.make_node("MatMul", ["flat", "W"], ["out"]))
        out_shape = [batch, dim]
    # a second output, to check that output 0 is the one read
    nodes.append(helper.make_node("Neg", ["out"], ["other"]))
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)
    z = helper.make_tensor_value_info("other", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "tiny", [x], [y, z], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


@pytest.fixture
def batch5():
    return np.random.default_rng(1).random((5, 3, 8, 8), dtype=np.float32)


def test_onnx_norm_output(tmp_path, batch5):
    pytest.importorskip("onnxruntime")
    build_model(tmp_path / "norm.onnx", "norm")
    f = OnnxNorm(tmp_path / "norm.onnx", batch_size=2)  # 5 images: chunks 2, 2, 1
    got = f(batch5)
    assert got.shape == (5,) and got.dtype == np.float64
    want = np.linalg.norm(batch5.reshape(5, -1).astype(np.float64), axis=1)
    assert np.allclose(got, want, rtol=1e-5, atol=0)


def test_onnx_embedding_output(tmp_path, batch5):
    pytest.importorskip("onnxruntime")
    w = build_model(tmp_path / "embed.onnx", "embed", dim=4)
    emb = batch5.reshape(5, -1).astype(np.float64) @ w.astype(np.float64)
    got = OnnxNorm(tmp_path / "embed.onnx", batch_size=3)(batch5)
    assert np.allclose(got, np.linalg.norm(emb, axis=1), rtol=1e-4, atol=0)
    first = OnnxNorm(tmp_path / "embed.onnx", output="first")(batch5)  # OFIQ's literal "first float" rule
    assert np.allclose(first, emb[:, 0], rtol=1e-4, atol=1e-4)


def test_onnx_fixed_batch(tmp_path, batch5):
    ort = pytest.importorskip("onnxruntime")
    w = build_model(tmp_path / "fixed1.onnx", "embed", batch=1)
    f = OnnxNorm(tmp_path / "fixed1.onnx", batch_size=64)
    assert f.fixed_batch == 1 and f.batch_size == 1
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
        f.session.run(None, {"input": batch5})  # the model itself refuses a batch of 5
    emb = batch5.reshape(5, -1).astype(np.float64) @ w.astype(np.float64)
    assert np.allclose(f(batch5), np.linalg.norm(emb, axis=1), rtol=1e-4, atol=0)
    # a fixed batch of 2: chunks of 2, the last one zero-padded
    build_model(tmp_path / "fixed2.onnx", "norm", batch=2)
    f2 = OnnxNorm(tmp_path / "fixed2.onnx")
    assert f2.fixed_batch == 2
    want = np.linalg.norm(batch5.reshape(5, -1).astype(np.float64), axis=1)
    assert np.allclose(f2(batch5), want, rtol=1e-5, atol=0)


def test_onnx_norm_errors(tmp_path, monkeypatch, batch5):
    pytest.importorskip("onnxruntime")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxNorm(tmp_path / "missing.onnx")
    build_model(tmp_path / "norm.onnx", "norm")
    with pytest.raises(ValueError, match=r"output='norm'.*\['auto', 'first', 'l2'\]"):
        OnnxNorm(tmp_path / "norm.onnx", output="norm")
    f = OnnxNorm(tmp_path / "norm.onnx")
    with pytest.raises(ValueError, match=r"norm.onnx.*\['N', 3, 8, 8\].*axis 2"):
        f(np.zeros((2, 3, 9, 8), np.float32))
    with pytest.raises(ValueError, match="NCHW"):
        f(np.zeros((3, 8, 8), np.float32))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        OnnxNorm(tmp_path / "norm.onnx")


# ------------------------------------------------------------------------------------------ unified_quality


def test_unified_quality_end_to_end():
    rng = np.random.default_rng(2)
    images, lms = [], []
    for k, (h, w) in enumerate([(300, 260), (240, 320), (400, 400)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = 200, 100, 0  # RGB
        img[: h // 3] = rng.integers(0, 256, (h // 3, w, 3), dtype=np.uint8)
        images.append(img)
        lms.append(apply(similarity(5.0 * k, 0.35 + 0.05 * k, (20.0 + 5 * k, 10.0)), OFIQ_TARGET_616))
    lms = np.stack(lms)
    raw_table = np.array([24.329985, 24.698753, 16.142765])  # OFIQ's b-01, b-02, b-03 -> 63, 66, 7
    seen = []

    def native_fn(blob):
        assert blob.dtype == np.float32 and blob.shape[1:] == (3, 112, 112)
        seen.append(blob)
        start = sum(len(b) for b in seen[:-1])
        return raw_table[start : start + len(blob)]

    out = unified_quality(images, lms, native_fn, batch_size=2)
    assert [len(b) for b in seen] == [2, 1]
    assert out["raw"].tolist() == raw_table.tolist()
    assert out["scalar"].tolist() == [63.0, 66.0, 7.0]
    # the blob is OFIQ's: BGR / 255 of the aligned crops; the face centre is the solid (200, 100, 0) colour
    blob = np.concatenate(seen)
    crops = np.stack([ofiq_align(im, lm) for im, lm in zip(images, lms)])
    assert np.array_equal(blob, ofiq_input(crops))
    assert np.allclose(blob[:, :, 80, 56], [0.0, 100 / 255, 200 / 255], atol=1e-6)

    # a numpy function of the pixels: the mapping is OFIQ_UNIFIED's sigmoid
    def mean_fn(b):
        return 15.0 + 20.0 * b.mean(axis=(1, 2, 3))

    out2 = unified_quality(images, lms, mean_fn)
    assert np.allclose(out2["raw"], mean_fn(ofiq_input(crops)), rtol=0, atol=1e-12)
    assert np.array_equal(out2["scalar"], sigmoid_map(out2["raw"], x0=23.0, w=2.6))
    # a non-finite native score cannot be assessed
    out3 = unified_quality(images[:1], lms[:1], lambda b: np.array([np.nan]))
    assert out3["scalar"].tolist() == [-1.0]


def test_unified_quality_with_onnx_norm(tmp_path):
    pytest.importorskip("onnxruntime")
    build_model(tmp_path / "n112.onnx", "norm", chw=(3, 112, 112))
    img = np.full((300, 300, 3), 90, np.uint8)
    lm = apply(similarity(0.0, 0.4, (30.0, 30.0)), OFIQ_TARGET_616)[None]
    out = unified_quality([img], lm, OnnxNorm(tmp_path / "n112.onnx"))
    want = np.linalg.norm(ofiq_input(ofiq_align(img, lm[0])).astype(np.float64))
    assert out["raw"] == pytest.approx([want], rel=1e-3)  # ORT sums 37632 equal squares in float32: 2e-4 off
    assert out["scalar"].tolist() == sigmoid_map(out["raw"], 23.0, 2.6).tolist()


def test_unified_quality_torch_output():
    torch = pytest.importorskip("torch")
    img = np.full((300, 300, 3), 90, np.uint8)
    lm = apply(similarity(0.0, 0.4, (30.0, 30.0)), OFIQ_TARGET_616)[None]
    out = unified_quality([img], lm, lambda b: torch.tensor([23.0]))
    assert out["scalar"].tolist() == [50.0]


def test_unified_quality_errors():
    img = np.full((300, 300, 3), 90, np.uint8)
    lm = apply(similarity(0.0, 0.4, (30.0, 30.0)), OFIQ_TARGET_616)
    with pytest.raises(ValueError, match=r"\(2, 5, 2\) for 2 images, got \(1, 5, 2\)"):
        unified_quality([img, img], lm[None], lambda b: np.zeros(len(b)))
    with pytest.raises(ValueError, match=r"native_fn returned shape \(2,\) for a batch of 1"):
        unified_quality([img], lm[None], lambda b: np.zeros(2))
    with pytest.raises(ValueError, match="image 1: image_rgb_uint8 must be"):
        unified_quality([img, img[..., 0]], np.stack([lm, lm]), lambda b: np.zeros(len(b)))


def test_import_without_torch_or_onnxruntime():
    code = (
        "import sys; import fiqa.quality.ofiq; "
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
