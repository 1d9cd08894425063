"""fiqa.detect (MTCNN): weights shipped in the facenet-pytorch wheel, loaded strictly; faces and 5 landmarks
on real photos, checked against facenet-pytorch's own MTCNN code and against counts made by eye."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fiqa.data.align import estimate_norm, norm_crop
from fiqa.detect import FaceDetector, Faces, detect, select_faces
from fiqa.detect.mtcnn import MTCNN, WEIGHT_SHA256, _nms, weights_dir
from tests.helpers.photos import astronaut, grace_hopper, insightface


@pytest.fixture(scope="module")
def det() -> FaceDetector:
    return FaceDetector(device="cpu")


def test_weights_load_strictly_and_match_the_files():
    folder = weights_dir()
    net = MTCNN(weights=folder)
    for name in ("pnet", "rnet", "onet"):
        state = torch.load(folder / f"{name}.pt", weights_only=True)
        mine = getattr(net, name).state_dict()
        assert sorted(state) == sorted(mine)
        for k, v in state.items():
            assert torch.equal(v, mine[k]), f"{name}.{k}"


def test_corrupt_or_missing_weights_are_clear_errors(tmp_path):
    for name in WEIGHT_SHA256:
        shutil.copy(weights_dir() / f"{name}.pt", tmp_path / f"{name}.pt")
    data = bytearray((tmp_path / "rnet.pt").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "rnet.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"rnet\.pt.*SHA-256"):
        MTCNN(weights=tmp_path)
    (tmp_path / "onet.pt").unlink()
    shutil.copy(weights_dir() / "rnet.pt", tmp_path / "rnet.pt")
    with pytest.raises(FileNotFoundError, match=r"onet\.pt"):
        MTCNN(weights=tmp_path)


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="detect.thresholds"):
        MTCNN(thresholds=(0.6, 0.7))
    with pytest.raises(ValueError, match="detect.factor"):
        MTCNN(factor=1.5)
    with pytest.raises(ValueError, match="detect.min_size"):
        MTCNN(min_size=0)


def test_nms_union_and_min_by_hand():
    # two 10x10 boxes (inclusive pixels: area 100) overlapping by 5x10 = 50: IoU 50/150 = 1/3, min-ratio 0.5
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [40, 40, 49, 49]], float)
    scores = np.array([0.9, 0.8, 0.7])
    assert _nms(boxes, scores, 0.3, "union").tolist() == [0, 2]
    assert _nms(boxes, scores, 0.34, "union").tolist() == [0, 1, 2]
    assert _nms(boxes, scores, 0.49, "min").tolist() == [0, 2]
    assert _nms(boxes, scores, 0.5, "min").tolist() == [0, 1, 2]


def test_astronaut_one_face_landmarks_in_insightface_order(det):
    img = astronaut()
    (faces,) = det([img])
    assert len(faces) == 1 and faces.scores[0] > 0.99
    x1, y1, x2, y2 = faces.boxes[0]
    lm = faces.landmarks[0]
    assert x1 < lm[:, 0].min() and lm[:, 0].max() < x2 and y1 < lm[:, 1].min() and lm[:, 1].max() < y2
    le, re, nose, lm_, rm = lm
    assert le[0] < nose[0] < re[0]  # left eye (as seen) left of the nose, right eye right of it
    assert lm_[0] < rm[0] and max(le[1], re[1]) < nose[1] < min(lm_[1], rm[1])  # eyes, nose, mouth top to bottom
    # the face of scikit-image's astronaut, located by eye: eyes near (204, 101) and (246, 103)
    assert np.abs(lm[:2] - [[204, 101], [246, 103]]).max() < 6


def test_networks_equal_facenet_pytorch_networks():
    """P-, R- and O-Net written here vs facenet-pytorch's modules with the same weights: equal outputs
    (pins the layer order, the pooling and the (W, H, C) flatten of the converted dense weights)."""
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch is a requirement (it ships the weights)")
    from facenet_pytorch.models import mtcnn as reference

    ours = MTCNN(weights=weights_dir())
    g = torch.Generator().manual_seed(0)
    for name, size in (("pnet", 37), ("rnet", 24), ("onet", 48)):
        ref = getattr(reference, name.upper().replace("NET", "Net"))(pretrained=False)
        ref.load_state_dict(torch.load(weights_dir() / f"{name}.pt", weights_only=True))
        x = torch.rand(3, 3, size, size, generator=g) * 2 - 1
        with torch.no_grad():
            mine, theirs = getattr(ours, name)(x), ref.eval()(x)
        if name == "pnet":  # theirs: (regression, softmax over 2 channels); ours: (regression, face probability)
            theirs = (theirs[0], theirs[1][:, 1])
        elif name == "rnet":
            theirs = (theirs[0], theirs[1][:, 1])
        else:
            theirs = (theirs[0], theirs[1], theirs[2][:, 1])
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_agrees_with_facenet_pytorch_mtcnn():
    """The same weights run by facenet-pytorch's own pipeline (its code, not ours): each face we find is one
    of its faces, box within a few pixels, landmarks within 8 % of the face size on average
    (mostly under 3 %; turned heads move most. The two differ in resampling and in
    border handling: it clips crops at the image edge where the reference MTCNN zero-pads). On t1.jpg it
    also reports two non-faces (a hand, an ashtray) at probability < 0.9, which we do not."""
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch is a requirement (it ships the weights)")
    from facenet_pytorch import MTCNN as Reference

    ref = Reference(keep_all=True, device="cpu")
    for img in (astronaut(), grace_hopper(), insightface("t1.jpg")):
        ours = detect(img)
        boxes, probs, points = ref.detect(img, landmarks=True)
        boxes, probs, points = np.asarray(boxes, float), np.asarray(probs, float), np.asarray(points, float)
        matched = []
        for k in range(len(ours)):
            j = int(np.argmin(np.abs(boxes - ours.boxes[k]).sum(1)))
            matched.append(j)
            assert np.abs(ours.boxes[k] - boxes[j]).max() < 8, (ours.boxes[k], boxes[j])
            d = np.linalg.norm(ours.landmarks[k] - points[j], axis=1)
            assert d.mean() < 0.08 * ours.sizes[k], (ours.landmarks[k], points[j])
        assert len(set(matched)) == len(ours) >= 1
        extra = np.setdiff1d(np.arange(len(boxes)), matched)
        assert (probs[extra] < 0.9).all(), probs[extra]


def test_group_photo_has_six_faces(det):
    """insightface's t1.jpg: six people around a poker table (counted by looking at it)."""
    (faces,) = det([insightface("t1.jpg")])
    assert len(faces) == 6
    assert (faces.scores > 0.9).all() and (faces.sizes > 60).all()
    assert np.all(np.diff(faces.scores) <= 0)  # highest score first


