"""fiqa.data.photos.read_photo: what cameras and scanners write (EXIF orientation, grayscale, CMYK, 16-bit,
alpha, GIF) becomes uint8 HxWx3 RGB as displayed; what is not an image is a PhotoError 'unreadable'."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from fiqa.data.photos import PhotoError, apply_orientation, decode_photo, exif_orientation, read_photo
from tests.helpers.photos import astronaut


def _jpeg_with_orientation(img: np.ndarray, orientation: int) -> bytes:
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=98, exif=exif.tobytes())
    return buf.getvalue()


# what each EXIF orientation asks a viewer to do with the stored pixels (the EXIF 2.3 table), written
# out independently of apply_orientation: displayed = f(stored)
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.transpose(a, (1, 0, 2))[:, ::-1],  # rotate 90 degrees clockwise
    7: lambda a: np.transpose(a, (1, 0, 2))[::-1, ::-1],
    8: lambda a: np.transpose(a, (1, 0, 2))[::-1, :],  # rotate 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    stored = astronaut()[:, 100:400]  # 512 x 300: not square, so a rotation shows in the shape
    buf = _jpeg_with_orientation(stored, orientation)
    assert exif_orientation(buf) == orientation
    got = decode_photo(buf)
    want = DISPLAY[orientation](stored)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).mean() < 4  # JPEG q98


def test_apply_orientation_matches_pillow_exif_transpose():
    from PIL import ImageOps

    stored = astronaut()[:64, :40]
    for o in range(1, 9):
        pil = Image.fromarray(stored)
        exif = pil.getexif()
        exif[0x0112] = o
        buf = io.BytesIO()
        pil.save(buf, "PNG", exif=exif.tobytes())
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
        np.testing.assert_array_equal(apply_orientation(stored, o), ref)


def test_grayscale_cmyk_16bit_alpha_gif():
    img = astronaut()
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    ok, g8 = cv2.imencode(".png", gray)
    out = decode_photo(g8.tobytes())
    assert out.shape == (512, 512, 3) and (out[..., 0] == gray).all() and (out[..., 1] == gray).all()

    ok, g16 = cv2.imencode(".png", gray.astype(np.uint16) * 257)
    np.testing.assert_array_equal(decode_photo(g16.tobytes())[..., 2], gray)  # 16 -> 8 bits: /257 exactly

    ok, c16 = cv2.imencode(".png", img[:, :, ::-1].astype(np.uint16) * 256 + 255)
    np.testing.assert_array_equal(decode_photo(c16.tobytes()), img)  # (v*256 + 255) >> 8 == v: scaled, not clipped

    ok, rgba = cv2.imencode(".png", np.dstack([img[:, :, ::-1], np.full((512, 512), 7, np.uint8)]))
    np.testing.assert_array_equal(decode_photo(rgba.tobytes()), img)

    la = io.BytesIO()
    Image.fromarray(np.dstack([gray, np.full_like(gray, 200)]), "LA").save(la, "PNG")
    assert (decode_photo(la.getvalue())[..., 1] == gray).all()

    cmyk = io.BytesIO()
    Image.fromarray(img).convert("CMYK").save(cmyk, "JPEG", quality=95)
    assert np.abs(decode_photo(cmyk.getvalue()).astype(int) - img).mean() < 8

    gif = io.BytesIO()
    Image.fromarray(img).save(gif, "GIF")
    out = decode_photo(gif.getvalue())
    assert out.shape == (512, 512, 3) and np.abs(out.astype(int) - img).mean() < 20  # 256-colour palette


def test_not_an_image_is_unreadable(tmp_path):
    ok, jpg = cv2.imencode(".jpg", astronaut())
    cases = {
        "empty.jpg": b"",
        "text.jpg": b"this is not a JPEG\n",
        "truncated.jpg": jpg.tobytes()[:200],
        "random.png": np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PhotoError, match=name) as err:
            read_photo(tmp_path / name)
        assert err.value.reason == "unreadable"
    with pytest.raises(PhotoError, match="not found") as err:
        read_photo(tmp_path / "missing.jpg")
    assert err.value.reason == "unreadable"
