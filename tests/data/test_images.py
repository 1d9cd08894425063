"""fiqa.data.images.decode_rgb: OpenCV's pixels, and a damaged JPEG is an ImageDecodeError naming its
source and quoting libjpeg (which, through OpenCV, would only have warned on stderr)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiqa.data import images
from fiqa.data.images import ImageDecodeError, decode_rgb, read_rgb
from fiqa.data.recordio import MXIndexedRecordIO, unpack
from tests.helpers.jpeg_damage import cut, extraneous, overwritten, truncated
from tests.helpers.realdata import jpeg, synth_images

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "insightface_rec"


def reference(buf: bytes) -> np.ndarray:
    """What decode_rgb has always returned: cv2.imdecode(IMREAD_COLOR), BGR -> RGB."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return synth_images(2, 1)[0][0]  # 112 x 112 RGB


@pytest.fixture(scope="module")
def face_jpeg(face) -> bytes:
    return jpeg(face)


def real_jpeg_files() -> list[Path]:
    import matplotlib
    import skimage.data

    sk = Path(skimage.data.__file__).parent
    files = [sk / f"{n}.jpg" for n in ("rocket", "retina", "hubble_deep_field")]
    files.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [f for f in files if f.is_file()]


# ---------------------------------------------------------------------------------------- valid images
def test_real_jpegs_decode_to_opencvs_pixels():
    files = real_jpeg_files()
    assert len(files) >= 2
    for f in files:
        buf = f.read_bytes()
        np.testing.assert_array_equal(decode_rgb(buf, str(f)), reference(buf))


def test_mxnet_fixture_jpegs_decode_to_opencvs_pixels():
    if not (FIXTURES / "train.rec").is_file():
        pytest.skip(f"mxnet-written fixture not found at {FIXTURES}")
    r = MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")
    payloads = [p for p in (unpack(r.read_idx(k))[1] for k in r.keys) if p[:2] == b"\xff\xd8"]
    assert payloads
    for p in payloads:
        np.testing.assert_array_equal(decode_rgb(p), reference(p))


def test_encoder_variants_and_array_inputs(face, face_jpeg):
    img = np.ascontiguousarray(face[..., ::-1])
    variants = [
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1],  # an N x 1 array, as cv2 returns it
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1],
        cv2.imencode(".jpg", np.ascontiguousarray(img[..., 0]))[1],  # grayscale
    ]
    for v in variants:
        np.testing.assert_array_equal(decode_rgb(v), reference(v.tobytes()))
    for form in (bytearray(face_jpeg), memoryview(face_jpeg), np.frombuffer(face_jpeg, np.uint8)):
        np.testing.assert_array_equal(decode_rgb(form), reference(face_jpeg))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".tiff"])
def test_other_formats_still_decode(face, ext):
    rgb = face
    buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()
    out = decode_rgb(buf)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if ext != ".webp":  # lossless formats give the pixels back
        np.testing.assert_array_equal(out, rgb)


def test_png_with_alpha_and_grayscale_png(face):
    rgb = face
    bgra = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 200, np.uint8)])
    np.testing.assert_array_equal(decode_rgb(cv2.imencode(".png", bgra)[1]), rgb)
    gray = decode_rgb(cv2.imencode(".png", np.ascontiguousarray(rgb[..., 0]))[1])
    np.testing.assert_array_equal(gray, np.repeat(rgb[..., :1], 3, axis=2))


# ---------------------------------------------------------------------------------------- damaged JPEGs
def test_garbage_in_the_scan_is_an_error_quoting_libjpeg(face_jpeg):
    with pytest.raises(
        ImageDecodeError, match=r"cannot decode 'x\.rec' key 7 \(\d+ bytes\): corrupt JPEG.*Corrupt JPEG data"
    ):
        decode_rgb(overwritten(face_jpeg), "'x.rec' key 7")


@pytest.mark.parametrize("before_end", [1500, 400, 64])
def test_overwritten_scan_data_is_caught(before_end):
    # libjpeg-turbo checks every Huffman code in its careful decoder, used for the last ~3 KB of the
    # data; its fast decoder before that decodes an invalid code as 0 without a warning, so damage
    # there is caught only when it shifts the data's end (extraneous bytes / premature end)
    for img, _ in synth_images(4, 1, seed=1):
        buf = jpeg(img)
        with pytest.raises(ImageDecodeError, match="Corrupt JPEG data"):
            decode_rgb(overwritten(buf, before_end=before_end))


def test_missing_scan_data_is_an_error(face_jpeg):
    with pytest.raises(ImageDecodeError, match=r"Corrupt JPEG data: premature end of data segment"):
        decode_rgb(cut(face_jpeg))


def test_truncated_jpeg_is_an_error(face_jpeg):
    with pytest.raises(ImageDecodeError, match=r"some\.jpg.*(truncated|Premature end of JPEG file)"):
        decode_rgb(truncated(face_jpeg), "some.jpg")
    with pytest.raises(ImageDecodeError, match=r"(truncated|Premature end of JPEG file)"):
        decode_rgb(face_jpeg[:-2])  # only the end-of-image marker missing


def test_extraneous_bytes_before_eoi_are_an_error(face_jpeg):
    with pytest.raises(ImageDecodeError, match=r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9"):
        decode_rgb(extraneous(face_jpeg))


def test_read_rgb_names_the_file(tmp_path, face_jpeg):
    path = tmp_path / "damaged.jpg"
    path.write_bytes(overwritten(face_jpeg))
    with pytest.raises(ImageDecodeError, match=r"image file '.*damaged\.jpg'.*Corrupt JPEG data"):
        read_rgb(path)


def test_libjpeg_warning_is_not_left_on_stderr_and_stderr_is_restored(capfd, face_jpeg):
    with pytest.raises(ImageDecodeError):
        decode_rgb(overwritten(face_jpeg))
    decode_rgb(face_jpeg)
    os.write(2, b"after the decode\n")
    err = capfd.readouterr().err
    assert "Corrupt JPEG" not in err and "after the decode" in err


def test_other_writes_to_stderr_during_a_decode_are_passed_on(capfd):
    out, text = images._stderr.call(os.write, 2, b"not from libjpeg\n")
    assert out == len(b"not from libjpeg\n") and text == b"not from libjpeg\n"
    assert (
        images._jpeg_problem(text + b"Corrupt JPEG data: bad Huffman code\n") == "Corrupt JPEG data: bad Huffman code"
    )
    assert capfd.readouterr().err == "not from libjpeg\n"


def test_not_an_image_and_empty():
    with pytest.raises(ImageDecodeError, match=r"r\.rec key 1 \(12 bytes\): not a valid"):
        decode_rgb(b"not an image", "r.rec key 1")
    with pytest.raises(ImageDecodeError, match=r"\(0 bytes\)"):
        decode_rgb(b"")
