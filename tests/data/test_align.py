import cv2
import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from fiqa.data.align import ARCFACE_DST, estimate_norm, landmarks_from_flat, norm_crop, template, umeyama


def skimage_similarity(src, dst):
    """3x3 matrix of scikit-image's least-squares similarity (the InsightFace reference)."""
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        assert tform, "scikit-image failed to estimate"
        return tform.params
    tform = SimilarityTransform()
    assert tform.estimate(src, dst)
    return tform.params


def random_landmarks(rng, n=5):
    """Template points under a random similarity + jitter, in a 250x250 image."""
    angle = rng.uniform(-np.pi / 3, np.pi / 3)
    scale = rng.uniform(0.5, 2.5)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = ARCFACE_DST.astype(np.float64)[:n] @ rot.T + rng.uniform(20, 120, size=2)
    return pts + rng.normal(0, 3.0, size=pts.shape)


def test_template_values():
    assert ARCFACE_DST.dtype == np.float32 and ARCFACE_DST.shape == (5, 2)
    assert ARCFACE_DST[0].tolist() == pytest.approx([38.2946, 51.6963])
    assert ARCFACE_DST[4].tolist() == pytest.approx([70.7299, 92.2041])
    # the SphereFace 96x112 template shifted by +8 px in x
    assert ARCFACE_DST[0, 0] - 8 == pytest.approx(30.2946)
    with pytest.raises(ValueError):
        ARCFACE_DST[0, 0] = 0.0  # read-only
    np.testing.assert_allclose(template(224), ARCFACE_DST * 2.0, rtol=1e-6)
    t128 = template(128)
    np.testing.assert_allclose(t128[:, 0], ARCFACE_DST[:, 0] + 8.0, rtol=1e-6)
    np.testing.assert_allclose(t128[:, 1], ARCFACE_DST[:, 1], rtol=1e-6)
    t256 = template(256)
    np.testing.assert_allclose(t256[:, 0], ARCFACE_DST[:, 0] * 2 + 16.0, rtol=1e-6)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("size", [112, 128, 224, 256])
def test_estimate_norm_matches_skimage(seed, size):
    lmk = random_landmarks(np.random.default_rng(1000 + seed))
    m = estimate_norm(lmk, size)
    assert m.shape == (2, 3) and m.dtype == np.float64
    np.testing.assert_allclose(m, skimage_similarity(lmk, template(size))[:2], rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "case",
    [
        "mirrored",
        "collinear_horizontal",
        "collinear_horizontal_mirrored",
        "collinear_vertical",
        "collinear_slanted",
        "two_distinct",
        "tiny",
    ],
)
def test_umeyama_matches_skimage_on_degenerate_sets(case):
    rng = np.random.default_rng(7)
    dst = ARCFACE_DST.astype(np.float64)
    src = random_landmarks(rng)
    if case == "mirrored":  # left-right mirrored face: best orthogonal fit is a reflection
        src = src * np.array([-1.0, 1.0]) + np.array([300.0, 0.0])
    elif case == "collinear_horizontal":  # exact zero y-spread: rank-1 cross-covariance
        src = np.column_stack([rng.uniform(0, 100, 5), np.full(5, 40.0)])
    elif case == "collinear_horizontal_mirrored":  # rank 1 with det(U) det(Vt) < 0
        src = np.column_stack([-rng.uniform(0, 100, 5), np.full(5, 40.0)])
    elif case == "collinear_vertical":
        src = np.column_stack([np.full(5, 12.5), rng.uniform(0, 100, 5)])
    elif case == "collinear_slanted":  # rank 1 with a round-off det(A) < 0
        t = rng.uniform(0, 50, 5)
        src = np.column_stack([3.0 + t, 5.0 - 2.0 * t])
    elif case == "two_distinct":
        src = np.array([[10.0, 10.0], [10.0, 10.0], [50.0, 30.0], [50.0, 30.0], [10.0, 10.0]])
    elif case == "tiny":  # face of a few pixels
        src = src * 1e-3
    ref = skimage_similarity(src, dst)
    ours = umeyama(src, dst)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10 * max(1.0, np.abs(ref).max()))
    # never a reflection
    assert np.linalg.det(ours[:2, :2]) >= 0


def test_umeyama_recovers_exact_similarity_and_no_scale():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, (7, 2))
    a, s, t = 0.7, 1.8, np.array([5.0, -3.0])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = s * src @ rot.T + t
    m = umeyama(src, dst)
    np.testing.assert_allclose(m[:2, :2], s * rot, atol=1e-12)
    np.testing.assert_allclose(m[:2, 2], t, atol=1e-10)
    np.testing.assert_allclose(m[2], [0, 0, 1])
    m1 = umeyama(src, dst, estimate_scale=False)
    np.testing.assert_allclose(m1[:2, :2], rot, atol=1e-12)  # pure rotation part
    src3 = rng.normal(size=(6, 3))
    assert umeyama(src3, src3 * 2.0).shape == (4, 4)
    np.testing.assert_allclose(umeyama(src3, src3 * 2.0)[:3, :3], 2 * np.eye(3), atol=1e-12)


