#!/usr/bin/env bash
# The SynthFace comparison table of README "Quality methods after the seeds": one FR model (ArcFace, tiny
# iResNet, dropout 0.4), and every quality source on its comparison scores: its own norm, SER-FIQ, GraFIQs,
# FROQ (training-free observers of it), CR-FIQA's and MagFace's quality (other models), a model distilled from
# SER-FIQ, an SDD-FIQA model, the ISO/IEC 29794-5 components (quality=iso, no model), random and the SynthFace oracle. CPU, under an hour on 2 cores.
#   bash benchmarks/methods_table.sh [out dir]      (stage 1: the three trained models; 2: the students; 3: compare)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-logs/methods_table}
PY=${PY:-python}
EP=${EPOCHS:-8}
TRAIN=(trainer.max_epochs=$EP callbacks.progress=null)
fr=$R/arcface/checkpoints/last.ckpt
finished() { [ -f "$R/$1/metrics.json" ]; }   # a finished run (an interrupted one is trained again)
finished arcface || $PY main.py method=arcface backbone.dropout=0.4 "${TRAIN[@]}" hydra.run.dir=$R/arcface
finished crfiqa || $PY main.py method=crfiqa "${TRAIN[@]}" hydra.run.dir=$R/crfiqa
finished magface || $PY main.py method=magface "${TRAIN[@]}" hydra.run.dir=$R/magface
STUDENT=(backbone=iresnet_tiny trainer.max_epochs=$EP callbacks.progress=null)
finished distill || $PY main.py method=distill "${STUDENT[@]}" \
    "method.quality_labels={source:serfiq,ckpt_path:$fr,p:0.4}" hydra.run.dir=$R/distill
finished sddfiqa || $PY main.py method=sddfiqa "${STUDENT[@]}" \
    "method.quality_labels.ckpt_path=$fr" hydra.run.dir=$R/sddfiqa
$PY main.py task=compare ckpt_path=$fr val=[synth] val.synth.dataset.num_pairs=3000 compare.serfiq.p=0.4 \
    "compare.sources=[own,serfiq,grafiqs,froq,{name:crfiqa,ckpt_path:$R/crfiqa/checkpoints/last.ckpt},{name:magface,ckpt_path:$R/magface/checkpoints/last.ckpt},{name:distilled_serfiq,ckpt_path:$R/distill/checkpoints/last.ckpt},{name:sddfiqa,ckpt_path:$R/sddfiqa/checkpoints/last.ckpt},iso,random,oracle]" \
    hydra.run.dir=$R/compare
cat $R/compare/compare.md
