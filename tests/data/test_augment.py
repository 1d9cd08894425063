import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from fiqa.data.augment import (
    EQFaceLowRes,
    GaussianBlur,
    Grayscale,
    JPEGRoundTrip,
    LowResolution,
    RandomCropPad,
    RandomResizedCrop,
    Rotate,
)
from fiqa.data.augment_colour import HueSaturation, Photometric
from fiqa.data.augment_presets import QGFaceViews, adaface_augment, dali_augment, eqface_augment
from fiqa.data.transforms import Compose

LUMA = np.array([0.299, 0.587, 0.114])


def make_face(seed=0, shape=(112, 112, 3), lo=1, hi=255):
    """Smooth colour blobs plus fine texture, values in [lo, hi] (no zeros by default)."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros(shape, dtype=np.float64)
    for c in range(3):
        fx, fy, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6)
        img[:, :, c] = 0.5 + 0.3 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    img += rng.normal(0, 0.08, shape)
    return np.clip(np.rint(lo + img * (hi - lo)), lo, hi).astype(np.uint8)


IMG = make_face()

# every op, configured to apply (p=1) and to be random
OPS = {
    "jpeg": lambda p: JPEGRoundTrip((30, 95), p=p),
    "blur": lambda p: GaussianBlur((3, 5), p=p),
    "blur_sigma": lambda p: GaussianBlur(kernel_sizes=None, sigma=(0.5, 2.0), p=p),
    "gray": lambda p: Grayscale(p=p),
    "lowres_scale": lambda p: LowResolution(scale=(0.2, 1.0), p=p),
    "lowres_side": lambda p: LowResolution(side_range=(56, 89), down="area", up="linear", p=p),
    "lowres_jpeg": lambda p: LowResolution(scale=(0.1, 0.5), jpeg_quality=75, p=p),
    "eqface_lowres": lambda p: EQFaceLowRes(p=p),
    "rrc": lambda p: RandomResizedCrop((0.2, 1.0), p=p),
    "croppad": lambda p: RandomCropPad(p=p),
    "photometric": lambda p: Photometric(0.5, 0.5, 0.5, 0.1, p=p),
    "hsv": lambda p: HueSaturation((5.0, 20.0), (1.05, 1.2), p=p),
    "rotate": lambda p: Rotate((5.0, 45.0), p=p),
}
RANDOM = [k for k in OPS if k != "gray"]


def seeds(n, base=0):
    return [np.random.default_rng(base + i) for i in range(n)]


@pytest.mark.parametrize("name", OPS)
def test_p1_changes_dtype_shape_and_determinism(name):
    op = OPS[name](1.0)
    for rng in seeds(6):
        out = op(IMG, rng)
        assert out.dtype == np.uint8 and out.shape == IMG.shape
        assert not np.array_equal(out, IMG)
    a = [op(IMG, rng) for rng in seeds(3, 100)]
    b = [op(IMG, rng) for rng in seeds(3, 100)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    if name in RANDOM:
        c = [op(IMG, rng) for rng in seeds(3, 200)]
        assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    # non-square and non-contiguous inputs keep their shape
    rect = make_face(1, (96, 80, 3))[:, ::-1]
    assert op(rect, np.random.default_rng(0)).shape == (96, 80, 3)
    assert "p=1.0" in repr(op) and type(op).__name__ in repr(op)


@pytest.mark.parametrize("name", OPS)
def test_p0_is_identity_and_draws_nothing(name):
    op = OPS[name](0.0)
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    assert op(IMG, rng) is IMG
    assert rng.bit_generator.state == state


@pytest.mark.parametrize("name", ["jpeg", "gray", "rotate"])
def test_probability_is_respected(name):
    op = OPS[name](0.3)
    changed = [not np.array_equal(op(IMG, rng), IMG) for rng in seeds(400)]
    assert np.mean(changed) == pytest.approx(0.3, abs=0.07)


@pytest.mark.parametrize("name", ["jpeg", "blur", "rotate"])
def test_rejects_bad_images(name):
    with pytest.raises(ValueError, match=type(OPS[name](1.0)).__name__):
        OPS[name](1.0)(IMG.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="HxWx3"):
        OPS[name](1.0)(IMG[:, :, 0], np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ JPEG
def cv2_jpeg(img, quality):
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]


def test_jpeg_equals_cv2_round_trip():
    out = JPEGRoundTrip(60)(IMG, np.random.default_rng(0))
    assert np.array_equal(out, cv2_jpeg(IMG, 60))
    refs = {q: cv2_jpeg(IMG, q) for q in (50, 51, 52)}
    got = set()
    for rng in seeds(30):
        out = JPEGRoundTrip((50, 52))(IMG, rng)
        got |= {q for q, ref in refs.items() if np.array_equal(out, ref)}
    assert got == {50, 51, 52}  # inclusive integer range
    # lower quality loses more
    err = [np.abs(JPEGRoundTrip(q)(IMG, np.random.default_rng(0)).astype(int) - IMG).mean() for q in (10, 50, 95)]
    assert err[0] > err[1] > err[2]


# ------------------------------------------------------------------------------------------ blur
def highfreq_energy(img):
    g = img.astype(np.float64) @ LUMA
    spec = np.abs(np.fft.fftshift(np.fft.fft2(g - g.mean()))) ** 2
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w]
    far = np.hypot(yy - h // 2, xx - w // 2) > min(h, w) / 4
    return spec[far].sum()


def separable_gauss(img, ksize, sigma):
    """Independent Gaussian blur: normalised 1-D kernel, reflect-101 padding (numpy 'reflect')."""
    r = ksize // 2
    x = np.arange(-r, r + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    h, w = img.shape[:2]
    f = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    f = sum(k[i] * f[:, i : i + w] for i in range(ksize))
    return sum(k[i] * f[i : i + h] for i in range(ksize))


@pytest.mark.parametrize(("ksize", "sigma"), [(3, 0.8), (5, 1.1)])
def test_blur_window_uses_dali_sigma_rule(ksize, sigma):
    # DALI: radius = (window - 1) / 2, sigma = (radius - 1) * 0.3 + 0.8
    assert (ksize - 1) / 2 * 0.3 - 0.3 + 0.8 == pytest.approx(sigma)
    out = GaussianBlur(kernel_sizes=ksize)(IMG, np.random.default_rng(0))
    ref = separable_gauss(IMG, ksize, sigma)
    assert np.abs(out - ref).max() <= 1.0
    assert highfreq_energy(out) < 0.6 * highfreq_energy(IMG)


def test_blur_sigma_only_window_and_strength():
    out = GaussianBlur(kernel_sizes=None, sigma=1.0)(IMG, np.random.default_rng(0))
    assert np.abs(out - separable_gauss(IMG, 7, 1.0)).max() <= 1.0  # window 2 * ceil(3 sigma) + 1
    e = [highfreq_energy(GaussianBlur(None, s)(IMG, np.random.default_rng(0))) for s in (0.5, 1.0, 2.0)]
    assert highfreq_energy(IMG) > e[0] > e[1] > e[2]


# ------------------------------------------------------------------------------------- grayscale
def test_grayscale_equal_channels_and_luma():
    out = Grayscale(p=1.0)(IMG, np.random.default_rng(0))
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])
    assert np.abs(out[:, :, 0] - IMG.astype(np.float64) @ LUMA).max() <= 0.51


# ------------------------------------------------------------------------------- low resolution
def down_up(img, side, down, up, quality=None):
    small = cv2.resize(img, (side, side), interpolation=down)
    if quality is not None:
        small = cv2_jpeg(small, quality)
    return cv2.resize(small, (img.shape[1], img.shape[0]), interpolation=up)


def test_lowres_fixed_size_equals_cv2_down_up():
    rng = np.random.default_rng(0)
    out = LowResolution(sizes=40, down="cubic", up="nearest")(IMG, rng)
    assert np.array_equal(out, down_up(IMG, 40, cv2.INTER_CUBIC, cv2.INTER_NEAREST))
    # scale: side = int(112 * r) -> 0.25 gives 28 px; cv2 flags are accepted too
    out = LowResolution(scale=0.25, down=[cv2.INTER_AREA], up=["bilinear"])(IMG, rng)
    assert np.array_equal(out, down_up(IMG, 28, cv2.INTER_AREA, cv2.INTER_LINEAR))
    # DALI-style side range, rounded: U(56.2, 56.2) -> 56
    out = LowResolution(side_range=(56.2, 56.2), down="area", up="linear")(IMG, rng)
    assert np.array_equal(out, down_up(IMG, 56, cv2.INTER_AREA, cv2.INTER_LINEAR))
    # QGFace: JPEG at the small size
    out = LowResolution(scale=0.25, down="linear", up="linear", jpeg_quality=75)(IMG, rng)
    assert np.array_equal(out, down_up(IMG, 28, cv2.INTER_LINEAR, cv2.INTER_LINEAR, quality=75))
    assert "down=('area',)" in repr(LowResolution(sizes=3, down=cv2.INTER_AREA))


def test_lowres_draws_interpolations_and_sizes():
    flags = [cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4]
    refs = {(d, u): down_up(IMG, 30, d, u) for d in flags for u in flags}
    hits = set()
    for rng in seeds(150):
        out = LowResolution(sizes=30)(IMG, rng)  # all five, drawn independently down and up
        match = [k for k, r in refs.items() if np.array_equal(out, r)]
        assert match
        hits.update(match)
    assert {d for d, _ in hits} == set(flags) and {u for _, u in hits} == set(flags)
    # EQFace: 60, 80, 100 px, bilinear both ways, p = 0.5 by default
    eq = {s: down_up(IMG, s, cv2.INTER_LINEAR, cv2.INTER_LINEAR) for s in (60, 80, 100)}
    sides, unchanged = [], 0
    for rng in seeds(200):
        out = EQFaceLowRes()(IMG, rng)
        if out is IMG:
            unchanged += 1
            continue
        sides += [s for s, r in eq.items() if np.array_equal(out, r)]
    assert set(sides) == {60, 80, 100} and len(sides) == 200 - unchanged
    assert unchanged / 200 == pytest.approx(0.5, abs=0.1)


def test_lowres_loses_detail_with_smaller_sides():
    e = [
        highfreq_energy(LowResolution(sizes=s, down="area", up="linear")(IMG, np.random.default_rng(0)))
        for s in (90, 56, 20)
    ]
    assert highfreq_energy(IMG) > e[0] > e[1] > e[2]


# ------------------------------------------------------------------------------------------ crops
def test_croppad_keeps_box_in_place_on_black():
    """AdaFace's crop: zeros outside one box, the input inside it (no resize)."""
    fracs = []
    for rng in seeds(60):
        out = RandomCropPad(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))(IMG, rng)
        inside = (out != 0).any(axis=2)
        rows, cols = np.where(inside.any(axis=1))[0], np.where(inside.any(axis=0))[0]
        t, b, left, r = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        assert inside[t:b, left:r].all() and inside.sum() == (b - t) * (r - left)
        assert np.array_equal(out[t:b, left:r], IMG[t:b, left:r])
        h, w = b - t, r - left
        fracs.append(h * w / IMG.shape[0] / IMG.shape[1])
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    assert min(fracs) >= 0.2 - 0.02 and max(fracs) <= 1.0
    assert min(fracs) < 0.4 and max(fracs) > 0.8  # the whole range is used
    assert any(f < 1.0 for f in fracs)


