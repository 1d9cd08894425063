"""W&B dashboards (fiqa.callbacks.wandb_setup), offline: the summaries declared from the configured val
sets and their protocols, the run name / group / tags / job type, and what a run writes into its
offline ``.wandb`` file (read back here: the records are protobufs in wandb's LevelDB-style log)."""

from __future__ import annotations

import fnmatch
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict, read_write

from fiqa.callbacks import wandb_setup as W
from fiqa.eval import protocols_lq
from fiqa.eval.sets import evaluate_set
from fiqa.utils.instantiate import instantiate_values
from tests.conftest import compose_cfg
from tests.helpers.run_main import TINY, TINY_VAL, run_main

wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")

SETS = ["synth", "lfw", "xqlfw", "ijbc", "tinyface", "scface"]
UNSUMMARISED = {"acc_std", "best_threshold", "val_std", "far"}  # spreads and operating points: no goal


# ---- the offline run file -------------------------------------------------------------------------
def wandb_records(run_dir: Path) -> list:
    """Every record of ``<run_dir>/run-<id>.wandb``: a 7-byte header (``:W&B``, magic, version), then
    32 KiB blocks of chunks ``crc32 (4) | length (2) | type (1: full, 2: first, 3: middle, 4: last)``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, buf, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    return records


def finished_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The records once the run's ``exit`` record is written (wandb's service writes the file on its own
    after ``run.finish()`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(run_dir)
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_dir}: no exit record after {timeout:.0f} s ({len(records)} records)")
        time.sleep(0.2)


def read_run(run_dir: Path) -> dict:
    """``{"run": RunRecord, "metrics": {name or glob: summary goals}, "summary": {key: value},
    "history": [{key: value}], "config": {key: value}}`` of a finished offline run."""
    out = {"run": None, "metrics": {}, "summary": {}, "history": [], "config": {}}
    for rec in finished_records(run_dir):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "metric" and rec.metric.options.defined:
            goals = {g for g in ("min", "max", "last", "mean") if getattr(rec.metric.summary, g)}
            out["metrics"][rec.metric.name or rec.metric.glob_name] = goals
        elif kind == "summary":
            for u in rec.summary.update:
                out["summary"]["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
    return out


# ---- summaries from the config ----------------------------------------------------------------------
def protocol_view(cfg) -> dict:
    """What ``build_val`` gives the method, without reading any data set: ``{set: {"protocols": ...}}``."""
    return {name: {"protocols": instantiate_values(v.get("protocols"))} for name, v in cfg.val.items()}


def test_summary_metrics_follow_the_configured_val_sets(tmp_path):
    cfg = compose_cfg([f"val=[{','.join(SETS)}]", "val.lfw.protocols.erc.mode=fixed"], tmp_path)
    s = W.summary_metrics(protocol_view(cfg))
    assert s["val/acc_mean"] == "max"
    assert s["val/synth/acc"] == "max" and s["val/synth/val@*"] == "max"
    assert s["val/synth/erc_*"] == "min" and s["val/synth/fnmr@*"] == "min"
    assert s["val/synth/quality_spearman"] == "min"
    assert s["val/lfw/edc_*"] == "min" and "val/lfw/erc_*" not in s  # mode fixed: the EDC prefix
    assert s["val/ijbc/tar@*"] == "max" and s["val/ijbc/erc_*"] == "min" and s["val/ijbc/tpir*"] == "max"
    assert s["val/tinyface/rank*"] == "max" and s["val/scface/rank*"] == "max"
    assert {k.split("/")[1] for k in s if k.count("/") == 2} == set(SETS)  # every configured set, no other
    only = W.summary_metrics(protocol_view(compose_cfg(["val=[scface]"], tmp_path)))
    assert only == {"val/scface/rank*": "max", "val/acc_mean": "max"}
    assert W.summary_metrics({}) == {}
    # a protocol without declared goals gets none (W&B keeps the last value)
    assert W.summary_metrics({"x": {"protocols": {"own": lambda **_: {}}}}) == {"val/acc_mean": "max"}


def _covered(metric: str, globs: dict) -> bool:
    return any(fnmatch.fnmatchcase(metric, g) for g in globs)


def test_the_summaries_cover_every_metric_the_protocols_log(tmp_path):
    """Run the configured protocols on small synthetic inputs: every metric they log has a goal (except
    spreads and operating points), so the goals cannot drift from the protocols' metric names."""
    cfg = compose_cfg([f"val=[{','.join(SETS)}]", "val.synth.protocols.erc.mode=recompute_index"], tmp_path)
    view = protocol_view(cfg)
    goals = W.summary_metrics(view)
    rng = np.random.default_rng(0)
    logged = {}
    # pair sets (synth, lfw, xqlfw): 2400 pairs, enough impostors for the reject protocol's FMR 1e-3
    emb = rng.normal(size=(4800, 8))
    issame = rng.random(2400) < 0.5
    emb[1::2][issame] = emb[0::2][issame] + 0.3 * rng.normal(size=(int(issame.sum()), 8))
    res = {"indices": np.arange(4800), "embeddings": emb, "qualities": rng.random(4800)}
    for name in ("synth", "lfw", "xqlfw"):
        targets = {"issame": issame, "degradation": rng.random(4800)} if name == "synth" else {"issame": issame}
        out = evaluate_set(name, res, targets, view[name]["protocols"])
        logged.update({f"val/{name}/{k}": v for k, v in out.items()})
    # IJB-C: one image per template; gallery templates 0-2, probes 3-5 of subjects 0-2; all pairs
    f = np.repeat(np.eye(3), 2, axis=0) + 0.1 * rng.normal(size=(6, 3))
    tid = np.arange(6)
    pairs = np.array([(a, b) for a in range(6) for b in range(a + 1, 6)])
    ijb = {"template_ids": tid, "media_ids": tid, "faceness": np.ones(6), "pairs": pairs,
           "pair_labels": pairs[:, 0] // 2 == pairs[:, 1] // 2,
           "gallery_templates": np.array([0, 2, 4]), "gallery_subjects": np.array([0, 1, 2]),
           "probe_templates": np.array([1, 3, 5]), "probe_subjects": np.array([0, 1, 2])}  # fmt: skip
    out = view["ijbc"]["protocols"]["ijb"](embeddings=f, qualities=rng.random(6), **ijb)
    logged.update({f"val/ijbc/{k}": v for k, v in out.items()})
    # TinyFace and SCface: the hand-made searches of tests/eval/test_report_curves.py
    eye = np.eye(3)
    out = view["tinyface"]["protocols"]["identification"](
        embeddings=np.array([eye[0], eye[1], eye[2], [0.3, 0, 0.9], eye[1]]),
        qualities=np.ones(5), labels=np.array([1, 2, -100, 1, 2]), is_probe=np.arange(5) >= 3,
    )  # fmt: skip
    logged.update({f"val/tinyface/{k}": v for k, v in out.items()})
    out = protocols_lq.scface(np.vstack([eye, eye]), np.ones(6), np.array([1, 2, 3, 1, 2, 3]), np.arange(6) >= 3,
                              np.array([0, 0, 0, 1, 2, 3]))  # fmt: skip
    logged.update({f"val/scface/{k}": v for k, v in out.items()})

    assert {m.split("/")[1] for m in logged} == set(SETS)
    assert {"val/ijbc/tar@far1e-1", "val/ijbc/rank1", "val/synth/erc_index_auc_fmr1e-2"} <= set(logged)
    assert {"val/lfw/fnmr@fmr1e-3_reject0.2", "val/synth/quality_spearman", "val/scface/rank1_d2"} <= set(logged)
    missing = [m for m in logged if not _covered(m, goals) and m.rsplit("/", 1)[1] not in UNSUMMARISED]
    assert not missing, missing
    # and the goal is the right direction for the headline numbers
    assert goals["val/synth/acc"] == "max"
    assert [g for k, g in goals.items() if fnmatch.fnmatchcase("val/ijbc/erc_auc_fmr1e-3", k)] == ["min"]
    assert [g for k, g in goals.items() if fnmatch.fnmatchcase("val/scface/rank1_d1", k)] == ["max"]


