"""FROQ: the layer selection against an independent transcription, the calibration file, SynthFace, main.py."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from fiqa.backbones.iresnet import iresnet_tiny
from fiqa.methods.base import FaceModule
from fiqa.methods.froq import FROQ
from fiqa.methods.loading import load_model
from fiqa.quality import froq as core
from fiqa.quality import froq_file
from tests.helpers.run_main import TINY, read_metrics, run_main


class Pick(nn.Module):
    """Output = column ``j`` of the input, so its per-image L2 norm is ``|x[:, j]|``."""

    def __init__(self, j: int):
        super().__init__()
        self.j = j

    def forward(self, x):
        return x[:, self.j : self.j + 1]


class TupleOut(nn.Module):
    def forward(self, x):
        return x, x


class Toy(nn.Module):
    """Layers ``c0..c{L-1}`` whose norms are the input columns, a tuple-valued module and one never called."""

    def __init__(self, width: int):
        super().__init__()
        self.cols = nn.ModuleList([Pick(j) for j in range(width)])
        self.pair = TupleOut()
        self.unused = nn.Identity()

    def forward(self, x):
        self.pair(x)
        return torch.cat([c(x) for c in self.cols], 1)


def greedy_reference(norms: np.ndarray, labels: np.ndarray, top_k: int = 10):
    """The original's procedure transcribed directly: signed rho, top_k, greedy over raw-norm means, best prefix."""
    rho = [spearmanr(norms[:, j], labels)[0] for j in range(norms.shape[1])]
    rho = [r if np.isfinite(r) else -np.inf for r in rho]
    top = sorted(range(len(rho)), key=lambda j: -rho[j])[:top_k]
    chosen, steps = [top[0]], [spearmanr(norms[:, top[0]], labels)[0]]
    left = top[1:]
    while left:
        scores = [spearmanr(norms[:, chosen + [j]].mean(1), labels)[0] for j in left]
        best = int(np.argmax(scores))
        chosen.append(left.pop(best))
        steps.append(scores[best])
    keep = int(np.argmax(steps)) + 1
    return chosen[:keep], chosen, steps


def test_selection_is_the_known_greedy_choice_on_a_hand_made_model():
    # y = u + v exactly. Columns (norms): 0: u, 1: v, 2: y + 3w (noisy), 3: 10 - y (falls with quality), 4: const
    g = np.random.default_rng(0)
    n = 200
    u, v, w = (g.uniform(1, 2, n).astype(np.float32) for _ in range(3))
    u64, v64 = u.astype(np.float64), v.astype(np.float64)
    y = u64 + v64
    cols = [u, v, (u64 + v64 + 3 * w).astype(np.float32), (10 - y).astype(np.float32), np.full(n, 5, np.float32)]
    x = np.stack(cols, 1)
    model = Toy(x.shape[1])
    names = core.candidate_modules(model)  # every module but the root, the original's rule
    assert names == ["cols", "cols.0", "cols.1", "cols.2", "cols.3", "cols.4", "pair", "unused"]
    kept, norms = core.layer_norms(model, torch.from_numpy(x), batch_size=64)
    # containers/tuples/uncalled modules give no (B, ...) tensor: only the five columns remain
    assert kept == [f"cols.{j}" for j in range(5)]
    np.testing.assert_allclose(norms, np.abs(x), rtol=1e-6)

    cal = core.calibrate(model, torch.from_numpy(x), y, batch_size=64)
    # u and v are the two best single layers; their mean is y/2, so the set {u, v} reaches rho = 1 and stays
    assert sorted(cal.layers) == ["cols.0", "cols.1"] and cal.step_spearman[1] == pytest.approx(1.0)
    # signed rho (the original): the falling layer ranks last, so it is the last greedy candidate, never chosen
    assert cal.greedy_order[-1] == "cols.3"
    assert "cols.3" not in core.calibrate(model, torch.from_numpy(x), y, top_k=3, batch_size=64).greedy_order
    assert "cols.4" not in cal.layer_spearman  # constant: no rho
    assert cal.sign == [1.0, 1.0] and cal.mean == [0.0, 0.0] and cal.std == [1.0, 1.0]
    with torch.no_grad():
        q = core.score(model, torch.from_numpy(x), cal).numpy()
    np.testing.assert_allclose(q, (u64 + v64) / 2, rtol=1e-6)  # the mean of the two raw norms

    # zscore: ranked by |rho|: 10 - y alone has |rho| = 1, sign -1, z-scored with the calibration mean/std
    z = core.calibrate(model, torch.from_numpy(x), y, aggregate_kind="zscore", batch_size=64)
    assert z.layers == ["cols.3"] and z.sign == [-1.0] and z.spearman == pytest.approx(1.0)
    d = x[:, 3].astype(np.float64)
    assert z.mean[0] == pytest.approx(d.mean(), rel=1e-6) and z.std[0] == pytest.approx(d.std(), rel=1e-5)
    with torch.no_grad():
        qz = core.score(model, torch.from_numpy(x), z).numpy()
    np.testing.assert_allclose(qz, -(d - d.mean()) / d.std(), rtol=1e-4, atol=1e-5)

    # a fixed n_layers takes the greedy prefix of that length
    assert core.calibrate(model, torch.from_numpy(x), y, n_layers=3, batch_size=64).layers == cal.greedy_order[:3]


