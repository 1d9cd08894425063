"""TinyFace and SCface readers (val=[tinyface], val=[scface]) on tiny synthetic releases written here.

``write_tinyface`` / ``write_scface`` write the files the protocols read (the aligned images and, for
SCface, ``all.txt``); they are usable by other tests (``<data_dir>/tinyface``, ``<data_dir>/scface``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fiqa.data.scface import SCface, parse_scface_list
from fiqa.data.synthface import SynthFace
from fiqa.data.tinyface import TinyFace, list_tinyface

TINY_ALIGNED = "aligned_pad_0.1_pad_high"


def _faces(num_identities: int, per_identity: int, seed: int):
    ds = SynthFace(num_identities, per_identity, seed=seed)
    return [ds[i][0] for i in range(len(ds))]  # identity k: images k*per .. k*per+per-1


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def write_tinyface(data_dir: Path, num_identities: int = 3, num_distractors: int = 3, seed: int = 7) -> Path:
    """``<data_dir>/tinyface/aligned_pad_0.1_pad_high/``: identity k (1-based) has probes ``k_1.jpg``,
    ``k_2.png`` and a gallery match ``k_3.jpg``; distractors ``Gallery_Distractor/batch{j%2}/d{j}.jpeg``
    (in sub-folders, as the original walk allows); plus a non-image file that must be ignored."""
    root = data_dir / "tinyface" / TINY_ALIGNED
    faces = _faces(num_identities + num_distractors, 3, seed)
    for k in range(num_identities):
        _write(root / "Probe" / f"{k + 1}_1.jpg", faces[3 * k])
        _write(root / "Probe" / f"{k + 1}_2.png", faces[3 * k + 1])
        _write(root / "Gallery_Match" / f"{k + 1}_3.jpg", faces[3 * k + 2])
    for j in range(num_distractors):
        _write(root / "Gallery_Distractor" / f"batch{j % 2}" / f"d{j}.jpeg", faces[3 * (num_identities + j)])
    (root / "Probe" / "README.txt").write_text("not an image\n")
    return data_dir


SCFACE_ROWS = [
    "001_cam1_1", "001_cam2_3", "001_cam6_1", "001_frontal", "001_L1",
    "002_cam5_2", "002_cam8_3", "002_frontal", "003_cam3_1",
]  # fmt: skip


def write_scface(data_dir: Path, rows=SCFACE_ROWS, seed: int = 9, size: int = 112) -> Path:
    """``<data_dir>/scface/{all.txt, aligned/<stem>.jpg}``: ``all.txt`` rows ``<stem>\\t<label>`` (the second
    column is ignored by the protocol); subject 3 has no mugshot (its probe has no mate)."""
    root = data_dir / "scface"
    faces = _faces(4, len(rows), seed)
    for i, stem in enumerate(rows):
        _write(root / "aligned" / f"{stem}.jpg", cv2.resize(faces[i], (size, size)))
    (root / "all.txt").write_text("".join(f"{s}\t{int(s.split('_')[0])}\n" for s in rows) + "\n")
    return data_dir


# ---- TinyFace ------------------------------------------------------------------------------------
def test_tinyface_reads_the_aligned_release_in_sorted_walk_order(tmp_path):
    write_tinyface(tmp_path)
    ds = TinyFace(tmp_path / "tinyface")
    names = [Path(p).relative_to(ds.aligned_dir).as_posix() for p in ds.paths]
    assert names == [
        "Gallery_Distractor/batch0/d0.jpeg", "Gallery_Distractor/batch0/d2.jpeg", "Gallery_Distractor/batch1/d1.jpeg",
        "Gallery_Match/1_3.jpg", "Gallery_Match/2_3.jpg", "Gallery_Match/3_3.jpg",
        "Probe/1_1.jpg", "Probe/1_2.png", "Probe/2_1.jpg", "Probe/2_2.png", "Probe/3_1.jpg", "Probe/3_2.png",
    ]  # fmt: skip
    t = ds.targets()
    assert t["labels"].tolist() == [-100, -100, -100, 1, 2, 3, 1, 1, 2, 2, 3, 3]
    assert t["is_probe"].tolist() == [False] * 6 + [True] * 6
    img, label, meta = ds[7]
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8 and label == 1 and meta == {"index": 7}
    assert "Probe" in repr(ds) and len(ds) == 12


def test_tinyface_resizes_other_sizes_and_takes_another_aligned_folder(tmp_path):
    write_tinyface(tmp_path)
    (tmp_path / "tinyface" / TINY_ALIGNED).rename(tmp_path / "tinyface" / "mine")
    ds = TinyFace(tmp_path / "tinyface", aligned="mine", image_size=64)
    assert ds[0][0].shape == (64, 64, 3)


def test_tinyface_duplicate_keys_are_refused_naming_both_files(tmp_path):
    write_tinyface(tmp_path)
    root = tmp_path / "tinyface" / TINY_ALIGNED
    _write(root / "Gallery_Distractor" / "1_1.png", np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match=r"key '1_1' is not unique: .*Gallery_Distractor/1_1.png and .*Probe/1_1.jpg"):
        list_tinyface(root)


def test_tinyface_bad_file_name_is_named(tmp_path):
    write_tinyface(tmp_path)
    root = tmp_path / "tinyface" / TINY_ALIGNED
    _write(root / "Gallery_Match" / "abc_1.jpg", np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match=r"Gallery_Match/abc_1.jpg: cannot read the identity"):
        TinyFace(tmp_path / "tinyface")


def test_tinyface_missing_folders_say_how_to_set_the_data_dir(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=rf"val=tinyface: .*{tmp_path}/tinyface/{TINY_ALIGNED} not found.*FIQA_DATA"
    ):
        TinyFace(tmp_path / "tinyface")
    write_tinyface(tmp_path)
    root = tmp_path / "tinyface" / TINY_ALIGNED
    for p in (root / "Gallery_Match").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"no .jpg/.jpeg/.png images under .*Gallery_Match"):
        TinyFace(tmp_path / "tinyface")
    (root / "Gallery_Match").rmdir()
    with pytest.raises(FileNotFoundError, match=r"folder .*Gallery_Match not found"):
        TinyFace(tmp_path / "tinyface")


# ---- SCface --------------------------------------------------------------------------------------
def test_scface_reads_all_txt_drops_ir_and_non_protocol_rows(tmp_path):
    write_scface(tmp_path)
    ds = SCface(tmp_path / "scface")
    assert ds.stems == ["001_cam1_1", "001_cam2_3", "001_frontal", "002_cam5_2", "002_frontal", "003_cam3_1"]
    t = ds.targets()
    assert t["labels"].tolist() == [1, 1, 1, 2, 2, 3]
    assert t["distance"].tolist() == [1, 3, 0, 2, 0, 1]
    assert t["is_probe"].tolist() == [True, True, False, True, False, True]
    img, label, meta = ds[3]
    assert img.shape == (112, 112, 3) and label == 2 and meta == {"index": 3}
    assert "4 probes, 2 gallery" in repr(ds)


@pytest.mark.parametrize(
    "line, message",
    [
        ("001_cam1_4", r"line 2: probe '001_cam1_4' does not end in _1, _2 or _3"),
        ("001_cam1", r"line 2: probe '001_cam1' does not end in _1, _2 or _3"),
        ("x01_cam1_1", r"line 2: 'x01_cam1_1' does not start with a subject number"),
        ("\tcolumn 0 empty", r"line 2: column 0 \(the image stem\) is empty"),
        ("002_frontal", r"line 2: stem '002_frontal' repeats line 1"),
    ],
)
def test_scface_malformed_rows_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "all.txt"
    p.write_text(f"002_frontal\t2\n{line}\t1\n")
    with pytest.raises(ValueError, match=rf"all.txt: {message}"):
        parse_scface_list(p)


def test_scface_missing_files_are_named(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=rf"val=scface: list file {tmp_path}/scface/all.txt not found.*FIQA_DATA"
    ):
        SCface(tmp_path / "scface")
    write_scface(tmp_path)
    (tmp_path / "scface" / "aligned" / "002_cam5_2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image .*aligned/002_cam5_2.jpg \(line 6 of .*all.txt\) not found"):
        SCface(tmp_path / "scface")
    with pytest.raises(FileNotFoundError, match=r"image folder .*scface/other not found"):
        SCface(tmp_path / "scface", aligned="other")
    (tmp_path / "scface" / "all.txt").write_text("001_L1\n001_cam7_1\n")
    with pytest.raises(ValueError, match=r"lists no probe \('cam'\) or no gallery \('frontal'\)"):
        SCface(tmp_path / "scface")


# ---- config -> reader -> protocol ----------------------------------------------------------------
@pytest.mark.parametrize("option", ["tinyface", "scface"])
def test_val_option_builds_from_the_data_dir_and_evaluates(option, tmp_path):
    from fiqa.tasks import build as B
    from tests.conftest import compose_cfg

    (write_tinyface if option == "tinyface" else write_scface)(tmp_path / "data")
    cfg = compose_cfg([f"val=[{option}]", f"paths.data_dir={tmp_path / 'data'}"], tmp_path)
    datasets, view = B.build_val(cfg)
    ds, protocols = datasets[option], view[option]["protocols"]
    t = ds.targets()
    # an oracle embedding: one axis per identity (distractors on their own axes) -> every mated probe at rank 1
    labels = t["labels"]
    emb = np.zeros((len(ds), len(labels) + 10))
    emb[np.arange(len(ds)), np.where(labels >= 0, labels, 10 + np.arange(len(ds)) % 10)] = 1.0
    out = protocols["identification"](embeddings=emb, qualities=np.ones(len(ds)), **t)
    expected = (
        {"rank1", "rank5", "rank20", "rank1_reject0.2"}
        if option == "tinyface"
        else {"rank1_d1", "rank1_d2", "rank1_d3", "rank1", "rank1_reject0.2"}
    )
    assert set(out) == expected and all(v == 1.0 for v in out.values())
    empty = compose_cfg([f"val=[{option}]", f"paths.data_dir={tmp_path / 'empty'}"], tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"val={option}: .*{tmp_path / 'empty'}.*FIQA_DATA"):
        B.build_val(empty)
