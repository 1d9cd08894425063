"""MXRecDataset (data=mxrec): record selection, labels, num_classes, errors, fork safety."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fiqa.data.datamodule import FaceDataset
from fiqa.data.images import ImageDecodeError
from fiqa.data.mxrec import MXRecDataset, RecordIndex, read_index
from fiqa.data.recordio import (
    IndexOffsetError,
    IRHeader,
    MalformedIndexError,
    MXIndexedRecordIO,
    RecordIOError,
    pack,
)
from fiqa.data.transforms import ToModelInput
from tests.helpers.jpeg_damage import overwritten, truncated
from tests.helpers.realdata import jpeg, synth_images, write_rec

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "insightface_rec"


@pytest.fixture(scope="module")
def samples():
    return synth_images(5, 3)  # 15 images, labels 0..4 grouped


def test_mxnet_fixture_selection_labels_and_pixels():
    if not (FIXTURES / "train.rec").is_file():
        pytest.skip(f"mxnet-written fixture not found at {FIXTURES}")
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    ds = MXRecDataset(FIXTURES)
    assert ds.layout == "face2rec2"
    assert len(ds) == len(manifest["images"]) == manifest["header0"][0] - 1
    assert ds.num_classes == manifest["header0"][1] - manifest["header0"][0]
    for i, rec in enumerate(manifest["images"]):
        img, label, meta = ds[i]
        assert meta["key"] == rec["record"] and label == rec["label"]
        # the manifest holds mxnet's decoded BGR pixel sums; we yield RGB
        assert int(img[..., ::-1].astype(np.int64).sum()) == rec["bgr_sum"]


def test_header_layout_vector_labels(tmp_path, samples):
    ds = MXRecDataset(write_rec(tmp_path, samples))
    assert (len(ds), ds.num_classes, ds.layout) == (15, 5, "face2rec2")
    assert ds.image_keys.tolist() == list(range(1, 16))  # records 0 and 16..20 are not images
    assert [ds[i][1] for i in range(15)] == [lab for _, lab in samples]
    img, _, _ = ds[4]
    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg(samples[4][0]), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(img, ref)


def test_header_layout_scalar_labels(tmp_path, samples):
    ds = MXRecDataset(write_rec(tmp_path, samples, vector_labels=False))
    assert [ds[i][1] for i in range(15)] == [lab for _, lab in samples]


def test_no_header_every_key_in_idx_order_and_max_label(tmp_path, samples):
    # im2rec layout with keys written in a shuffled order and one class (label 4) missing at the end
    root = tmp_path / "r"
    root.mkdir()
    order = np.random.default_rng(0).permutation(12)  # only samples of labels 0..3
    w = MXIndexedRecordIO(root / "train.idx", root / "train.rec", "w")
    for key in order:
        img, lab = samples[int(key)]
        w.write_idx(int(key), pack(IRHeader(0, float(lab), int(key), 0), jpeg(img)))
    w.close()
    ds = MXRecDataset(root)
    assert ds.layout == "im2rec"
    assert ds.image_keys.tolist() == order.tolist()  # .idx order, key 0 is an image
    assert ds.num_classes == 4
    assert [ds[i][1] for i in range(12)] == [samples[int(k)][1] for k in order]
    np.testing.assert_array_equal(ds.labels, [samples[int(k)][1] for k in order])


def test_label_scan_handles_vector_labels_and_a_magic_in_the_header(tmp_path, samples):
    """scan_labels reads headers in place; a record whose header bytes contain the magic at an aligned
    offset is split into chunks by the writer and must go through the slow path."""
    root2 = tmp_path / "r2"
    root2.mkdir()
    w = MXIndexedRecordIO(root2 / "train.idx", root2 / "train.rec", "w")
    magic_id = 0xCED7230A  # IRHeader.id: its bytes are the magic, at the aligned payload offset 8
    w.write_idx(5, pack(IRHeader(0, [3.0, 1.0], magic_id, 0), jpeg(samples[0][0])))
    w.write_idx(6, pack(IRHeader(0, 1.0, 6, 0), jpeg(samples[1][0])))
    w.close()
    idx = RecordIndex(root2 / "train.rec", root2 / "train.idx")
    first_lrec = int.from_bytes((root2 / "train.rec").read_bytes()[4:8], "little")
    assert first_lrec >> 29 == 1 and first_lrec & ((1 << 29) - 1) == 8  # split: an 8-byte first chunk
    np.testing.assert_array_equal(idx.scan_labels(np.array([5, 6])), [3.0, 1.0])
    ds = MXRecDataset(root2)
    assert ds.num_classes == 4 and ds[0][1] == 3


def test_num_classes_and_num_images_checks_name_both_values(tmp_path, samples):
    root = write_rec(tmp_path, samples)
    with pytest.raises(ValueError, match=r"data.num_classes=85742 but .* holds 5 identities"):
        MXRecDataset(root, num_classes=85742)
    with pytest.raises(ValueError, match=r"data.num_images=5822653 but .* holds 15 images"):
        MXRecDataset(root, num_images=5822653)
    assert MXRecDataset(root, num_classes=5, num_images=15).num_classes == 5


def test_missing_files_name_the_path(tmp_path, samples):
    with pytest.raises(ValueError, match="data.root is not set"):
        MXRecDataset("???")
    with pytest.raises(FileNotFoundError, match=r"train.rec not found .*data.root="):
        MXRecDataset(tmp_path)
    root = write_rec(tmp_path / "a", samples)
    (root / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"train.idx not found"):
        MXRecDataset(root)


def test_header_range_missing_keys(tmp_path, samples):
    root = write_rec(tmp_path, samples)
    lines = (root / "train.idx").read_text().splitlines()
    (root / "train.idx").write_text("\n".join(ln for ln in lines if not ln.startswith("7\t")) + "\n")
    with pytest.raises(RecordIOError, match=r"keys 1..15, but 1 of them are not in the .idx \(first: 7\)"):
        MXRecDataset(root)


def test_index_errors_name_line_and_offset(tmp_path, samples):
    root = write_rec(tmp_path, samples)
    size = (root / "train.rec").stat().st_size
    good = (root / "train.idx").read_text()
    (root / "train.idx").write_text(good + f"99\t{size + 100}\n")
    with pytest.raises(IndexOffsetError, match=rf"line {len(good.splitlines()) + 1} gives offset {size + 100}"):
        MXRecDataset(root)
    (root / "train.idx").write_text(good.replace("3\t", "3 x\t", 1))
    with pytest.raises(MalformedIndexError, match="malformed .idx line"):
        MXRecDataset(root)


def test_duplicate_idx_key_keeps_the_last_offset_like_mxnet(tmp_path, samples):
    root = write_rec(tmp_path, samples)
    lines = (root / "train.idx").read_text().splitlines()
    off2 = lines[2].split("\t")[1]  # key 2's offset
    (root / "train.idx").write_text("\n".join([*lines, f"1\t{off2}"]) + "\n")
    keys, offsets = read_index(root / "train.idx", (root / "train.rec").stat().st_size)
    assert keys.tolist().count(1) == 1 and keys.tolist().index(1) == 1
    assert offsets[1] == int(off2)
    ref = MXIndexedRecordIO(root / "train.idx", root / "train.rec", "r")
    assert ref.idx[1] == int(off2) and ref.keys == keys.tolist()


def test_truncated_record_and_undecodable_image_name_key_and_offset(tmp_path, samples):
    root = write_rec(tmp_path, samples, corrupt_keys=(3,))
    ds = MXRecDataset(root)
    off = ds.index.offset(3)
    with pytest.raises(ImageDecodeError, match=rf"key 3 \(byte offset {off}\)"):
        ds[2]
    rec = root / "train.rec"
    data = rec.read_bytes()
    last_image_off = ds.index.offset(15)
    rec.write_bytes(data[: last_image_off + 20])  # cut inside image record 15 (identity records gone too)
    (root / "train.idx").write_text(
        "".join(
            ln + "\n"
            for ln in (root / "train.idx").read_text().splitlines()
            if int(ln.split("\t")[1]) <= last_image_off
        )
    )
    with pytest.raises(RecordIOError, match=r"(?i)truncated.*byte offset"):
        MXRecDataset(root, num_classes=5)[14]


def test_label_out_of_range_is_named(tmp_path, samples):
    root = write_rec(tmp_path, samples)
    # rewrite header 0 to claim 2 identities: labels 2..4 are then out of range
    w = MXIndexedRecordIO(tmp_path / "x.idx", tmp_path / "x.rec", "w")
    r = MXIndexedRecordIO(root / "train.idx", root / "train.rec", "r")
    for k in r.keys:
        buf = r.read_idx(k)
        w.write_idx(k, pack(IRHeader(2, [16, 18], 0, 0), b"") if k == 0 else buf)
    w.close()
    shutil.move(tmp_path / "x.rec", root / "train.rec")
    shutil.move(tmp_path / "x.idx", root / "train.idx")
    ds = MXRecDataset(root)
    assert ds.num_classes == 2
    with pytest.raises(RecordIOError, match=r"label 2 is not a class index in \[0, 2\).*key 7"):
        ds[6]


def test_skip_corrupt_skips_training_records_and_counts(tmp_path, samples):
    ds = MXRecDataset(write_rec(tmp_path, samples, corrupt_keys=(3, 4)))
    strict = FaceDataset(ds, ToModelInput())
    with pytest.raises(ImageDecodeError):
        strict[2]
    lenient = FaceDataset(ds, ToModelInput(), skip_corrupt=True)
    s = lenient[2]  # keys 3 and 4 (indices 2, 3) are bad: index 4 (key 5) is returned
    assert int(s["skipped"]) == 2 and int(s["label"]) == samples[4][1]
    assert int(lenient[0]["skipped"]) == 0


def _damaged_rec(tmp_path, samples):
    """Keys 3 (garbage over the middle of the scan data) and 6 (cut off mid-scan) are damaged JPEGs."""
    damaged = {3: overwritten(jpeg(samples[2][0])), 6: truncated(jpeg(samples[5][0]))}
    return MXRecDataset(write_rec(tmp_path / "r", samples, payloads=damaged))


def test_damaged_jpeg_record_is_an_error_naming_the_record(tmp_path, samples):
    ds = _damaged_rec(tmp_path, samples)
    rec = re.escape(str(tmp_path / "r" / "train.rec"))
    with pytest.raises(ImageDecodeError, match=rf"{rec}' key 3 \(byte offset \d+\).*corrupt JPEG.*Corrupt JPEG data"):
        ds[2]
    with pytest.raises(ImageDecodeError, match=rf"{rec}' key 6 \(byte offset \d+\).*(truncated|Premature end)"):
        ds[5]
    img, label, meta = ds[3]  # the records around them are intact
    assert meta["key"] == 4 and label == samples[3][1]
    np.testing.assert_array_equal(img, ds_reference(samples[3][0]))
    with pytest.raises(ImageDecodeError, match="key 3"):
        FaceDataset(ds, ToModelInput())[2]  # without data.skip_corrupt: training stops here


def test_skip_corrupt_skips_and_counts_damaged_jpegs(tmp_path, samples):
    lenient = FaceDataset(_damaged_rec(tmp_path, samples), ToModelInput(), skip_corrupt=True)
    s = lenient[2]  # key 3 is damaged: key 4 (index 3) is returned
    assert int(s["skipped"]) == 1 and int(s["label"]) == samples[3][1]
    assert int(lenient[5]["skipped"]) == 1 and int(lenient[4]["skipped"]) == 0
    # the same in forked DataLoader workers (each has its own stderr capture)
    loader = torch.utils.data.DataLoader(lenient, batch_size=5, num_workers=2)
    assert sum(int(b["skipped"].sum()) for b in loader) == 2


def ds_reference(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg(rgb), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_pickles_without_the_map_and_reads_in_worker_processes(tmp_path, samples):
    ds = MXRecDataset(write_rec(tmp_path, samples))
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.index._mm is None
    np.testing.assert_array_equal(clone[3][0], ds[3][0])
    loader = torch.utils.data.DataLoader(FaceDataset(ds, ToModelInput()), batch_size=5, num_workers=2)
    labels = torch.cat([b["label"] for b in loader]).tolist()
    assert labels == [lab for _, lab in samples]