# ---- an offline run -------------------------------------------------------------------------------
def test_define_summaries_on_an_offline_run(tmp_path):
    view = protocol_view(compose_cfg(["val=[lfw]"], tmp_path))
    run = wandb.init(project="fiqa-test", dir=str(tmp_path), mode="offline", settings=wandb.Settings(silent=True))
    try:
        defined = W.define_summaries(run, view)
        for step, (acc, auc) in enumerate([(0.6, 0.30), (0.9, 0.10), (0.7, 0.20)]):
            run.log({"trainer/global_step": step, "val/lfw/acc": acc, "val/lfw/erc_auc_fmr1e-3": auc,
                     "val/acc_mean": acc, "val/lfw/acc_std": 0.01 * step})  # fmt: skip
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    got = read_run(run_dir)
    assert {k: g for k, g in got["metrics"].items() if k != "trainer/global_step"} == {
        k: {g} for k, g in defined.items()
    }
    assert got["metrics"]["val/lfw/acc"] == {"max"} and got["metrics"]["val/lfw/erc_*"] == {"min"}
    assert got["summary"]["val/lfw/acc"] == {"max": 0.9}
    assert got["summary"]["val/lfw/erc_auc_fmr1e-3"] == {"min": 0.1}  # through the glob
    assert got["summary"]["val/acc_mean"] == {"max": 0.9}
    assert got["summary"]["val/lfw/acc_std"] == 0.02  # no goal: the last value