def test_selection_equals_a_direct_transcription_with_scipy():
    g = np.random.default_rng(3)
    n, width = 150, 24
    latent = g.normal(size=(n, 4))
    y = latent @ np.array([1.0, 0.6, 0.3, 0.2]) + 0.3 * g.normal(size=n)
    mix = g.normal(size=(4, width))
    x = (np.abs(latent @ mix + g.normal(scale=1.5, size=(n, width))) + 0.1).astype(np.float32)
    model = Toy(width)
    cal = core.calibrate(model, torch.from_numpy(x), y, batch_size=50)
    ref_final, ref_order, ref_steps = greedy_reference(np.abs(x).astype(np.float64), y)
    assert cal.greedy_order == [f"cols.{j}" for j in ref_order]
    assert cal.layers == [f"cols.{j}" for j in ref_final]
    np.testing.assert_allclose(cal.step_spearman, ref_steps, rtol=1e-9, atol=1e-12)
    for j in range(width):
        assert cal.layer_spearman[f"cols.{j}"] == pytest.approx(spearmanr(x[:, j], y)[0], abs=1e-12)
    with torch.no_grad():
        q = core.score(model, torch.from_numpy(x), cal).numpy()
    np.testing.assert_allclose(q, np.abs(x[:, ref_final]).astype(np.float64).mean(1), rtol=1e-5)
    # ties in the labels/norms: average ranks, as scipy
    xt, yt = np.round(x[:, :3], 0), np.round(y, 0)
    np.testing.assert_allclose(core.spearman_columns(xt, yt), [spearmanr(xt[:, j], yt)[0] for j in range(3)])


def _tiny_model() -> FaceModule:
    torch.manual_seed(0)
    m = FaceModule(iresnet_tiny(embedding_dim=32), channels_last=False)
    m.input_convention = {"color": "rgb", "mean": 127.5, "std": 127.5}
    return m.eval()


