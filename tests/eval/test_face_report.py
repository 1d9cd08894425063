"""The face report: contact sheet of crops sorted by quality, detections drawn on the originals, HTML page."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from fiqa.eval import face_overview as O
from fiqa.eval import face_report as F

BOX = (180, 60, 268, 174)  # the astronaut's face, x1 y1 x2 y2
MARKS = [[204, 101], [246, 103], [224, 129], [202, 140], [245, 142]]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def _crops(img: np.ndarray, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` 112x112 face crops, the i-th blurred more for odd i, each with a distinct mark so it can be
    found on the sheet, and their qualities (a permutation, so the sorted order is not the input order)."""
    x1, y1, x2, y2 = BOX
    face = cv2.resize(img[y1:y2, x1:x2], (112, 112), interpolation=cv2.INTER_AREA)
    crops = []
    for i in range(n):
        c = cv2.GaussianBlur(face, (0, 0), 0.5 + i) if i % 2 else face.copy()
        c[:4, :4] = (i * 37) % 256, (i * 91) % 256, i % 256  # identifies the crop
        crops.append(c)
    q = np.random.default_rng(1).permutation(n).astype(float) / max(n - 1, 1)
    return crops, q


def _png(path) -> np.ndarray:
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    im = cv2.imread(str(path))
    assert im is not None
    return im


def _det():
    return {
        "boxes": np.array([BOX, (300, 20, 380, 110)], float),
        "scores": np.array([0.998, 0.61]),
        "landmarks": np.array([MARKS, [[320, 50], [350, 50], [335, 70], [322, 85], [348, 85]]], float),
        "selected": np.array([True, False]),
    }


# ---- ordering and selection ---------------------------------------------------------------------
def test_order_sorts_finite_qualities_and_puts_nan_last():
    q = [0.5, np.nan, 0.1, 0.9, 0.3, np.nan]
    assert F._order(q, worst_first=True).tolist() == [2, 4, 0, 3, 1, 5]
    assert F._order(q, worst_first=False).tolist() == [3, 0, 4, 2, 1, 5]
    assert F._order([0.2, 0.2, 0.1]).tolist() == [2, 0, 1]  # ties keep input order
    assert F._order([]).tolist() == []


def test_select_keeps_everything_up_to_max_faces():
    q = np.array([0.3, 0.1, np.nan, 0.2])
    head, tail, hidden = F._select(q, True, max_faces=4)
    assert head.tolist() == [1, 3, 0, 2] and tail.size == 0 and hidden == 0


@pytest.mark.parametrize("worst_first", [True, False])
def test_select_past_max_faces_shows_the_worst_and_the_best_halves(worst_first):
    rng = np.random.default_rng(0)
    q = rng.permutation(20).astype(float)
    q[[3, 7]] = np.nan  # faces without a quality are left out when the halves are taken
    head, tail, hidden = F._select(q, worst_first, max_faces=6)
    asc = [int(i) for i in np.argsort(np.where(np.isnan(q), np.inf, q))[:18]]
    worst, best = asc[:3], asc[-3:]
    if worst_first:
        assert head.tolist() == worst and tail.tolist() == best
    else:
        assert head.tolist() == best[::-1] and tail.tolist() == worst[::-1]
    assert hidden == 20 - 6


def test_select_with_few_qualities_fills_up_with_nan_faces():
    q = np.array([np.nan, 0.5, np.nan, 0.2, np.nan, np.nan])
    head, tail, hidden = F._select(q, True, max_faces=4)
    assert head.tolist() == [3, 1, 0, 2] and tail.size == 0 and hidden == 2
    with pytest.raises(ValueError):
        F._select(q, True, max_faces=1)