def test_redetection_on_aligned_crops_is_consistent(det):
    """Re-detecting on each aligned crop finds the landmarks where the alignment put them: within 3 px
    (mean of the 5) for every face but one, t1.jpg's man turned ~45 degrees (MTCNN's points on a turned
    head move; still within 12 px). Their distance to the ArcFace template itself is the face's own
    shape (a smile widens the mouth) and is not asserted."""
    photos = [astronaut(), grace_hopper(), insightface("t1.jpg"), insightface("Tom_Hanks_54745.png")]
    errors = []
    for img, faces in zip(photos, det(photos)):
        for k in range(len(faces)):
            m = estimate_norm(faces.landmarks[k])
            mapped = faces.landmarks[k] @ m[:, :2].T + m[:, 2]
            (again,) = det([norm_crop(img, faces.landmarks[k])])
            assert len(again) >= 1
            errors.append(np.linalg.norm(again.landmarks[0] - mapped, axis=1).mean())
    errors = np.sort(errors)
    assert len(errors) == 9
    assert errors[-2] < 3.0 and errors[-1] < 12.0, errors


def test_large_image_is_detected_on_a_downscaled_copy():
    img = astronaut()
    big = np.kron(img, np.ones((5, 5, 1), np.uint8))  # 2560 x 2560, every pixel 5x5
    small_det = FaceDetector(max_side=640, device="cpu")
    (f_big,) = small_det([big])
    (f_ref,) = small_det([img])
    assert len(f_big) == 1
    # coordinates are in the big image's pixels: 5x the original's (within the resampling difference)
    assert np.abs(f_big.landmarks[0] / 5 - f_ref.landmarks[0]).max() < 2.0
    with pytest.raises(ValueError, match="detect.max_side"):
        FaceDetector(max_side=10)


def test_batch_of_mixed_sizes_equals_one_by_one(det):
    photos = [astronaut(), grace_hopper(), astronaut()[:300, 100:]]
    batched = det(photos)
    for img, f in zip(photos, batched):
        (one,) = det([img])
        np.testing.assert_allclose(f.landmarks, one.landmarks, atol=1e-4)
        np.testing.assert_allclose(f.scores, one.scores, atol=1e-6)


def test_no_face_and_tiny_and_bad_images(det):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    flat = np.full((64, 64, 3), 128, np.uint8)
    tiny = np.zeros((5, 7, 3), np.uint8)
    assert [len(f) for f in det([noise, flat, tiny])] == [0, 0, 0]
    with pytest.raises(ValueError, match="image 1 must be a uint8 HxWx3"):
        det([flat, flat[:, :, 0]])


def test_select_faces_modes():
    boxes = np.array([[0, 0, 10, 10], [40, 40, 60, 60], [85, 0, 100, 15]], float)  # image 100x100
    faces = Faces(boxes, np.array([0.99, 0.9, 0.95]), np.zeros((3, 5, 2)))
    assert select_faces(faces, "largest", (100, 100)).tolist() == [1]
    assert select_faces(faces, "center", (100, 100)).tolist() == [1]
    assert select_faces(faces, "all", (100, 100)).tolist() == [0, 1, 2]
    assert select_faces(faces.take([0, 2]), "center", (100, 100)).tolist() == [1]  # (92, 7) is nearer (50, 50)
    with pytest.raises(ValueError, match="largest"):
        select_faces(faces, "biggest", (100, 100))
