#!/usr/bin/env bash
# Issue 2's check: train-ann on UC Merced twice with the same seed; print both test accuracies and
# whether the two checkpoints hold identical tensors.
#   benchmarks/ann_reproducibility.sh ../shared/datasets/ucm16 [out-dir]
set -euo pipefail
DATA=${1:?usage: $0 DATA_DIR [OUT_DIR]}
OUT=${2:-benchmarks/out/ann_repro}
STP=${STP:-.venv/bin/stp}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
for run in a b; do
  "$STP" train-ann --arch vgg11 --width 0.25 --image-size 64 --data "$DATA" --train-ratio 0.8 \
    --epochs 30 --seed 0 --device cpu --out "$OUT/na_$run.safetensors" --force | tail -n 1
done
"$PY" - "$OUT" <<'PY'
import sys, torch
from stpcli.checkpoint import load_checkpoint
a, b = (load_checkpoint(f"{sys.argv[1]}/na_{r}.safetensors") for r in "ab")
same = a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
acc = [c.history[-1]["metrics"]["test_accuracy"] for c in (a, b)]
print(f"test accuracy: run a {acc[0]:.2f}%, run b {acc[1]:.2f}%; identical tensors: {same}")
PY
