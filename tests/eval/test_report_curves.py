"""ROC / CMC / ERC curves: the numbers the protocols hand to the plots (worked out by hand here), the
PNGs ``fiqa.eval.report`` writes, and the validation callback writing ``roc_<set>.png`` /
``cmc_<set>.png`` / ``erc_<set>.png`` into the run dir for IJB-C, TinyFace and SCface (tiny synthetic
releases from tests/helpers and tests/data/test_lq_readers.py)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest

from fiqa.eval import erc as E
from fiqa.eval import ijb as IJ
from fiqa.eval import protocols, protocols_lq, report
from fiqa.eval.sets import evaluate_set

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    import matplotlib.image as mpimg

    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # something is drawn


# ---- ROC ----------------------------------------------------------------------------------------
# Genuine 0.9 0.8 0.4, impostor 0.7 0.3 0.2 0.1. Thresholds (descending) and the counts at or above:
#   0.9: tp 1 fp 0 | 0.8: 2 0 | 0.7: 2 1 | 0.4: 3 1 | 0.3: 3 2 | 0.2: 3 3 | 0.1: 3 4
HAND_S = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
HAND_Y = np.array([1, 1, 1, 0, 0, 0, 0])
HAND_FPR = np.array([0, 0, 0, 1, 1, 2, 3, 4]) / 4
HAND_TPR = np.array([0, 1, 2, 2, 3, 3, 3, 3]) / 3


def test_ijb_roc_curve_by_hand():
    out = IJ.tar_at_far(HAND_S, HAND_Y, fars=(0.1, 0.25, 0.5), return_curves=True)
    fpr, tpr = out.pop("curves")["roc"][""]
    np.testing.assert_allclose(fpr, HAND_FPR)
    np.testing.assert_allclose(tpr, HAND_TPR)
    # FPR <= 0.1: only the FPR-0 points, best TPR 2/3; <= 0.25: TPR 1; the metrics say the same
    np.testing.assert_allclose(report.roc_tar(fpr, tpr, (0.1, 0.25, 0.5)), [2 / 3, 1.0, 1.0])
    assert out["tar_strict@far1e-1"] == pytest.approx(2 / 3) and out["tar_strict@far2.5e-1"] == 1.0
    assert out == IJ.tar_at_far(HAND_S, HAND_Y, fars=(0.1, 0.25, 0.5))  # metrics unchanged by the flag


def test_roc_tar_is_nan_below_the_curve():
    assert np.isnan(report.roc_tar([0.2, 1.0], [0.5, 1.0], (0.1,))[0])


def test_thin_roc_keeps_points_of_the_curve_and_the_tar_at_every_far():
    rng = np.random.default_rng(0)
    y = rng.random(200_000) < 0.3
    s = np.round(np.where(y, rng.normal(1.5, 1, y.size), rng.normal(0, 1, y.size)), 4)  # ties too
    thr, fps, tps = IJ.roc_points(s, y)
    fpr, tpr = np.r_[0, fps] / fps[-1], np.r_[0, tps] / tps[-1]
    tf, tt = report.thin_roc(fpr, tpr)
    assert 10 < tf.size <= 2 * 400 + 8 < fpr.size
    pts = set(zip(fpr.tolist(), tpr.tolist()))
    assert all(p in pts for p in zip(tf.tolist(), tt.tolist()))
    assert np.all(np.diff(tf) >= 0) and tf[0] == 0 and tf[-1] == 1 and tt[-1] == 1
    np.testing.assert_array_equal(report.roc_tar(tf, tt), report.roc_tar(fpr, tpr))
    m = IJ.tar_at_far(s, y)
    np.testing.assert_array_equal(report.roc_tar(tf, tt), [m[f"tar_strict@far1e{-k}"] for k in range(6, 0, -1)])


# ---- CMC ----------------------------------------------------------------------------------------
def test_cmc_points_by_hand():
    ks, rate = report.cmc_points([1, 2, 1, 5, np.inf], 5)  # 4 mated probes; the inf one has no mate
    np.testing.assert_array_equal(ks, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(rate, [2 / 4, 3 / 4, 3 / 4, 3 / 4, 1.0])
    with pytest.raises(ValueError, match="no probe has a mate"):
        report.cmc_points([np.inf], 3)


def _axes(n, k):
    e = np.zeros(n)
    e[k] = 1.0
    return e


def test_scface_cmc_per_distance_by_hand():
    # Gallery: mugshots of subjects 1, 2, 3 on axes 0, 1, 2. Probes (label, distance, embedding):
    #   d1: subject 1 nearer axis 1 than axis 0 -> rank 2; subject 2 on axis 1 -> rank 1
    #   d2: subject 1 and 3 on their axes -> rank 1, rank 1
    #   d3: subject 3 nearest axis 0, then 1, then its own 2 -> rank 3
    g = [_axes(3, 0), _axes(3, 1), _axes(3, 2)]
    p = [[0.5, 0.8, 0.0], _axes(3, 1), _axes(3, 0), _axes(3, 2), [0.8, 0.5, 0.2]]
    emb = np.array(g + p)
    labels = np.array([1, 2, 3, 1, 2, 1, 3, 3])
    is_probe = np.arange(8) >= 3
    dist = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    out = protocols_lq.scface(emb, np.ones(8), labels, is_probe, dist, ranks=(1,), reject=0, return_curves=True)
    cmc = out.pop("curves")["cmc"]
    assert set(cmc) == {"d1", "d2", "d3", "all"}
    for key, want in {"d1": [0.5, 1, 1], "d2": [1, 1, 1], "d3": [0, 0, 1], "all": [3 / 5, 4 / 5, 1]}.items():
        np.testing.assert_array_equal(cmc[key][0], [1, 2, 3])  # gallery of 3: ranks 1..3
        np.testing.assert_allclose(cmc[key][1], want, err_msg=key)
        assert out[f"rank1_{key}" if key != "all" else "rank1"] == pytest.approx(want[0])
    assert out == protocols_lq.scface(emb, np.ones(8), labels, is_probe, dist, ranks=(1,), reject=0)


def test_tinyface_cmc_by_hand():
    # gallery: matches of 1 and 2 on axes 0, 1; a distractor on axis 2. Probe 1 nearest the distractor
    # (rank 2), probe 2 on its axis (rank 1).
    emb = np.array([_axes(3, 0), _axes(3, 1), _axes(3, 2), [0.3, 0.0, 0.9], _axes(3, 1)])
    labels = np.array([1, 2, -100, 1, 2])
    is_probe = np.arange(5) >= 3
    out = protocols_lq.tinyface(emb, np.ones(5), labels, is_probe, ranks=(1, 5), reject=0, return_curves=True)
    ks, rate = out.pop("curves")["cmc"]["all"]
    np.testing.assert_array_equal(ks, [1, 2, 3])
    np.testing.assert_allclose(rate, [0.5, 1, 1])
    assert out == {"rank1": 0.5, "rank5": 1.0}


# ---- ERC ----------------------------------------------------------------------------------------
def test_erc_curves_are_the_fnmr_columns():
    d = np.array([0.1, 0.2, 0.3, 0.5, 0.4, 0.6, 0.7, 0.8])
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    q = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.3, 0.5])
    res = E.erc(d, same, q, fmrs=[0.25, 0.5], reject=[0.0, 0.5], score_kind="distance")
    c = res.curves()
    assert list(c) == ["erc fmr2.5e-1", "erc fmr5e-1"]
    np.testing.assert_allclose(c["erc fmr2.5e-1"][1], [0.25, 1 / 3])  # worked out in test_erc.py
    np.testing.assert_allclose(c["erc fmr5e-1"][1], [0.0, 0.0])
    np.testing.assert_array_equal(c["erc fmr5e-1"][0], [0.0, 0.5])


def test_evaluate_set_collects_curves_and_keeps_the_metrics():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(400, 8))
    issame = rng.random(200) < 0.5
    emb[1::2][issame] = emb[0::2][issame] + 0.4 * rng.normal(size=(int(issame.sum()), 8))
    res = {"indices": np.arange(400), "embeddings": emb, "qualities": rng.random(400)}
    procs = {
        "verification": partial(protocols.verification, nfolds=5),
        "erc": partial(E.erc_pairs, fmrs=[1e-2]),
        "plain": lambda embeddings, qualities, **_: {"n": float(len(qualities))},  # no return_curves: untouched
    }
    curves = {}
    m = evaluate_set("s", res, {"issame": issame}, procs, curves=curves)
    assert m == evaluate_set("s", res, {"issame": issame}, procs)
    assert "curves" not in m and all(isinstance(v, float) for v in m.values())
    assert list(curves) == ["erc"] and list(curves["erc"]) == ["erc fmr1e-2"]
    r, fnmr = curves["erc"]["erc fmr1e-2"]
    assert fnmr[0] == m["erc_fnmr_fmr1e-2_reject0"] and r.size == 20


# ---- plots --------------------------------------------------------------------------------------
def test_plots_are_valid_pngs(tmp_path):
    thin = report.thin_roc(HAND_FPR, HAND_TPR)
    paths = [
        report.plot_roc({"a": (HAND_FPR, HAND_TPR), "b": thin}, tmp_path / "roc.png", title="hand"),
        report.plot_roc((np.geomspace(1e-6, 1, 50), np.linspace(0.5, 1, 50)), tmp_path / "one" / "roc1.png"),
        report.plot_cmc({"d1": ([1, 2, 3], [0.5, 1, 1]), "d2": ([1, 2, 3], [1, 1, 1])}, tmp_path / "cmc.png"),
        report.plot_erc({"erc fmr1e-2": (np.arange(0, 0.98, 0.05), np.linspace(0.1, 0, 20))}, tmp_path / "erc.png"),
    ]
    for p in paths:
        assert_png(p)
    got = report.plot_curves({"roc": {"x": (HAND_FPR, HAND_TPR)}, "cmc": {}}, tmp_path, "set")
    assert got == {"roc": tmp_path / "roc_set.png"}  # an empty kind draws nothing
    with pytest.raises(ValueError, match=r"curve kind 'det'.*\['cmc', 'erc', 'roc'\]"):
        report.plot_curves({"det": {"x": ([0], [0])}}, tmp_path, "set")


# ---- through validation: the callback writes the PNGs into the run dir -----------------------------
def test_validation_writes_roc_cmc_erc_pngs_for_ijb_tinyface_scface(tmp_path):
    """The real build path (config -> datamodule, method, callbacks, trainer), then the validation that
    task=eval runs (``fiqa.tasks.common.validate``): an untrained tiny model on tiny IJB-C, TinyFace and
    SCface releases. The plot callback is on by default (callbacks=default)."""
    from fiqa.tasks import build as B
    from fiqa.tasks.common import validate
    from tests.conftest import compose_cfg
    from tests.data.test_lq_readers import write_scface, write_tinyface
    from tests.helpers.ijb_fixture import write_ijb

    data = tmp_path / "data"
    write_ijb(data, "ijbc", num_subjects=4)
    write_tinyface(data)
    write_scface(data)
    out = tmp_path / "run"
    cfg = compose_cfg(
        [
            "val=[ijbc,tinyface,scface]",
            f"paths.data_dir={data}",
            "backbone=iresnet_tiny",
            "trainer=cpu",
            "logger=csv",
            "callbacks.progress=null",
            "data.num_workers=0",
            "data.val_batch_size=64",
        ],
        out,
    )
    built = B.build(cfg)
    metrics = validate(built)
    assert {"val/ijbc/tar@far1e-1", "val/ijbc/rank1", "val/tinyface/rank1", "val/scface/rank1_d1"} <= set(metrics)
    for name in ("roc_ijbc", "erc_ijbc", "cmc_ijbc", "cmc_tinyface", "cmc_scface"):
        assert_png(out / f"{name}.png")
    assert not (out / "roc_tinyface.png").exists() and not (out / "erc_scface.png").exists()
    curves = built.method.val_results["scface"]["curves"]["cmc"]
    assert set(curves) >= {"d1", "all"}
    rank1 = {k: float(v[1][0]) for k, v in curves.items()}
    assert rank1["all"] == pytest.approx(metrics["val/scface/rank1"])
    assert math.isclose(rank1["d1"], metrics["val/scface/rank1_d1"])


@pytest.mark.slow
def test_task_eval_writes_the_plots_into_its_run_dir(trained_run, tmp_path):
    """``python main.py task=eval ckpt_path=... val=[ijbc,tinyface,scface]`` (a subprocess)."""
    from tests.data.test_lq_readers import write_scface, write_tinyface
    from tests.helpers.ijb_fixture import write_ijb
    from tests.helpers.run_main import read_metrics, run_main

    data = tmp_path / "data"
    write_ijb(data, "ijbc", num_subjects=3)
    write_tinyface(data)
    write_scface(data)
    out = tmp_path / "eval"
    run_main("task=eval", f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "val=[ijbc,tinyface,scface]",
             f"paths.data_dir={data}", "callbacks.progress=null", f"hydra.run.dir={out}")  # fmt: skip
    for name in ("roc_ijbc", "erc_ijbc", "cmc_ijbc", "cmc_tinyface", "cmc_scface", "quality_hist_scface"):
        assert_png(out / f"{name}.png")
    m = read_metrics(out)
    assert {"val/ijbc/tar@far1e-1", "val/tinyface/rank1", "val/scface/rank1_d1"} <= set(m)
