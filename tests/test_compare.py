"""task=compare: ERC of several quality sources on one FR model, through the real main.py."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fiqa.eval.compare import compare_sources, rows_of, write_tables
from fiqa.eval.erc import erc, pair_quality
from tests.helpers.run_main import run_main


def test_compare_sources_is_one_erc_per_source_and_tables(tmp_path):
    rng = np.random.default_rng(0)
    issame = np.arange(400) % 2 == 0
    scores = np.where(issame, 0.6, 0.1) + 0.2 * rng.standard_normal(400)
    good = np.repeat(np.where(issame, scores, -scores), 2)  # a quality that knows which pairs err
    res = compare_sources(scores, issame, {"good": good, "rand": rng.random(800)}, fmrs=[1e-2])
    ref = erc(scores, issame, pair_quality(good, reduce="min"), "recompute_nearest", [1e-2])
    np.testing.assert_array_equal(res["good"].fnmr, ref.fnmr)
    assert res["good"].pauc[0.2][0] < res["rand"].pauc[0.2][0]
    csv_path, md_path = write_tables(rows_of("toy", res), tmp_path)
    rows = list(csv.DictReader(open(csv_path)))
    assert {r["source"] for r in rows} == {"good", "rand"}
    assert "| toy | good | fmr1e-2 |" in md_path.read_text()
    with pytest.raises(ValueError, match="quality source 'bad'"):
        compare_sources(scores, issame, {"bad": np.ones(3)})


def test_task_compare_on_synthface(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    run = tmp_path / "c"
    run_main("task=compare", f"ckpt_path={ckpt}", "val.synth.dataset.num_pairs=200",
             "val.synth.dataset.num_identities=50", "compare.num_workers=0", "compare.serfiq.T=5",
             f"compare.sources=[own,norm,serfiq,random,oracle,{{name:again,ckpt_path:{ckpt}}}]",
             f"hydra.run.dir={run}")  # fmt: skip
    assert (run / "erc_synth_fmr1e-2.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(run / "compare.csv")))
    assert {r["source"] for r in rows} == {"own", "norm", "serfiq", "random", "oracle", "again"}
    by = {r["source"]: float(r["auc"]) for r in rows}
    assert by["again"] == pytest.approx(by["own"])  # the same model's quality through another path
    m = json.loads((run / "metrics.json").read_text())
    assert "compare/synth/oracle/erc_auc_fmr1e-2" in m and "compare/synth/random/erc_pauc0.2_fmr1e-2" in m
    bad = run_main("task=compare", f"ckpt_path={ckpt}", "compare.sources=[magic]", f"hydra.run.dir={tmp_path / 'b'}",
                   check=False)  # fmt: skip
    assert bad.returncode != 0 and "compare.sources: unknown 'magic'" in bad.stderr


def test_training_free_observers_are_compare_sources(trained_run, tmp_path):
    """grafiqs and froq (like serfiq) observe the FR model of ckpt_path, with compare.<name> as their settings;
    their column equals the quality of the same wrapper run in process."""
    from fiqa.methods.loading import load_model
    from fiqa.methods.wrappers import observer
    from fiqa.quality.embed import embed_set

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    run = tmp_path / "c"
    run_main(
        "task=compare",
        f"ckpt_path={ckpt}",
        "val.synth.dataset.num_pairs=100",
        "val.synth.dataset.num_identities=30",
        "compare.num_workers=0",
        "compare.sources=[grafiqs,froq,iso,random]",
        "compare.froq.calibration_size=32",
        "+compare.froq.label_params={T:5}",
        f"hydra.run.dir={run}",
    )
    rows = {r["source"]: r for r in csv.DictReader(open(run / "compare.csv"))}
    assert set(rows) == {"grafiqs", "froq", "iso", "random"}
    from fiqa.data.synthface import SynthFacePairs
    from fiqa.eval.erc import erc, pair_quality
    from fiqa.eval.quality_metrics import pair_scores

    ds = SynthFacePairs(num_pairs=100, num_identities=30, seed=0, level_beta=[1.0, 3.0])
    model = load_model(str(ckpt)).eval()
    others = {
        "g": observer("grafiqs", model, {"wrt": "block2", "negate": True, "chunk": 0}),
        "i": observer("iso", model),
    }
    out = embed_set(ds, model, True, others)
    res = erc(pair_scores(out["embeddings"].astype(np.float64)), ds.targets()["issame"],
              pair_quality(out["g"], reduce="min"), "recompute_nearest", [1e-2])  # fmt: skip
    assert float(rows["grafiqs"]["auc"]) == pytest.approx(float(res.auc[0]), abs=1e-9)
    # iso: the ISO/IEC 29794-5 components of the same crops, measured directly (not through the model's input)
    from fiqa.quality import iso

    direct = iso.combine(iso.component_scores(np.stack([iso.measure_aligned(ds[i][0]) for i in range(len(ds))])))
    np.testing.assert_array_equal(out["i"], direct.astype(np.float32))