def test_labels_captions_title_and_colours():
    assert F._label(1.23456, 63) == "q 1.235 · 63"
    assert F._label(np.nan, -1) == "q n/a · n/a"
    assert F._label(0.5) == "q 0.5"
    name = "some_folder/IMG_20240101_portrait_0001.jpg"
    short = F._ellipsize(name, 15)
    assert len(short) == 15 and "…" in short and short.startswith("some_f") and short.endswith(".jpg")
    assert F._ellipsize("a.jpg", 15) == "a.jpg"
    s = F._summary([0.1, np.nan, 0.4, 0.9])
    assert "N = 4" in s and "min 0.1" in s and "median 0.4" in s and "max 0.9" in s and "1 without" in s
    c = F._rank_colours([0.9, 0.1, np.nan, 0.5]).astype(int)
    assert c[1, 0] > c[1, 1] + 80  # worst: red
    assert c[0, 1] > c[0, 0] + 50  # best: green
    assert tuple(c[2]) == F.NAN_COLOUR


# ---- contact sheet ------------------------------------------------------------------------------
def test_sheet_places_the_crops_in_quality_order_with_rank_coloured_borders(astronaut):
    crops, q = _crops(astronaut, 10)
    canvas, placements, band = F._sheet(crops, q, worst_first=True, max_faces=64, columns=4)
    assert band is None
    assert [i for i, _, _ in placements] == np.argsort(q).tolist()
    for i, x, y in placements:
        np.testing.assert_array_equal(canvas[y : y + 112, x : x + 112], crops[i])
    _, x, y = placements[0]
    worst = canvas[y - 2, x + 50].astype(int)  # inside the border, above the crop
    _, x, y = placements[-1]
    best = canvas[y - 2, x + 50].astype(int)
    assert worst[0] > worst[1] + 80 and best[1] > best[0] + 50
    assert canvas.shape[1] == 6 + 4 * (112 + 8 + 6)  # 4 columns


def test_sheet_truncation_leaves_a_band_between_the_worst_and_the_best(astronaut):
    crops, q = _crops(astronaut, 13)
    canvas, placements, band = F._sheet(crops, q, worst_first=True, max_faces=4, columns=8)
    shown = [i for i, _, _ in placements]
    asc = np.argsort(q).tolist()
    assert shown == asc[:2] + asc[-2:]
    y_band, hidden = band
    assert hidden == 9
    ys = [y for _, _, y in placements]
    assert ys[0] == ys[1] < y_band < ys[2] == ys[3]  # worst half above the band, best half below


def test_contact_sheet_writes_a_png(tmp_path, astronaut):
    crops, q = _crops(astronaut, 20)
    q[4] = np.nan
    caps = [f"raw/photos/IMG_{i:04d}_with_a_long_name.jpg" for i in range(20)]
    iso = np.arange(20) * 5 - 1
    out = F.contact_sheet(crops, q, tmp_path / "new" / "sheet.png", captions=caps, title="astro", iso=iso, columns=5)
    im = _png(out)
    assert out == tmp_path / "new" / "sheet.png"
    assert 5 * 112 <= im.shape[1] <= 3000 and 4 * 112 <= im.shape[0] <= 3000
    trunc = _png(F.contact_sheet(np.stack(crops), q, tmp_path / "t.png", max_faces=6, columns=3, worst_first=False))
    assert trunc.shape[0] < im.shape[0]  # 6 faces of 20, in fewer rows


def test_contact_sheet_one_and_no_faces(tmp_path, astronaut):
    crops, _ = _crops(astronaut, 1)
    one = _png(F.contact_sheet(crops, [0.7], tmp_path / "one.png"))
    assert one.shape[0] >= 112 and one.shape[1] >= 112
    none = _png(F.contact_sheet([], np.zeros(0), tmp_path / "none.png", title="empty"))
    assert none.shape[0] > 50 and none.shape[1] > 100
    assert np.unique(none.reshape(-1, 3), axis=0).shape[0] > 1  # some text, not a blank image
    with pytest.raises(ValueError):
        F.contact_sheet(crops, [0.1, 0.2], tmp_path / "bad.png")