def test_estimate_norm_maps_template_to_itself():
    m = estimate_norm(ARCFACE_DST, 112)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-5)


def test_landmarks_from_flat_layouts():
    pts = np.arange(10, dtype=np.float64).reshape(5, 2) * 3 + 1
    xxyy = np.concatenate([pts[:, 0], pts[:, 1]])
    xyxy = pts.reshape(-1)
    np.testing.assert_array_equal(landmarks_from_flat(xxyy), pts)
    np.testing.assert_array_equal(landmarks_from_flat(list(xyxy), layout="xyxyxyxyxy"), pts)
    np.testing.assert_array_equal(landmarks_from_flat(xxyy.reshape(1, 10)), pts)
    with pytest.raises(ValueError, match="layout"):
        landmarks_from_flat(xxyy, layout="yx")
    with pytest.raises(ValueError, match="10 landmark values"):
        landmarks_from_flat(np.zeros(8))


def _draw_dots(points, shape, radius=2):
    img = np.zeros(shape, dtype=np.uint8)
    for x, y in points:
        cv2.circle(img, (round(x * 16), round(y * 16)), radius * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    return img


def _dot_centres(img, points, window=6):
    """Intensity-weighted centre of the blob near each expected point."""
    gray = img.astype(np.float64).mean(axis=2)
    out = []
    for x, y in points:
        x0, y0 = int(round(x)) - window, int(round(y)) - window
        patch = gray[y0 : y0 + 2 * window + 1, x0 : x0 + 2 * window + 1]
        yy, xx = np.mgrid[y0 : y0 + 2 * window + 1, x0 : x0 + 2 * window + 1]
        out.append([(patch * xx).sum() / patch.sum(), (patch * yy).sum() / patch.sum()])
    return np.array(out)


@pytest.mark.parametrize("size", [112, 128])
def test_norm_crop_undoes_a_known_similarity(size):
    """Dots drawn at the template, warped by a known similarity into a bigger image, come back
    onto the template after norm_crop with the warped landmark positions."""
    dst = template(size)
    canvas = _draw_dots(dst, (size, size, 3))
    a, s, t = np.deg2rad(25.0), 1.7, np.array([60.0, 35.0])
    fwd = np.array([[s * np.cos(a), -s * np.sin(a), t[0]], [s * np.sin(a), s * np.cos(a), t[1]]])
    big = cv2.warpAffine(canvas, fwd, (320, 300), flags=cv2.INTER_LINEAR, borderValue=0)
    lmk = dst @ fwd[:, :2].T + fwd[:, 2]
    crop = norm_crop(big, lmk, size)
    assert crop.dtype == np.uint8 and crop.shape == (size, size, 3)
    found = _dot_centres(crop, dst)
    assert np.abs(found - dst).max() < 1.0, found - dst
    # the matrix is the inverse of the forward warp
    inv = np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]
    np.testing.assert_allclose(estimate_norm(lmk, size), inv, atol=1e-9)


def test_norm_crop_border_is_zero_and_grayscale_ok():
    img = np.full((40, 40, 3), 200, dtype=np.uint8)
    # landmarks = template / 5 + 25: image pixel p lands at crop 5 * (p - 25), so the last pixel
    # (39) lands at 70; bilinear ramps to the 0 border, which starts at 75 (pixel 40)
    lmk = ARCFACE_DST.astype(np.float64) * 0.2 + 25.0
    crop = norm_crop(img, lmk)
    assert crop.shape == (112, 112, 3)
    assert (crop[75:] == 0).all() and (crop[:, 75:] == 0).all()
    assert (crop[:71, :71] == 200).all() and crop[72, 60, 0] == 120
    gray = norm_crop(img[:, :, 0], lmk)
    assert gray.shape == (112, 112) and np.array_equal(gray, crop[:, :, 0])
    one = norm_crop(img[:, :, :1], lmk)
    assert one.shape == (112, 112, 1)


def test_errors():
    img = np.zeros((50, 50, 3), dtype=np.uint8)
    lmk = ARCFACE_DST.astype(np.float64)
    with pytest.raises(ValueError, match="landmarks_from_flat"):
        estimate_norm(lmk.T.reshape(-1))
    with pytest.raises(ValueError, match=r"shape \(5, 2\)"):
        estimate_norm(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        estimate_norm(np.where(np.eye(5, 2) > 0, np.nan, lmk))
    with pytest.raises(ValueError, match="multiple of 112 or of 128"):
        estimate_norm(lmk, 100)
    with pytest.raises(ValueError, match="positive int"):
        estimate_norm(lmk, 0)
    with pytest.raises(ValueError, match="rank 0"):
        estimate_norm(np.ones((5, 2)))
    with pytest.raises(ValueError, match="uint8"):
        norm_crop(img.astype(np.float32), lmk)
    with pytest.raises(ValueError, match="HxW"):
        norm_crop(np.zeros((5, 5, 3, 1), dtype=np.uint8), lmk)
    with pytest.raises(ValueError, match="of one shape"):
        umeyama(np.zeros((5, 2)), np.zeros((4, 2)))
