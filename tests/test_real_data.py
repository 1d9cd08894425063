"""Real-format data through the configs: every file-reading data and val option builds on files
written here; presets check the published sizes; main.py trains on a .rec and validates on .bin/XQLFW."""

from __future__ import annotations

import pytest
import torch

from fiqa.tasks import build as B
from tests.conftest import compose_cfg
from tests.helpers.realdata import BIN_SETS, synth_images, write_bin_sets, write_imagefolder, write_rec, write_xqlfw
from tests.helpers.run_main import read_metrics, run_main
from tests.test_configs import FILE_OPTIONS, _options

SMALL_VAL = ["val.synth.dataset.num_pairs=20"]
PRESETS = {"ms1mv2": (85742, 5822653), "ms1mv3": (93431, 5179510), "casia_webface": (10572, 490623),
           "webface4m": (205990, None), "glint360k": (360232, None)}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("realdata")
    samples = synth_images(4, 3)
    write_imagefolder(d / "folder", samples)
    lines = [f"{p.relative_to(d)};{int(p.parent.name[3:])}" for p in sorted((d / "folder").rglob("*.jpg"))]
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    write_bin_sets(d / "data", 20)
    write_xqlfw(d / "data", 20)
    return {"rec": write_rec(d / "rec", samples), "folder": d / "folder", "list": d / "list.txt", "data": d / "data"}


def test_the_file_options_are_the_ones_this_file_covers():
    assert set(_options("data")) - {"synthface"} == FILE_OPTIONS["data"]
    assert set(_options("val")) - {"synth"} == FILE_OPTIONS["val"] >= set(BIN_SETS) | {"xqlfw"}


@pytest.mark.parametrize("option", ["mxrec", "imagefolder", "filelist"])
def test_data_options_build_and_fill_num_classes(option, files, tmp_path):
    source = {"mxrec": f"data.root={files['rec']}", "imagefolder": f"data.root={files['folder']}",
              "filelist": f"data.list={files['list']}"}[option]  # fmt: skip
    cfg = compose_cfg([f"data={option}", source, *SMALL_VAL], tmp_path)
    assert cfg.data.num_classes is None
    built = B.build(cfg)
    assert len(built.datamodule.train_reader) == 12
    assert built.config["data"]["num_classes"] == 4 == built.method.head.weight.shape[0]
    batch = next(iter(torch.utils.data.DataLoader(
        B.FaceDataModule.__module__ and __import__("fiqa.data.datamodule", fromlist=["FaceDataset"]).FaceDataset(
            built.datamodule.train_reader, built.datamodule.train_transform), batch_size=4)))  # fmt: skip
    assert batch["image"].shape == (4, 3, 112, 112) and batch["image"].abs().max() <= 1.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_check_the_published_sizes(preset, files, tmp_path):
    classes, images = PRESETS[preset]
    cfg = compose_cfg([f"data={preset}", f"data.root={files['rec']}", *SMALL_VAL], tmp_path)
    assert (cfg.data.num_classes, cfg.data.num_images) == (classes, images)
    with pytest.raises(ValueError, match=rf"data.num_classes={classes} but .* holds 4 identities"):
        B.build(cfg)


def test_ms1mv2_default_root_is_under_the_data_dir(tmp_path):
    cfg = compose_cfg(["data=ms1mv2", f"paths.data_dir={tmp_path}", *SMALL_VAL], tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/faces_emore/train.rec not found"):
        B.build(cfg)


def test_missing_data_root_is_a_clear_error(tmp_path):
    cfg = compose_cfg(["data=mxrec", *SMALL_VAL], tmp_path)
    with pytest.raises(Exception, match="data.root"):
        B.build(cfg)


@pytest.mark.parametrize("option", sorted(set(BIN_SETS) | {"xqlfw"}))  # pair sets; tinyface/scface: test_lq_readers
def test_val_options_build_from_the_data_dir(option, files, tmp_path):
    cfg = compose_cfg([f"val=[{option}]", f"paths.data_dir={files['data']}", "data.train.num_identities=4",
                       "data.train.images_per_identity=2"], tmp_path)  # fmt: skip
    datasets, view = B.build_val(cfg)
    assert len(datasets[option]) == 40 and datasets[option].targets()["issame"].shape == (20,)
    assert {"verification", "reject"} <= set(view[option]["protocols"])
    cfg = compose_cfg([f"val=[{option}]", f"paths.data_dir={tmp_path / 'empty'}"], tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"val={option}: .*{tmp_path / 'empty'}.*FIQA_DATA"):
        B.build_val(cfg)


def test_data_dir_comes_from_fiqa_data(monkeypatch, tmp_path):
    monkeypatch.setenv("FIQA_DATA", "/some/where")
    assert compose_cfg(["val=[lfw]"], tmp_path).val.lfw.dataset.data_dir == "/some/where"


def test_main_packs_a_folder_then_trains_on_it_and_validates_on_bin_and_xqlfw(files, tmp_path):
    """The issue's command on files packed by our own tool (task=pack through main.py)."""
    packed = tmp_path / "packed"
    run_main("task=pack", f"pack.input={files['folder']}", f"pack.out_dir={packed}", "pack.progress=false",
             f"hydra.run.dir={tmp_path / 'pack_run'}")  # fmt: skip
    assert (packed / "train.rec").is_file() and (packed / "train.idx").is_file()
    run = tmp_path / "run"
    run_main("data=mxrec", f"data.root={packed}", "val=[lfw,xqlfw]", f"paths.data_dir={files['data']}",
             "backbone=iresnet_tiny", "trainer=cpu", "trainer.max_epochs=1", "data.batch_size=6", "data.num_workers=0",
             "callbacks.progress=null", f"hydra.run.dir={run}")  # fmt: skip
    m = read_metrics(run)
    for s in ("lfw", "xqlfw"):
        assert {f"val/{s}/acc", f"val/{s}/acc_std", f"val/{s}/val@far1e-3"} <= set(m)
        assert 0.0 <= m[f"val/{s}/acc"] <= 1.0
    ckpt = torch.load(next((run / "checkpoints").glob("last.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["fiqa_config"]["data"]["num_classes"] == 4  # filled from the .rec and stored
    assert "pack" not in ckpt["fiqa_config"]


@pytest.mark.slow  # CI time: runs in make test-full
def test_skip_corrupt_in_training(tmp_path):
    """Without data.skip_corrupt a bad record stops training with its key named; with it, training
    goes on and the epoch end reports how many records were skipped."""
    rec = write_rec(tmp_path / "rec", synth_images(4, 3), corrupt_keys=(2, 7))
    common = ["data=mxrec", f"data.root={rec}", "backbone=iresnet_tiny", "trainer=cpu", "trainer.max_epochs=1",
              "data.batch_size=6", "data.num_workers=0", "callbacks.progress=null", "val.synth.dataset.num_pairs=20",
              "val.synth.dataset.num_identities=10"]  # fmt: skip
    bad = run_main(*common, f"hydra.run.dir={tmp_path / 'a'}", check=False)
    assert bad.returncode != 0
    assert "cannot decode" in bad.stderr and ("key 2" in bad.stderr or "key 7" in bad.stderr)
    ok = run_main(*common, "data.skip_corrupt=true", f"hydra.run.dir={tmp_path / 'b'}")
    log = ok.stdout + ok.stderr
    assert "skipped 2 unreadable training records" in log, log[-3000:]