def test_goal_of_prefers_the_exact_name_then_the_longest_glob():
    goals = {"val/a/acc": "max", "val/a/*": "max", "val/a/erc_*": "min", "val/acc_mean": "max"}
    assert W.goal_of("val/a/acc", goals) == "max"
    assert W.goal_of("val/a/erc_auc_fmr1e-3", goals) == "min"  # both globs match: the longer wins
    assert W.goal_of("val/a/other", goals) == "max" and W.goal_of("train/loss", goals) is None


@pytest.mark.parametrize("repeat", range(3))
def test_our_logger_keeps_glob_summaries_despite_lightnings_star(tmp_path, repeat):
    """Lightning's WandbLogger declares the glob '*'; W&B then applies either that or our 'erc_*' glob
    at random. Ours declares exact names at first log, so the min/max summaries always hold."""
    logger = W.WandbLogger(project="fiqa-test", save_dir=str(tmp_path), offline=True, mode="offline",
                           summaries={"val/lfw/acc": "max", "val/lfw/erc_*": "min"})  # fmt: skip
    try:
        for step, (acc, auc) in enumerate([(0.6, 0.30), (0.9, 0.10), (0.7, 0.20)]):
            logger.log_metrics({"val/lfw/acc": acc, "val/lfw/erc_auc_fmr1e-3": auc, "val/lfw/n": step}, step=step)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        logger.experiment.finish()
    got = read_run(run_dir)
    assert got["metrics"]["*"] == set() and got["metrics"]["val/lfw/erc_auc_fmr1e-3"] == {"min"}
    assert got["summary"]["val/lfw/acc"] == {"max": 0.9}
    assert got["summary"]["val/lfw/erc_auc_fmr1e-3"] == {"min": 0.1}
    assert got["summary"]["val/lfw/n"] == 2  # no goal: the last value


def test_logger_kwargs_single_run_and_multirun(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg(["logger=wandb", "method=arcface", "backbone=iresnet18", "tags=[paper]"], tmp_path)
    kw = W.logger_kwargs(cfg, cfg.logger.wandb)
    assert kw == {
        "offline": True,
        "tags": ["paper", "method:arcface", "backbone:iresnet18", "data:synthface", "task:train"],
    }
    assert cfg.logger.wandb.name == "arcface-iresnet18" and cfg.logger.wandb.job_type == "train"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "multiruns" / "2026-01-02_03-04-05")
        cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)
    try:
        kw = W.logger_kwargs(cfg, cfg.logger.wandb)
        ident = W.run_identity(cfg)
    finally:
        compose_cfg([], tmp_path)  # back to a single run's Hydra config for the tests that follow
    assert kw["name"] == "arcface-iresnet18-3" and kw["group"] == "2026-01-02_03-04-05" and kw["offline"] is False
    assert ident == {"method": "arcface", "backbone": "iresnet18", "data": "synthface", "experiment": None,
                     "task": "train", "sweep": "2026-01-02_03-04-05", "job": 3}  # fmt: skip


