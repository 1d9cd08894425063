"""The IJB-B/C reader (val=[ijbb], val=[ijbc]) on a tiny synthetic release (tests/helpers/ijb_fixture.py):
meta, alignment, RGB, targets, 1:N maps, errors; the configs and the protocol through evaluate_set."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fiqa.data.ijb import IJB, read_1n_csv
from fiqa.eval.sets import evaluate_set
from fiqa.tasks import build as B
from tests.conftest import compose_cfg
from tests.helpers.ijb_fixture import write_ijb


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = tmp_path_factory.mktemp("ijb")
    return d, write_ijb(d, "ijbc"), write_ijb(d, "ijbb", seed=1, one_to_n=False)


def test_reader_gives_the_meta_and_the_aligned_rgb_faces(release):
    _, gt, _ = release
    ds = IJB(gt["root"], "ijbc")
    assert len(ds) == len(gt["names"]) and repr(ds).startswith("IJB(")
    np.testing.assert_allclose(ds.landmarks, gt["landmarks"], atol=1e-4)
    for i in range(len(ds)):
        img, label, meta = ds[i]
        assert img.shape == (112, 112, 3) and img.dtype == np.uint8
        assert label == gt["template_ids"][i] and meta == {"index": i}
        # alignment undoes the warp that made the loose crop (JPEG + two interpolations: a few levels)
        err = np.abs(img[8:104, 8:104].astype(int) - gt["aligned"][i][8:104, 8:104]).mean(axis=(0, 1))
        assert err.max() < 6, (i, err)
    swapped = np.abs(ds[0][0][..., ::-1].astype(int) - gt["aligned"][0]).mean()
    assert swapped > 20  # the tint makes R and B differ: the reader's output is RGB, not BGR


def test_targets(release):
    _, gt, _ = release
    t = IJB(gt["root"], "ijbc").targets()
    assert t["n_images"] == len(gt["names"])
    np.testing.assert_array_equal(t["template_ids"], gt["template_ids"])
    np.testing.assert_array_equal(t["media_ids"], gt["media_ids"])
    np.testing.assert_allclose(t["faceness"], gt["faceness"], atol=1e-6)
    np.testing.assert_array_equal(t["pairs"], gt["pairs"])
    np.testing.assert_array_equal(t["pair_labels"], gt["pair_labels"])
    gallery = dict(gt["gallery"])
    assert sorted(zip(t["gallery_templates"], t["gallery_subjects"])) == sorted(gallery.items())
    assert all(t["gallery_split"][k] == gallery[g] % 2 for k, g in enumerate(t["gallery_templates"]))
    assert dict(zip(t["probe_templates"].tolist(), t["probe_subjects"].tolist())) == dict(gt["probes"])
    assert "issame" not in t and "degradation" not in t  # evaluate_set must not read them as pair/image sets


def test_one_to_n_is_optional(release):
    d, gt, gt_b = release
    t = IJB(gt_b["root"], "ijbb").targets()  # written without the 1:N files
    assert "gallery_templates" not in t and t["pairs"].shape == gt_b["pairs"].shape
    assert "gallery_templates" not in IJB(gt["root"], "ijbc", one_to_n=False).targets()


def test_pickle_leaves_the_targets_behind(release):
    _, gt, _ = release
    ds = IJB(gt["root"], "ijbc")
    ds.targets()
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._targets is None and len(clone) == len(ds)
    np.testing.assert_array_equal(clone[3][0], ds[3][0])


def test_missing_release_says_how_to_set_the_data_dir(tmp_path, release):
    with pytest.raises(FileNotFoundError, match=r"val=ijbc: directory .*IJBC not found.*paths.data_dir=DIR.*FIQA_DATA"):
        IJB(tmp_path / "IJB_release" / "IJBC", "ijbc")
    d, gt, _ = release
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(gt["root"], root)
    (root / "meta" / "ijbc_template_pair_label.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta file .*ijbc_template_pair_label.txt not found.*FIQA_DATA"):
        IJB(root, "ijbc")
    shutil.copytree(gt["root"], root, dirs_exist_ok=True)
    (root / "loose_crop" / gt["names"][0]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"image .*{gt['names'][0]} \(line 1 of .*5pts_score.txt\)"):
        IJB(root, "ijbc")
    with pytest.raises(ValueError, match="IJB name must be one of"):
        IJB(root, "ijba")


def _edit(path, lineno, new):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "file,edit,message",
    [
        ("ijbc_name_5pts_score.txt", lambda s: s.rsplit(" ", 1)[0], r"5pts_score.txt: line 4: 11 fields instead of 12"),
        ("ijbc_name_5pts_score.txt", lambda s: s + " 7", r"5pts_score.txt: line 4: 13 fields instead of 12"),
        ("ijbc_name_5pts_score.txt", lambda s: s.replace(" ", " x", 1), r"line 4: 'x[0-9.]+' is not a number"),
        ("ijbc_face_tid_mid.txt", lambda s: s + " 1", r"tid_mid.txt: line 4: 4 fields instead of 3"),
        ("ijbc_face_tid_mid.txt", lambda s: "other.jpg " + s.split(" ", 1)[1], r"differ at image 3 \(line 4\)"),
        ("ijbc_template_pair_label.txt", lambda s: s[: s.rfind(" ")] + " 2", r"label_?.*line 4: label '2' is not 0"),
        ("ijbc_template_pair_label.txt", lambda s: s[: s.rfind(" ")], r"pair_label.txt: line 4: 2 fields instead of 3"),
        ("ijbc_1N_probe_mixed.csv", lambda s: "T," + s, r"probe_mixed.csv: line 4: expected 'TEMPLATE_ID,SUBJECT_ID"),
    ],
)
def test_malformed_meta_line_is_named(tmp_path, release, file, edit, message):
    import shutil

    _, gt, _ = release
    root = tmp_path / "IJBC"
    shutil.copytree(gt["root"], root)
    _edit(root / "meta" / file, 4, edit)
    with pytest.raises(ValueError, match=message):
        IJB(root, "ijbc").targets()


def test_1n_csv_keeps_the_first_subject_of_a_repeated_template(tmp_path):
    p = tmp_path / "g.csv"
    p.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,50,a.jpg\n3,30,b.jpg\n5,51,c.jpg\n")
    t, s = read_1n_csv(p)
    assert t.tolist() == [3, 5] and s.tolist() == [30, 50]


@pytest.mark.parametrize("option", ["ijbb", "ijbc"])
def test_val_options_build_from_the_data_dir(option, release, tmp_path):
    d, _, _ = release
    cfg = compose_cfg([f"val=[{option}]", f"paths.data_dir={d}"], tmp_path)
    datasets, view = B.build_val(cfg)
    ds = datasets[option]
    assert isinstance(ds, IJB) and ds.name == option and view[option]["flip"] is True
    assert set(view[option]["protocols"]) == {"ijb"}
    cfg = compose_cfg([f"val=[{option}]", f"paths.data_dir={tmp_path / 'empty'}"], tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"val={option}: .*{tmp_path / 'empty'}.*FIQA_DATA"):
        B.build_val(cfg)


def test_the_protocol_through_evaluate_set(release, tmp_path, caplog):
    """What validation does: embeddings of every image (here: subject centres + noise), the set's targets,
    the configured protocol; a partial set (fast_dev_run) skips the protocol with a warning."""
    d, gt, _ = release
    cfg = compose_cfg(["val=[ijbc]", f"paths.data_dir={d}", "val.ijbc.protocols.ijb.weighting=crfiqa"], tmp_path)
    datasets, view = B.build_val(cfg)
    targets = datasets["ijbc"].targets()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 64))
    emb = (centres[gt["subjects"]] * 3 + rng.standard_normal((len(gt["subjects"]), 64))).astype(np.float32)
    res = {"indices": np.arange(len(emb)), "embeddings": emb, "qualities": rng.random(len(emb)).astype(np.float32)}
    m = evaluate_set("ijbc", res, targets, view["ijbc"]["protocols"])
    assert m["rank1"] == 1.0 and m["tar@far1e-1"] == 1.0 and m["roc_auc"] == 1.0
    assert {"tar_strict@far1e-4", "tpir@fpir1e-2", "tpir_nist@fpir1e-2", "erc_auc_fmr1e-3"} <= set(m)
    part = {k: v[:20] for k, v in res.items()}
    assert evaluate_set("ijbc", part, targets, view["ijbc"]["protocols"]) == {}