# ---- detections on the originals ----------------------------------------------------------------
def test_draw_detections_marks_landmarks_and_boxes(astronaut):
    det = _det()
    out = O._draw_detections(astronaut, det)
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, astronaut)
    for (x, y), colour in zip(MARKS, O.LANDMARK_COLOURS):
        assert tuple(out[y, x]) == colour and tuple(astronaut[y, x]) != colour
    x1, y1, x2, y2 = BOX
    assert tuple(out[(y1 + y2) // 2, x1]) == O.KEPT_COLOUR  # left edge of the kept box
    assert tuple(out[(y1 + y2) // 2, x2]) == O.KEPT_COLOUR
    # the other face: thin dashed orange (first dash of its left edge, a gap further down)
    left = out[24:110, 300].astype(int)
    orange = np.abs(left - O.OTHER_COLOUR).sum(axis=1) < 60
    assert orange.any() and not orange.all()
    assert np.array_equal(out[400:, :100], astronaut[400:, :100])  # away from the detections: untouched


def test_draw_detections_downscales_large_images_and_their_coordinates(astronaut):
    big = cv2.resize(astronaut, (1600, 1200), interpolation=cv2.INTER_LINEAR)
    sx, sy = 1600 / 512, 1200 / 512
    det = {
        "boxes": np.array([BOX], float) * [sx, sy, sx, sy],
        "scores": np.array([0.99]),
        "landmarks": np.array([MARKS], float) * [sx, sy],
    }
    out = O._draw_detections(big, det)
    assert out.shape == (480, 640, 3)
    s = 640 / 1600
    for (x, y), colour in zip(MARKS, O.LANDMARK_COLOURS):
        assert tuple(out[round(y * sy * s), round(x * sx * s)]) == colour
    assert tuple(out[round(117 * sy * s), round(BOX[0] * sx * s)]) == O.KEPT_COLOUR  # no selected: all kept


def test_draw_detections_failed_image_gets_a_red_frame_and_no_boxes(astronaut):
    det = {**_det(), "failed": "no face above min_size"}
    out = O._draw_detections(astronaut, det)
    assert tuple(out[0, 0]) == O.FAILED_COLOUR and tuple(out[256, 511]) == O.FAILED_COLOUR
    np.testing.assert_array_equal(out[50:480, 50:480], astronaut[50:480, 50:480])
    with pytest.raises(ValueError):
        O._draw_detections(astronaut, {**_det(), "scores": np.array([0.9])})


def test_alignment_overview_writes_a_grid(tmp_path, astronaut):
    big = cv2.resize(astronaut, (1024, 1024))
    dets = [_det(), {"boxes": np.array([BOX], float) * 2, "scores": [0.9], "landmarks": np.array([MARKS]) * 2.0}]
    dets.append({"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "failed": "no face <found>"})
    caps = ["astronaut.png", "big.png", "blank.png"]
    out = O.alignment_overview([astronaut, big, astronaut], dets, tmp_path / "a" / "align.png", captions=caps)
    im = _png(out)
    assert im.shape[1] > im.shape[0] > 200  # one row of three
    two = _png(O.alignment_overview([astronaut] * 3, [_det()] * 3, tmp_path / "two.png", max_images=2, columns=3))
    assert two.shape[1] < im.shape[1]  # only 2 columns drawn
    _png(O.alignment_overview([], [], tmp_path / "none.png"))
    with pytest.raises(ValueError):
        O.alignment_overview([astronaut], [], tmp_path / "bad.png")


# ---- html ---------------------------------------------------------------------------------------
def test_write_html_escapes_text_and_references_pngs_relatively(tmp_path):
    (tmp_path / "report" / "figs").mkdir(parents=True)
    sheet = tmp_path / "report" / "figs" / "sheet 1.png"
    other = tmp_path / "align.png"
    for p in (sheet, other):
        p.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = tmp_path / "report" / "index.html"
    out = F.write_html(
        page,
        "faces & <quality>",
        [("worst <script>alert(1)</script>", sheet, "file <script>x</script>.jpg"), ("overview", other)],
    )
    text = out.read_text(encoding="utf-8")
    assert out == page
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "faces &amp; &lt;quality&gt;" in text
    assert 'src="figs/sheet%201.png"' in text and 'src="../align.png"' in text
    assert "base64" not in text and "http" not in text and str(tmp_path) not in text
