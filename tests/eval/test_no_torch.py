"""Importing fiqa.eval (every module of it) never imports torch: the evaluation code runs on
embeddings saved anywhere, without the training stack."""

import subprocess
import sys
from pathlib import Path

import fiqa.eval


def test_importing_every_fiqa_eval_module_leaves_torch_out():
    modules = sorted(p.stem for p in Path(fiqa.eval.__file__).parent.glob("*.py") if p.stem != "__init__")
    assert {"verification", "erc", "edc", "ijb", "identification", "compare", "protocols"} <= set(modules)
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module('fiqa.eval.' + m)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
