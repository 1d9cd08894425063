"""task=quality (images -> CSV) through the real main.py, the scoring API and the image sources."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from fiqa.data.sources import open_source
from fiqa.methods.loading import load_model
from fiqa.quality import score
from fiqa.quality.scoring import ArrayImages, score_reader
from tests.helpers.realdata import synth_images, write_bin_sets, write_imagefolder, write_rec
from tests.helpers.run_main import run_main


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("faces"), synth_images(3, 4, seed=7))


def _csv(path: Path) -> list:
    with open(path) as f:
        return list(csv.reader(f))


def test_task_quality_turns_a_folder_into_a_csv(trained_run, folder, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    run = tmp_path / "q"
    run_main("task=quality", f"ckpt_path={ckpt}", f"score.input={folder}", "score.save_embeddings=true",
             "score.num_workers=0", "score.progress=false", f"hydra.run.dir={run}")  # fmt: skip
    rows = _csv(run / "qualities.csv")
    assert rows[0] == ["path_or_key", "quality"] and len(rows) == 13
    assert rows[1][0] == "id_000/00000.jpg"
    q = np.array([float(r[1]) for r in rows[1:]])
    emb = np.load(run / "embeddings.npy")
    assert emb.shape[0] == 12 and (run / "quality_hist.png").stat().st_size > 1000
    # the same numbers through the Python API, and the model's own forward
    model = load_model(str(ckpt))
    np.testing.assert_allclose(score(str(folder), model, device="cpu"), q, rtol=1e-5, atol=1e-6)
    src = open_source(folder)
    x = torch.stack([torch.from_numpy(src[i][0]).permute(2, 0, 1).float().sub(127.5).div(127.5) for i in range(3)])
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(x).quality.numpy(), q[:3], rtol=1e-5, atol=1e-6)


def test_quality_sources_keys(tmp_path, folder):
    rec = write_rec(tmp_path / "rec", synth_images(2, 2))
    assert open_source(rec / "train.rec").keys == ["1", "2", "3", "4"]
    write_bin_sets(tmp_path / "d", 20, names=("lfw",))
    b = open_source(tmp_path / "d" / "lfw.bin")
    assert len(b) == 40 and b.keys[:3] == ["pair0_0", "pair0_1", "pair1_0"]
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))
    (tmp_path / "list.txt").write_text(f"{files[0]};0\n{files[1]} 3\n# comment\n{files[2]}\n")
    lst = open_source(tmp_path / "list.txt", list_root=str(folder))
    assert lst.keys == files[:3] and lst[2][0].shape == (112, 112, 3)
    with pytest.raises(FileNotFoundError, match="score.input="):
        open_source(tmp_path / "nope")
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown kind"):
        open_source(tmp_path / "x.npz")


def test_score_api_on_arrays_and_quality_wrappers(trained_run):
    from fiqa.methods.wrappers import NormQuality, RandomQuality

    model = load_model(str(trained_run / "checkpoints" / "last.ckpt"))
    images = np.stack([im for im, _ in synth_images(2, 3)])
    q = score(images, model, device="cpu")
    assert q.shape == (6,) and np.isfinite(q).all()
    norm = NormQuality(model)
    _, emb = score_reader(norm, ArrayImages(images), return_embeddings=True)
    np.testing.assert_allclose(score(images, norm, device="cpu"), np.linalg.norm(emb, axis=1), rtol=1e-5)
    r1 = score(images, RandomQuality(model, seed=3), device="cpu")
    r2 = score(images, RandomQuality(model, seed=3), device="cpu")
    np.testing.assert_array_equal(r1, r2)
    with pytest.raises(TypeError, match="images: expected"):
        score(42, model)
