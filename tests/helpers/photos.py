"""Real photos that nobody here made, for the detection / alignment tests.

* ``astronaut()``: scikit-image's ``data.astronaut()`` (Eileen Collins, NASA, public domain);
* ``grace_hopper()``: matplotlib's sample ``grace_hopper.jpg`` (public domain);
* ``insightface(name)``: ``insightface/data/images/<name>`` read straight from the insightface 2.1 wheel
  that ``make install`` downloads into ``.cache/testdata`` (``pip download --no-deps``; never installed,
  so none of its dependencies come in): ``t1.jpg`` (a group photo of six people) and
  ``Tom_Hanks_54745.png`` (an aligned 112x112 crop).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEEL = "insightface-2.1-py3-none-any.whl"


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook as cbook

    from fiqa.data.photos import read_photo

    return read_photo(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def wheel_path() -> Path:
    return Path(os.environ.get("FIQA_TESTDATA", ROOT / ".cache" / "testdata")) / WHEEL


def insightface_bytes(name: str) -> bytes:
    path = wheel_path()
    if not path.is_file():
        pytest.skip(
            f"{path} is missing: `make install` downloads it (pip download --no-deps insightface==2.1 -d "
            f"{path.parent}); these tests read insightface's sample photos from it"
        )
    with zipfile.ZipFile(path) as z:
        return z.read(f"insightface/data/images/{name}")


def insightface(name: str) -> np.ndarray:
    from fiqa.data.photos import decode_photo

    return decode_photo(insightface_bytes(name), name)


def write_rgb(path: Path, img: np.ndarray, params=()) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(img[:, :, ::-1]), list(params))
    return path
