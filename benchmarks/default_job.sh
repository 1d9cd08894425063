#!/usr/bin/env bash
# README's "What the default job prints" table, measured here: the embedded default job (python main.py) and
# the same with method=arcface, their wall times and metrics, and the machine they ran on.
#   bash benchmarks/default_job.sh [out dir]        (make figures; about 5 minutes on 2 cores)
# The metrics are a function of the seed, the torch build, the CPU's instruction set and torch's thread count
# (README "Determinism"); the wall times of the machine's load.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
run() {  # name, overrides...
    local name=$1; shift
    local start end
    start=$(date +%s%N)
    $PY main.py hydra.run.dir="$out/$name" callbacks.progress=null "$@" > "$out/$name.log" 2>&1
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 )) > "$out/$name.ms"
}
run crfiqa
run arcface method=arcface
$PY - "$out" <<'EOF'
import json, os, platform, sys

import torch

out = sys.argv[1]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
print(f"machine: {cpu}, {os.cpu_count()} cores ({isa}), torch {torch.__version__}, "
      f"{torch.get_num_threads()} torch threads, {platform.python_version()}")
m = {n: json.load(open(f"{out}/{n}/metrics.json")) for n in ("crfiqa", "arcface")}
s = {n: int(open(f"{out}/{n}.ms").read()) / 1000 for n in m}
c, a = m["crfiqa"], m["arcface"]
print("| | figure |\n|---|---|")
print(f"| `python main.py` (CR-FIQA, `iresnet_tiny`, SynthFace) wall time | {s['crfiqa']:.0f} s |")
print(f"| `val/synth/acc` (10-fold, held-out identities) | {c['val/synth/acc']:.3f} |")
print(f"| `val/synth/quality_spearman` (quality vs ground-truth degradation) | {c['val/synth/quality_spearman']:.3f} |")
print(f"| `val/synth/fnmr@fmr1e-2` -> `..._reject0.2` (fixed threshold, 20 % rejected) | "
      f"{c['val/synth/fnmr@fmr1e-2']:.3f} -> {c['val/synth/fnmr@fmr1e-2_reject0.2']:.3f} |")
print(f"| `python main.py method=arcface`: `val/synth/acc`, norm Spearman | "
      f"{a['val/synth/acc']:.3f}, {a['val/synth/quality_spearman']:.3f} ({s['arcface']:.0f} s) |")
EOF
