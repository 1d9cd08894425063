"""fiqa.data.pack: folders and list files -> train.rec/.idx in the face2rec2 and im2rec layouts, read back
with MXIndexedRecordIO + unpack; errors name the file, line or labels; the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiqa.data.images import decode_rgb
from fiqa.data.pack import FLOAT32_EXACT_LIMIT, check_label_range, pack_dataset
from fiqa.data.recordio import MXIndexedRecordIO, unpack

COUNTS = {"alice": 7, "bob": 9, "carol": 6, "dave": 8}  # 30 images, 4 identities, uneven


def _image(seed: int, size: int = 112) -> np.ndarray:
    """A smooth BGR test image (gradients + a disc), so JPEG round trips stay close."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([xx * 200 * r.random(), yy * 200 * r.random(), (xx + yy) * 100], axis=2) + 30
    cv2.circle(img, (int(20 + 70 * r.random()), int(20 + 70 * r.random())), 15, (200, 60, 90), -1)
    return img.astype(np.uint8)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "faces"
    seed = 0
    for name, count in COUNTS.items():
        (root / name).mkdir(parents=True)
        for j in range(count):
            ext = ".png" if j % 3 == 2 else ".jpg"
            cv2.imwrite(str(root / name / f"{j:03d}{ext}"), _image(seed))
            seed += 1
    return root


def _files(root: Path) -> list[tuple[Path, int]]:
    """(path, label) of the folder in list_image_folder's order (sorted identities, sorted files)."""
    return [(p, label) for label, name in enumerate(sorted(COUNTS)) for p in sorted((root / name).iterdir())]


def _open(out: Path) -> MXIndexedRecordIO:
    return MXIndexedRecordIO(out / "train.idx", out / "train.rec", "r")


def _read_all(out: Path) -> dict:
    with _open(out) as r:
        return {k: unpack(r.read_idx(k)) for k in r.keys}


# ---------------------------------------------------------------------------------------- face2rec2 layout
def test_face2rec2_folder_raw(folder, tmp_path):
    out = tmp_path / "rec"
    s = pack_dataset(folder, out, progress=False)
    files = _files(folder)
    n, c = len(files), len(COUNTS)
    assert (s["num_images"], s["num_classes"], s["header0"]) == (n, c, [n + 1, n + 1 + c])
    recs = _read_all(out)
    assert sorted(recs) == list(range(n + 1 + c))
    with _open(out) as r:
        assert r.keys[0] == 0  # record 0 written first (see the module docstring)
    h0, payload0 = recs[0]
    assert h0.flag == 2 and h0.label.tolist() == [n + 1, n + 1 + c] and payload0 == b""
    for key, (path, label) in enumerate(files, 1):  # the folder is already grouped: keys follow it
        h, payload = recs[key]
        assert h.flag == 2 and h.label.tolist() == [label, 1.0] and h.id == key
        assert payload == path.read_bytes()
    first = 1
    for label, name in enumerate(sorted(COUNTS)):
        h, payload = recs[n + 1 + label]
        assert h.label.tolist() == [first, first + COUNTS[name]] and payload == b""
        first += COUNTS[name]
    manifest = json.loads((out / "pack_manifest.json").read_text())
    assert manifest["layout"] == "face2rec2" and manifest["classes"] == sorted(COUNTS)
    assert manifest["source"]["kind"] == "folder" and manifest["bytes"] == (out / "train.rec").stat().st_size
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_face2rec2_list_groups_by_label_stably(folder, tmp_path):
    files = _files(folder)
    order = np.random.default_rng(1).permutation(len(files))  # labels interleaved in the list
    lst = tmp_path / "train.lst"
    seps = [";", "\t", " "]
    lst.write_text(
        "# a comment\n\n"
        + "".join(f"{files[i][0].relative_to(folder)}{seps[k % 3]}{files[i][1]}\n" for k, i in enumerate(order))
    )
    out = tmp_path / "rec"
    pack_dataset(lst, out, list_root=folder, progress=False)
    recs = _read_all(out)
    n = len(files)
    expected = sorted((files[i] for i in order), key=lambda f: f[1])  # stable: list order within a label
    assert recs[0][0].label.tolist() == [n + 1, n + 1 + len(COUNTS)]
    for key, (path, label) in enumerate(expected, 1):
        assert recs[key][0].label.tolist() == [label, 1.0] and recs[key][1] == path.read_bytes()
    # what arcface_torch's MXFaceDataset does: images are keys range(1, header0[0]); identity ranges tile them
    ranges = [recs[k][0].label.astype(int).tolist() for k in range(n + 1, n + 1 + len(COUNTS))]
    assert ranges[0][0] == 1 and ranges[-1][1] == n + 1
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for label, (a, b) in enumerate(ranges):
        assert {int(recs[k][0].label[0]) for k in range(a, b)} == {label}


