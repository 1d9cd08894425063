"""Verification sets from files: BinPairs (val=[lfw,...]) and XQLFW / LFW-format pairs files."""

from __future__ import annotations

import numpy as np
import pytest

from fiqa.data.binpairs import BinPairs, load_bin
from fiqa.data.xqlfw import XQLFW, LFWPairs, parse_pairs_file
from tests.helpers.realdata import write_bin_sets, write_xqlfw


def test_binpairs_decodes_like_load_bin_and_gives_issame(tmp_path):
    write_bin_sets(tmp_path, 20, names=("lfw",))
    ds = BinPairs("lfw", str(tmp_path))
    images, issame = load_bin(tmp_path / "lfw.bin")
    assert len(ds) == 40
    for i in (0, 1, 39):
        np.testing.assert_array_equal(ds[i][0], images[i])
        assert ds[i][1] == int(issame[i // 2])
    np.testing.assert_array_equal(ds.targets()["issame"], issame)


def test_binpairs_missing_file_says_how_to_set_the_data_dir(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"val=cfp_fp: .*cfp_fp.bin not found.*paths.data_dir=DIR.*FIQA_DATA=DIR"
    ):
        BinPairs("cfp_fp", str(tmp_path))


def test_binpairs_refuses_a_pickle_that_is_not_bytes_and_bools(tmp_path):
    import pickle

    (tmp_path / "lfw.bin").write_bytes(pickle.dumps(([1, 2], [True]), protocol=2))
    with pytest.raises(ValueError, match=r"lfw.bin: expected \(list of 2P encoded images"):
        BinPairs("lfw", str(tmp_path))


def test_xqlfw_reads_pairs_in_file_order(tmp_path):
    write_xqlfw(tmp_path, 20)
    ds = XQLFW(tmp_path / "xqlfw")
    lines = (tmp_path / "xqlfw" / "xqlfw_pairs.txt").read_text().splitlines()[1:]
    assert len(ds) == 40 and ds.targets()["issame"].tolist() == [len(ln.split()) == 3 for ln in lines]
    first = lines[0].split()
    assert ds.paths[0].endswith(f"{first[0]}/{first[0]}_{int(first[1]):04d}.jpg")
    assert ds.paths[1].endswith(f"{first[0]}/{first[0]}_{int(first[2]):04d}.jpg")
    img, issame, meta = ds[1]
    assert img.shape == (112, 112, 3) and issame == 1 and meta["index"] == 1


def test_pairs_file_malformed_line_is_named(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("10 300\nA 1 2\nA 1 B 2\nA 1\n")
    with pytest.raises(ValueError, match=r"pairs.txt: line 4: expected 3 fields .* got 2"):
        parse_pairs_file(p)
    p.write_text("header\nA 1 2\nA one 2\n")
    with pytest.raises(ValueError, match=r"line 3: an image number is not an integer"):
        parse_pairs_file(p)
    p.write_text("header\nA 1 2 3 4 5\n")
    with pytest.raises(ValueError, match=r"line 2: expected 3 fields \(name n1 n2\) or 4 .* got 6"):
        parse_pairs_file(p)


def test_missing_xqlfw_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val=xqlfw: pairs file .*xqlfw_pairs.txt not found.*FIQA_DATA"):
        XQLFW(tmp_path / "xqlfw")
    write_xqlfw(tmp_path, 20)
    img = sorted((tmp_path / "xqlfw" / "xqlfw_aligned_112").rglob("*.jpg"))
    used = {p.rsplit("/", 1)[-1] for p in XQLFW(tmp_path / "xqlfw").paths}
    victim = next(p for p in img if p.name in used)
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{victim.name} of pair \d+ \(line \d+ of"):
        XQLFW(tmp_path / "xqlfw")


def test_lfw_pairs_generic_layout(tmp_path):
    write_xqlfw(tmp_path, 20)
    root = tmp_path / "xqlfw"
    (root / "xqlfw_pairs.txt").rename(root / "pairs.txt")
    ds = LFWPairs(root, pairs="pairs.txt", images="xqlfw_aligned_112", name="lfw_raw")
    assert len(ds) == 40
