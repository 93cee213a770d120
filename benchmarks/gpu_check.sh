#!/usr/bin/env bash
# The GPU checks for a short lease on a CUDA machine, each under its own time limit, most useful
# first: (1) a CUDA smoke chain on the embedded data, (2) the throughput benchmark eager, all ten
# configurations, (3) the same with --compile for our ANN and SNN. Results land in OUT_DIR.
#   benchmarks/gpu_check.sh [OUT_DIR]
# Environment: STP (command running stp; default `python3 -m stpcli` with src/ on PYTHONPATH),
# WHEELS (a folder of spikingjelly/snntorch/loguru wheels to install first, for machines offline),
# SMOKE_S (120), EAGER_S (200), COMPILED_S (300).
set -uo pipefail
OUT=${1:-benchmarks/out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
STP=${STP:-python3 -m stpcli}
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/stp-site \
    "$WHEELS"/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/stp-site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. smoke chain on CUDA"
S=$(mktemp -d)
timeout "${SMOKE_S:-120}" bash -c "set -e
  $STP train-ann --epochs 2 --width 0.25 --image-size 32 --device cuda --out $S/na.safetensors
  $STP convert $S/na.safetensors --epochs 1 --distill 0.5 --device cuda --precision bf16 --out $S/s5.safetensors
  $STP temporal-prune $S/s5.safetensors --schedule 2,1 --epochs-per-stage 1 --device cuda --out $S/s1.safetensors
  $STP evaluate $S/s1.safetensors --device cuda" > "$OUT/smoke.log" 2>&1
echo "smoke rc=$?"; tail -n 3 "$OUT/smoke.log"

echo "== 2. throughput, eager"
timeout "${EAGER_S:-200}" python3 benchmarks/train_throughput.py --device cuda --json "$OUT/eager.json" 2>&1
echo "eager rc=$?"

echo "== 3. throughput, torch.compile (ours only)"
timeout "${COMPILED_S:-300}" python3 benchmarks/train_throughput.py --device cuda --compile \
  --configs ann,stp_t1,stp_t2 --json "$OUT/compiled.json" 2>&1
echo "compiled rc=$?"
