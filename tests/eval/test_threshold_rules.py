"""docs/evaluation.md "two threshold rules": ``fnmr@fmr<x>`` (threshold fixed on all pairs, FMR <= x) and the
ERC's ``erc_fnmr_fmr<x>_reject0`` (CR-FIQA's nearest-FMR threshold) differ exactly by the genuine pairs that
lie between the k-th and the (k+1)-th impostor; numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fiqa.eval import quality_metrics as qm
from fiqa.eval.erc import THRESHOLD_RULES, erc
from fiqa.eval.report import threshold_rules


def _pairs():
    # 100 impostor cosines 0.00, 0.01, ..., 0.99; FMR 1e-2 allows k = 1 impostor (the one at 0.99).
    # Genuine cosines: 0.995 (above every impostor), 0.9875 and 0.985 (between the 1st and the 2nd impostor,
    # 0.99 > s > 0.98), 0.5, 0.2.
    # Fixed rule: accept iff s >= 0.99 -> 0.995 only -> FNMR 4/5.
    # Nearest rule, on distances d = arccos(s)/pi: every kept distance t in [d(0.99), d(0.98)) has exactly 1
    # impostor at or below it (FMR 1e-2 exactly); the largest is d(0.985); accept iff d < t -> 0.995 and 0.9875
    # -> FNMR 3/5.
    imp = np.arange(100) / 100.0
    gen = np.array([0.995, 0.9875, 0.985, 0.5, 0.2])
    s = np.concatenate([gen, imp])
    same = np.r_[np.ones(gen.size, bool), np.zeros(imp.size, bool)]
    return s, same


def test_fixed_and_nearest_rules_by_hand():
    s, same = _pairs()
    fixed = qm.fnmr_at_fmr(s, same, 1e-2)
    assert fixed["threshold"] == pytest.approx(0.99)
    assert fixed["fnmr"] == pytest.approx(4 / 5)  # only 0.995 >= 0.99
    res = erc(s, same, np.ones_like(s), "recompute_nearest", (1e-2,), reject=[0.0])
    # t = d(0.985): 1 impostor (0.99) at or below it; genuines with d < t: 0.995 and 0.9875 -> FNMR 3/5
    assert res.threshold[0, 0] == pytest.approx(np.arccos(0.985) / np.pi)
    assert res.fnmr[0, 0] == pytest.approx(3 / 5)
    assert res.metrics()["erc_fnmr_fmr1e-2_reject0"] == pytest.approx(3 / 5)


def test_the_erc_plots_name_their_rule():
    assert threshold_rules(["erc fmr1e-2", "erc fmr1e-3", "edc fmr1e-2", "other"]) == [
        THRESHOLD_RULES["recompute_nearest"],
        THRESHOLD_RULES["fixed"],
    ]