def test_the_runs_of_one_experiment_share_its_group(tmp_path, monkeypatch):
    """experiment=<recipe>: group = the recipe (single runs and sweeps alike), tag experiment:<recipe>."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg(["logger=wandb", "experiment=crfiqa_ms1mv2_r100"], tmp_path)
    kw = W.logger_kwargs(cfg, cfg.logger.wandb)
    assert kw["group"] == "crfiqa_ms1mv2_r100" and "experiment:crfiqa_ms1mv2_r100" in kw["tags"]
    assert W.run_identity(cfg)["experiment"] == "crfiqa_ms1mv2_r100"
    cfg = compose_cfg(["logger=wandb", "task=benchmark"], tmp_path)
    kw = W.logger_kwargs(cfg, cfg.logger.wandb)
    assert "group" not in kw and cfg.logger.wandb.job_type == "benchmark" and "task:benchmark" in kw["tags"]


# ---- main.py --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_main_logs_a_grouped_dashboard_offline(tmp_path):
    """A tiny training run with logger=wandb (offline: run_main drops WANDB_API_KEY): run name, job type,
    tags, identity in the config, the summaries of val=[synth] with their max/min, the plot images."""
    run_main("logger=wandb", "debug=limit", *TINY, *TINY_VAL, "trainer.max_epochs=2", "trainer.limit_val_batches=1.0",
             f"hydra.run.dir={tmp_path}")  # fmt: skip
    (run_dir,) = Path(tmp_path).glob("wandb/offline-run-*")
    got = read_run(run_dir)
    r = got["run"]
    assert r.display_name == "crfiqa-iresnet_tiny" and r.job_type == "train" and not r.run_group
    assert {"method:crfiqa", "backbone:iresnet_tiny", "data:synthface", "task:train"} <= set(r.tags)
    ident = got["config"]["run"]
    assert ident == {"method": "crfiqa", "backbone": "iresnet_tiny", "data": "synthface", "experiment": None,
                     "task": "train", "sweep": None, "job": None}  # fmt: skip
    assert got["config"]["config"]["task"] == "train" and "head" in got["config"]["config"]  # the resolved config
    # declared under their exact names (Lightning's '*' glob would compete with ours at random)
    assert got["metrics"]["val/synth/acc"] == {"max"} and got["metrics"]["val/synth/erc_auc_fmr1e-2"] == {"min"}
    assert got["metrics"]["val/synth/quality_spearman"] == {"min"} and got["metrics"]["val/acc_mean"] == {"max"}
    assert not any("*" in k for k in got["metrics"] if k != "*")
    accs = [h["val/synth/acc"] for h in got["history"] if "val/synth/acc" in h]
    aucs = [h["val/synth/erc_auc_fmr1e-2"] for h in got["history"] if "val/synth/erc_auc_fmr1e-2" in h]
    # one per epoch, and a third when the best checkpoint is an earlier epoch's (task=train's final evaluation)
    assert len(accs) in (2, 3) and got["summary"]["val/synth/acc"]["max"] == max(accs)
    assert got["summary"]["val/synth/erc_auc_fmr1e-2"]["min"] == min(aucs)
    images = {k[: -len("/_type")] for h in got["history"] for k, v in h.items() if v == "images/separated"}
    assert {"val/synth/erc", "val/synth/quality_hist", "val/synth/quality_vs_degradation"} <= images
    assert (tmp_path / "erc_synth.png").is_file()


@pytest.mark.slow
def test_multirun_jobs_share_the_sweep_group(tmp_path):
    run_main("-m", "logger=wandb", "method=arcface,crfiqa", "debug=limit", *TINY, "val=[]",
             f"hydra.sweep.dir={tmp_path / '2026-05-06_07-08-09'}")  # fmt: skip
    runs = sorted(Path(tmp_path).glob("2026-05-06_07-08-09/*/wandb/offline-run-*"))
    assert len(runs) == 2
    got = sorted((read_run(r)["run"] for r in runs), key=lambda r: r.display_name)
    assert [r.display_name for r in got] == ["arcface-iresnet_tiny-0", "crfiqa-iresnet_tiny-1"]
    assert {r.run_group for r in got} == {"2026-05-06_07-08-09"}