def test_reencode_and_resize(folder, tmp_path):
    out = tmp_path / "rec"
    s = pack_dataset(folder, out, reencode=True, quality=95, progress=False)
    assert s["reencode"] and s["quality"] == 95
    recs = _read_all(out)
    for key, (path, _) in enumerate(_files(folder), 1):
        payload = recs[key][1]
        assert payload[:2] == b"\xff\xd8"  # JPEG, also for the PNG sources
        got, src = decode_rgb(payload).astype(np.float32), decode_rgb(path.read_bytes()).astype(np.float32)
        assert got.shape == src.shape and np.abs(got - src).mean() < 3.0  # RGB in, RGB out (no channel swap)
    out2 = tmp_path / "rec64"
    s = pack_dataset(folder, out2, image_size=64, progress=False)
    assert s["reencode"] and s["image_size"] == 64
    path = _files(folder)[0][0]
    img = decode_rgb(_read_all(out2)[1][1])
    ref = cv2.resize(decode_rgb(path.read_bytes()), (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert img.shape == (64, 64, 3) and np.abs(img - ref).mean() < 3.0


# ------------------------------------------------------------------------------------------- im2rec layout
def test_im2rec_keys_and_scalar_labels(folder, tmp_path):
    files = _files(folder)
    out = tmp_path / "rec"
    s = pack_dataset(folder, out, layout="im2rec", progress=False)
    assert s["header0"] is None and s["keys"] == [0, len(files) - 1]
    with _open(out) as r:
        assert r.keys == list(range(len(files)))
    recs = _read_all(out)
    for key, (path, label) in enumerate(files):
        h, payload = recs[key]
        assert h.flag == 0 and h.label == float(label) and h.id == key and payload == path.read_bytes()


def test_im2rec_shuffle_is_seeded(folder, tmp_path):
    files = {p.read_bytes(): label for p, label in _files(folder)}
    orders = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        pack_dataset(folder, tmp_path / name, layout="im2rec", shuffle=True, seed=seed, progress=False)
        recs = _read_all(tmp_path / name)
        assert sorted(recs) == list(range(len(files)))
        assert {payload: h.label for h, payload in recs.values()} == files  # same images, same labels
        orders.append([recs[k][1] for k in range(len(files))])
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert orders[0] != [p.read_bytes() for p, _ in _files(folder)]


def test_im2rec_allows_label_gaps(folder, tmp_path):
    lst = tmp_path / "gap.lst"
    lst.write_text("".join(f"{p};{label * 2}\n" for p, label in _files(folder)))
    s = pack_dataset(lst, tmp_path / "rec", layout="im2rec", progress=False)
    assert s["num_classes"] == 7 and _read_all(tmp_path / "rec")[0][0].label == 0.0


# ------------------------------------------------------------------------------------------------- errors
def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no identity sub-directories"):
        pack_dataset(tmp_path / "empty", tmp_path / "rec", progress=False)
    (tmp_path / "empty" / "alice").mkdir()
    with pytest.raises(ValueError, match="no images"):
        pack_dataset(tmp_path / "empty", tmp_path / "rec", progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        pack_dataset(tmp_path / "missing", tmp_path / "rec", progress=False)


def test_malformed_list_line_names_line(folder, tmp_path):
    lst = tmp_path / "bad.lst"
    p = _files(folder)[0][0]
    lst.write_text(f"{p};0\n{p};0\n{p};zero\n")
    with pytest.raises(ValueError, match=r"line 3: label 'zero' is not an integer"):
        pack_dataset(lst, tmp_path / "rec", progress=False)


@pytest.mark.parametrize("workers", [0, 1])
def test_undecodable_image_names_file_and_leaves_no_rec(folder, tmp_path, workers):
    bad = folder / "bob" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "rec"
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        pack_dataset(folder, out, workers=workers, progress=False)
    assert not (out / "train.rec").exists() and not (out / "train.idx").exists()
    assert not list(out.iterdir())  # temp files removed
    pack_dataset(folder, out, verify=False, progress=False)  # --no-verify stores the bytes as they are
    assert (out / "train.rec").is_file()


def test_label_gap_names_missing_labels(folder, tmp_path):
    lst = tmp_path / "gap.lst"
    lst.write_text("".join(f"{p};{[0, 1, 3, 5][label]}\n" for p, label in _files(folder)))
    with pytest.raises(ValueError, match=r"are missing \(labels with no image\): 2, 4; .*--layout im2rec"):
        pack_dataset(lst, tmp_path / "rec", progress=False)
    (folder / "bert").mkdir()  # an identity folder without images: label 1 unused
    with pytest.raises(ValueError, match=r"identity folders without images\): 1 \('bert'\)"):
        pack_dataset(folder, tmp_path / "rec", progress=False)


def test_float32_label_limit():
    check_label_range("face2rec2", 5_822_653, 85_742)  # MS1MV2 fits
    check_label_range("im2rec", 42_474_557, 2_059_906)  # WebFace42M fits as im2rec ...
    with pytest.raises(ValueError, match="use --layout im2rec"):  # ... but not as face2rec2
        check_label_range("face2rec2", 42_474_557, 2_059_906)
    check_label_range("face2rec2", FLOAT32_EXACT_LIMIT - 12, 10)  # N+1+C = 2**24 - 1
    with pytest.raises(ValueError, match="2\\*\\*24"):
        check_label_range("face2rec2", FLOAT32_EXACT_LIMIT - 11, 10)  # N+1+C = 2**24
    with pytest.raises(ValueError, match="2\\*\\*24"):
        check_label_range("im2rec", 10, FLOAT32_EXACT_LIMIT + 1)


def test_bad_options_and_overwrite(folder, tmp_path):
    with pytest.raises(ValueError, match="valid choices"):
        pack_dataset(folder, tmp_path / "rec", layout="lmdb", progress=False)
    with pytest.raises(ValueError, match="im2rec only"):
        pack_dataset(folder, tmp_path / "rec", shuffle=True, progress=False)
    with pytest.raises(ValueError, match="list file"):
        pack_dataset(folder, tmp_path / "rec", list_root=folder, progress=False)
    pack_dataset(folder, tmp_path / "rec", progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        pack_dataset(folder, tmp_path / "rec", progress=False)
    s = pack_dataset(folder, tmp_path / "rec", layout="im2rec", overwrite=True, progress=False)
    assert s["layout"] == "im2rec" and 0 in _read_all(tmp_path / "rec")


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli(folder, tmp_path):
    out = tmp_path / "rec"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    cmd = [sys.executable, "-m", "fiqa.data.pack", str(folder), str(out), "--reencode", "--quality", "90"]
    res = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "identities" in res.stdout and "images/s" in res.stdout
    assert json.loads((out / "pack_manifest.json").read_text())["quality"] == 90
    assert len(_read_all(out)) == 30 + 1 + 4
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)  # exists: a clean error
    assert res.returncode == 1 and "--overwrite" in res.stderr and "Traceback" not in res.stderr


def test_task_run_with_the_default_config(folder, tmp_path):
    """conf/pack/default.yaml's keys are pack_dataset's arguments; tasks.pack.run reads cfg.pack."""
    from omegaconf import OmegaConf

    from fiqa.tasks.pack import run

    node = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "pack" / "default.yaml")
    with pytest.raises(Exception, match="input"):
        run(OmegaConf.create({"pack": node}))
    node.input, node.out_dir, node.progress = str(folder), str(tmp_path / "rec"), False
    s = run(OmegaConf.create({"pack": node}))
    assert s["num_images"] == 30 and (tmp_path / "rec" / "train.rec").is_file()
