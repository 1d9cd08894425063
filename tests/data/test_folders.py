"""data=imagefolder and data=filelist readers: labels, formats, errors naming file and line."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fiqa.data.folders import FileList, ImageFolder, list_image_folder, parse_list_line, read_file_list
from fiqa.data.images import ImageDecodeError
from tests.helpers.realdata import synth_images, write_imagefolder


@pytest.fixture(scope="module")
def samples():
    return synth_images(3, 2)


def test_imagefolder_labels_follow_sorted_directory_names(tmp_path, samples):
    root = write_imagefolder(tmp_path, samples, ext=".png")
    (tmp_path / "id_000" / "notes.txt").write_text("not an image")
    ds = ImageFolder(root)
    assert (len(ds), ds.num_classes, ds.classes) == (6, 3, ["id_000", "id_001", "id_002"])
    img, label, meta = ds[3]
    assert label == samples[3][1] and meta["path"].endswith(".png")
    np.testing.assert_array_equal(img, samples[3][0])  # PNG is lossless, and RGB comes back as RGB
    with pytest.raises(ValueError, match="data.num_classes=5 but image folder .* has 3 classes"):
        ImageFolder(root, num_classes=5)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no identity sub-directories"):
        list_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no images with extensions"):
        list_image_folder(tmp_path)


@pytest.mark.parametrize(
    "line,expected",
    [
        ("/d/a b/x.jpg;3\n", ("/d/a b/x.jpg", 3)),  # EQFace's format, a space in the path
        ("rel/x.jpg\t7", ("rel/x.jpg", 7)),
        ("rel/my x.jpg\t7", ("rel/my x.jpg", 7)),
        ("rel/x.jpg   12 ", ("rel/x.jpg", 12)),
    ],
)
def test_list_line_formats(line, expected):
    assert parse_list_line(line) == expected


@pytest.mark.parametrize(
    "line,msg", [("x.jpg", "expected 'path;label'"), ("x.jpg;a", "not an integer"), ("x.jpg -1", "negative")]
)
def test_list_line_errors(line, msg):
    with pytest.raises(ValueError, match=msg):
        parse_list_line(line)


def test_filelist_relative_paths_comments_and_line_numbers(tmp_path, samples):
    write_imagefolder(tmp_path / "imgs", samples)
    files = sorted((tmp_path / "imgs").rglob("*.jpg"))
    lines = ["# a comment", ""] + [f"imgs/{f.parent.name}/{f.name};{int(f.parent.name[3:])}" for f in files]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    ds = FileList(tmp_path / "train.txt")
    assert (len(ds), ds.num_classes) == (6, 3)
    img, label, _ = ds[5]
    assert label == 2 and img.shape == (112, 112, 3)
    paths, labels = read_file_list(tmp_path / "train.txt", root=tmp_path / "elsewhere")
    assert paths[0].startswith(str(tmp_path / "elsewhere"))
    (tmp_path / "bad.txt").write_text(lines[2] + "\n" + lines[3] + "\nimgs/x.jpg;oops\n")
    with pytest.raises(ValueError, match=r"bad.txt: line 3: label 'oops' is not an integer"):
        FileList(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="list file not found"):
        FileList(tmp_path / "missing.txt")


def test_missing_and_undecodable_images_are_named(tmp_path):
    (tmp_path / "list.txt").write_text("a.jpg 0\nb.jpg 1\n")
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    ds = FileList(tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        ds[0]
    with pytest.raises(ImageDecodeError, match=r"b.jpg.*7 bytes"):
        ds[1]


def test_grayscale_image_becomes_three_channels(tmp_path):
    (tmp_path / "p").mkdir()
    cv2.imwrite(str(tmp_path / "p" / "g.png"), np.full((20, 20), 77, np.uint8))
    img, _, _ = ImageFolder(tmp_path)[0]
    assert img.shape == (20, 20, 3) and (img == 77).all()