def test_calibration_file_round_trip_and_stale_error(tmp_path):
    model = _tiny_model()
    model_file = tmp_path / "model.ckpt"
    torch.save(model.state_dict(), model_file)
    kw = {"calibration_size": 24, "labels": "norm", "batch_size": 24, "model_file": str(model_file)}
    first = FROQ(model, **kw).eval()
    assert first.calibration is None  # lazy: nothing before the first forward
    x = torch.rand(5, 3, 112, 112) * 2 - 1
    with torch.inference_mode():  # Lightning's validate context: calibration runs inside it
        q1 = first(x).quality
    stored = tmp_path / "model.ckpt.froq.json"  # beside the model
    doc = json.loads(stored.read_text())
    assert doc["format"] == core.FORMAT and doc["model"]["size"] == os.path.getsize(model_file)
    assert doc["model"]["path"] == str(model_file.resolve()) and doc["settings"]["labels"] == "norm"
    assert doc["calibration"]["layers"] == first.calibration.layers

    second = FROQ(model, **kw).eval()
    assert second.calibration == first.calibration  # reused at construction, no calibration pass
    with torch.no_grad():
        torch.testing.assert_close(second(x).quality, q1)
        torch.testing.assert_close(second(x).embedding, model(x).embedding)  # the model's own embedding

    with pytest.raises(froq_file.StaleCalibrationError, match="n_layers") as e:
        FROQ(model, **{**kw, "n_layers": 2})
    assert str(stored) in str(e.value)
    torch.save({**model.state_dict(), "extra": torch.zeros(3)}, model_file)  # the model file changed
    with pytest.raises(froq_file.StaleCalibrationError, match="model size") as e:
        FROQ(model, **kw)
    assert str(stored) in str(e.value) and "recalibrate" in str(e.value)
    renewed = FROQ(model, **kw, recalibrate=True).eval()
    with torch.no_grad():
        renewed(x)
    FROQ(model, **kw)  # the rewritten file is current again
    with torch.no_grad():
        model.backbone.fc.weight.add_(1.0)  # other weights, same file identity
    with pytest.raises(froq_file.StaleCalibrationError, match="fingerprint"):
        FROQ(model, **kw)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        FROQ(model, **{**kw, "calibration_file": str(tmp_path / "bad.json")})
    with pytest.raises(ValueError, match="quality.labels"):
        FROQ(model, labels="magic")


def test_froq_ranks_synthface_degradation(trained_run, tmp_path):
    from fiqa.data.synthface import SynthFacePairs
    from fiqa.quality.embed import to_input

    model = load_model(str(trained_run / "checkpoints" / "last.ckpt")).eval()
    # This 1-epoch tiny model's own signals are nearly blind to degradation (SER-FIQ on it: rho ~ +0.09), so
    # the labels here are an oracle: minus the calibration images' ground-truth degradation, given as a
    # CSV (path_or_key,quality) keyed by the SynthFace calibration index. What is tested is FROQ itself:
    # layers chosen on 512 calibration images generalise to held-out identities.
    froq = FROQ(model, calibration_size=512, labels=str(tmp_path / "labels.csv"), aggregate="zscore", top_k=20)
    reader = froq.calibration_reader()
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_or_key", "quality"])
        for k, i in zip(reader.keys, reader.indices):
            w.writerow([k, -reader.reader[i][2]["degradation"]])
    pairs = SynthFacePairs(num_pairs=500, num_identities=100)
    images = to_input(torch.from_numpy(np.stack([pairs[i][0] for i in range(len(pairs))])), model.input_convention)
    with torch.inference_mode():
        q = torch.cat([froq.eval()(images[i : i + 250]).quality for i in range(0, len(images), 250)]).numpy()
    rho = spearmanr(q, pairs.targets()["degradation"])[0]
    # measured -0.152 (chance: sd ~ 1/sqrt(999) = 0.032, so ~4.8 sd); the bound leaves 0.077 of margin
    assert rho < -0.075, rho
    assert froq.calibration.spearman > 0.1  # measured 0.199 on the calibration set


@pytest.mark.slow  # CI time: runs in make test-full
def test_main_eval_with_quality_froq(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    stored = tmp_path / "froq.json"
    args = ["task=eval", f"ckpt_path={ckpt}", "quality=froq", "val=[synth]", *TINY,
            "val.synth.dataset.num_pairs=40", "val.synth.dataset.num_identities=20", "data.val_batch_size=40",
            "quality.calibration_size=48", "+quality.label_params.T=5",
            f"quality.calibration_file={stored}"]  # fmt: skip
    run_main(*args, f"hydra.run.dir={tmp_path / 'a'}")
    m = read_metrics(tmp_path / "a")
    assert -1.0 <= m["val/synth/quality_spearman"] <= 1.0
    doc = json.loads(stored.read_text())
    assert doc["model"]["path"] == str(ckpt.resolve()) and doc["settings"]["labels"] == "serfiq"
    # a second run reuses the stored calibration: the same qualities, so the same metrics
    proc = run_main(*args, f"hydra.run.dir={tmp_path / 'b'}")
    assert "calibration from" in proc.stdout + proc.stderr
    assert read_metrics(tmp_path / "b")["val/synth/quality_spearman"] == m["val/synth/quality_spearman"]