def coordinate_image(h=112, w=112):
    """pixel (y, x) holds (x, y, 7): a nearest resize of a crop reveals where the crop was."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.full_like(xx, 7)], axis=2).astype(np.uint8)


def test_random_resized_crop_box_and_resize():
    img = coordinate_image()
    for rng in seeds(40):
        out = RandomResizedCrop(scale=(0.3, 0.9), ratio=(0.75, 1.33), interpolation="nearest")(img, rng)
        x0, y0 = int(out[0, 0, 0]), int(out[0, 0, 1])
        x1, y1 = int(out[-1, -1, 0]), int(out[-1, -1, 1])
        ch, cw = y1 - y0 + 1, x1 - x0 + 1
        ref = cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (112, 112), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(out, ref)
        assert 0.3 - 0.03 <= ch * cw / 112**2 <= 0.9 + 0.03
        assert 0.75 - 0.05 <= cw / ch <= 1.33 + 0.05
    # EQFace's square crop keeps >= 95 % of the area
    for rng in seeds(20):
        out = RandomResizedCrop(scale=(0.95, 1.0), ratio=(1.0, 1.0), interpolation="nearest")(img, rng)
        side = int(out[-1, -1, 0]) - int(out[0, 0, 0]) + 1
        assert side == int(out[-1, -1, 1]) - int(out[0, 0, 1]) + 1 and side**2 >= 0.95 * 112**2 - 112
    # impossible scale: falls back to the centred full crop (ratio within bounds) -> identity
    out = RandomResizedCrop(scale=(5.0, 6.0), ratio=(0.5, 2.0), interpolation="nearest")(img, np.random.default_rng(0))
    assert np.array_equal(out, img)


# ------------------------------------------------------------------------------------ photometric
def test_photometric_single_ops_match_formulas():
    x = IMG.astype(np.float64)
    out = Photometric(brightness=(1.3, 1.3))(IMG, np.random.default_rng(0))
    ref = np.clip(x * 1.3, 0, 255)
    assert np.abs(out - ref).max() <= 0.5 + 1e-4  # float32 arithmetic: ties may round either way
    m = (x @ LUMA).mean()
    out = Photometric(contrast=(0.5, 0.5))(IMG, np.random.default_rng(0))
    assert np.abs(out - np.clip(m + 0.5 * (x - m), 0, 255)).max() <= 0.51
    out = Photometric(saturation=(0.0, 0.0))(IMG, np.random.default_rng(0))
    assert np.abs(out - (x @ LUMA)[:, :, None]).max() <= 0.51
    out = Photometric(saturation=(1.8, 1.8))(IMG, np.random.default_rng(0))
    g = (x @ LUMA)[:, :, None]
    assert np.abs(out - np.clip(g + 1.8 * (x - g), 0, 255)).max() <= 0.51


def test_photometric_hue_matches_torchvision():
    t = torch.from_numpy(IMG.transpose(2, 0, 1).copy())
    for shift in (0.1, -0.25, 0.5):
        ref = TF.adjust_hue(t, shift).numpy().transpose(1, 2, 0)
        out = Photometric(hue=(shift, shift))(IMG, np.random.default_rng(0))
        assert np.abs(out.astype(int) - ref).max() <= 2, shift


def test_photometric_random_order_and_factor_ranges():
    """brightness x2 then gray != gray then x2 (clipping): both orders must occur."""
    x = IMG.astype(np.float64)
    bright_first = np.rint(np.clip(np.clip(2 * x, 0, 255) @ LUMA, 0, 255))
    gray_first = np.rint(np.clip(2 * (x @ LUMA), 0, 255))
    assert not np.array_equal(bright_first, gray_first)
    seen = set()
    for rng in seeds(20):
        out = Photometric(brightness=(2.0, 2.0), saturation=(0.0, 0.0))(IMG, rng)[:, :, 0]
        for name, ref in (("bright_first", bright_first), ("gray_first", gray_first)):
            if np.abs(out - ref).max() <= 1:
                seen.add(name)
    assert seen == {"bright_first", "gray_first"}
    # brightness 0.5 -> factor in [0.5, 1.5]: the mean ratio stays inside
    flat = np.full((8, 8, 3), 100, dtype=np.uint8)
    ratios = [Photometric(brightness=0.5)(flat, rng).mean() / 100 for rng in seeds(200)]
    assert 0.5 - 0.01 <= min(ratios) < 0.6 and 1.4 < max(ratios) <= 1.5 + 0.01
    assert repr(Photometric(0.5, 0.5, 0.5)).startswith("Photometric(brightness=(0.5, 1.5), contrast=(0.5, 1.5)")


# ----------------------------------------------------------------------------- DALI hue/saturation
def test_hue_saturation_linear_map():
    np.testing.assert_allclose(HueSaturation.matrix(0.0, 1.0), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(HueSaturation.matrix(360.0, 1.0), np.eye(3), atol=1e-12)
    # saturation only: luma + s (x - luma), as Photometric's saturation
    a = HueSaturation(hue=0.0, saturation=1.15)(IMG, np.random.default_rng(0))
    b = Photometric(saturation=(1.15, 1.15))(IMG, np.random.default_rng(0))
    assert np.abs(a.astype(int) - b).max() <= 1
    # a hue rotation keeps the luma (Y) and moves the colours
    mid = make_face(3, lo=60, hi=190)
    out = HueSaturation(hue=(20.0, 20.0), saturation=1.0)(mid, np.random.default_rng(0))
    assert np.abs(out @ LUMA - mid @ LUMA).max() <= 1.0
    assert np.abs(out.astype(int) - mid).max() >= 5
    # gray pixels are fixed points of any hue / saturation
    gray = np.full((4, 4, 3), 123, dtype=np.uint8)
    assert np.array_equal(HueSaturation(hue=(0, 20), saturation=(1, 1.2))(gray, np.random.default_rng(1)), gray)


# ---------------------------------------------------------------------------------------- rotate
def test_rotate_quarter_turns_and_fill():
    img = make_face(2, (64, 64, 3))
    assert np.array_equal(Rotate((90.0, 90.0))(img, np.random.default_rng(0)), np.rot90(img, 1))
    assert np.array_equal(Rotate((-90.0, -90.0))(img, np.random.default_rng(0)), np.rot90(img, -1))
    assert np.array_equal(Rotate((0.0, 0.0))(img, np.random.default_rng(0)), img)
    out = Rotate((45.0, 45.0), fill=9)(img, np.random.default_rng(0))
    assert (out[0, 0] == 9).all() and (out[-1, -1] == 9).all() and np.array_equal(out[32, 32], img[32, 32])
    assert Rotate(30).degrees == (-30.0, 30.0)


# ---------------------------------------------------------------------------------------- QGFace
def test_qgface_views():
    views = QGFaceViews()
    flips = set()
    for rng in seeds(40):
        lq, hq = views(IMG, rng)
        assert lq.dtype == hq.dtype == np.uint8 and lq.shape == hq.shape == IMG.shape
        is_id, is_flip = np.array_equal(hq, IMG), np.array_equal(hq, IMG[:, ::-1])
        assert is_id or is_flip
        flips.add(is_flip)
        assert not np.array_equal(lq, IMG) and not np.array_equal(lq, IMG[:, ::-1])
        assert np.abs(lq.astype(int) - IMG).mean() > 8 and np.abs(lq.astype(int) - IMG[:, ::-1]).mean() > 8
    assert flips == {True, False}
    a, b = views(IMG, np.random.default_rng(3)), views(IMG, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    text = repr(views)
    assert "jpeg_quality=(75, 75)" in text and "scale=(0.1, 0.5)" in text and "Rotate(degrees=(-45.0, 45.0)" in text


def test_qgface_views_folder_variant():
    views = QGFaceViews(scale=(0.1, 0.2), jpeg_quality=None, crop_scale=(0.8, 1.2), rotation=30, crop_p=1.0)
    lq, hq = views(IMG, np.random.default_rng(0))
    assert lq.shape == IMG.shape and "jpeg_quality" not in repr(views.low.transforms[0])


# --------------------------------------------------------------------------------------- presets
def test_presets_probabilities_and_behaviour():
    ada = adaface_augment()
    assert isinstance(ada, Compose)
    assert [type(t).__name__ for t in ada.transforms] == ["RandomCropPad", "LowResolution", "Photometric"]
    assert [t.p for t in ada.transforms] == [0.2, 0.2, 0.2]
    assert ada.transforms[0].scale == (0.2, 1.0) and ada.transforms[1].scale == (0.2, 1.0)
    assert ada.transforms[2].brightness == (0.5, 1.5) and ada.transforms[2].hue is None
    eq = eqface_augment()
    assert [t.p for t in eq.transforms] == [0.5, 0.5, 0.01] and eq.transforms[0].sizes == (60, 80, 100)
    dali = dali_augment()
    assert [t.p for t in dali.transforms] == [0.1, 0.2, 0.2, 0.1]
    assert dali.transforms[0].side_range == (56.0, 89.0) and dali.transforms[1].kernel_sizes == (3, 5)
    assert dali.transforms[2].hue == (0.0, 20.0) and dali.transforms[2].saturation == (1.0, 1.2)
    # AdaFace: every op changes the image, so P(unchanged) = 0.8^3
    unchanged = [np.array_equal(ada(IMG, rng), IMG) for rng in seeds(300)]
    assert np.mean(unchanged) == pytest.approx(0.8**3, abs=0.08)
    for pipe in (ada, eq, dali, adaface_augment(1, 1, 1), eqface_augment(1, 1, 1), dali_augment(1, 1, 1, 1)):
        out = pipe(IMG, np.random.default_rng(1))
        assert out.dtype == np.uint8 and out.shape == IMG.shape
        assert np.array_equal(out, pipe(IMG, np.random.default_rng(1)))


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: JPEGRoundTrip(0), "quality"),
        (lambda: JPEGRoundTrip((90, 30)), "quality"),
        (lambda: JPEGRoundTrip(50.5), "quality"),
        (lambda: JPEGRoundTrip(80, p=1.5), "p must be a probability"),
        (lambda: Grayscale(p=-0.1), "Grayscale: p"),
        (lambda: Grayscale(p=True), "Grayscale: p"),
        (lambda: GaussianBlur(kernel_sizes=4), "kernel_sizes"),
        (lambda: GaussianBlur(kernel_sizes=()), "kernel_sizes"),
        (lambda: GaussianBlur(kernel_sizes=None, sigma=None), "kernel_sizes, sigma"),
        (lambda: GaussianBlur(sigma=-1.0), "sigma"),
        (lambda: LowResolution(), "exactly one of scale, side_range, sizes"),
        (lambda: LowResolution(scale=0.5, sizes=40), "exactly one"),
        (lambda: LowResolution(scale=(0.0, 1.0)), "scale"),
        (lambda: LowResolution(scale=(0.2, 1.5)), "scale"),
        (lambda: LowResolution(sizes=(0, 10)), "sizes"),
        (lambda: LowResolution(sizes=30, down="bogus"), "down has an unknown interpolation 'bogus'"),
        (lambda: LowResolution(sizes=30, up=[]), "up must name at least one"),
        (lambda: LowResolution(sizes=30, jpeg_quality=101), "jpeg_quality"),
        (lambda: EQFaceLowRes(p=2), "EQFaceLowRes: p"),
        (lambda: RandomResizedCrop(scale=(0.9, 0.1)), "scale"),
        (lambda: RandomResizedCrop(ratio="wide"), "ratio"),
        (lambda: RandomCropPad(scale=(0.2, 1.5)), "scale"),
        (lambda: Photometric(brightness=-0.5), "brightness must be >= 0"),
        (lambda: Photometric(contrast=(-1.0, 2.0)), "contrast"),
        (lambda: Photometric(hue=0.6), "hue"),
        (lambda: HueSaturation(saturation=(-1.0, 1.0)), "saturation"),
        (lambda: Rotate(fill=300), "fill"),
        (lambda: Rotate(interpolation="fancy"), "interpolation"),
        (lambda: QGFaceViews(crop_p=1.2), "p must be"),
        (lambda: adaface_augment(crop_p=-1), "RandomCropPad: p"),
    ],
)
def test_bad_arguments_name_the_argument(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()
