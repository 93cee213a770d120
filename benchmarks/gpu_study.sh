#!/usr/bin/env bash
# Issue 10's paper-scale studies on one GPU, each under its own time limit (a rerun continues a
# study that a limit stopped: finished stages are skipped, interrupted ones resumed):
#   benchmarks/gpu_study.sh [STUDY ...]        STUDY: PRESET:PACK[:SEEDS[:LIMIT_S[:JOBS]]]
# Default: UC Merced VGG14 then AID VGG11, 3 seeds each, 270 s each, 6 chains side by side.
# Run benchmarks/gpu_prepare.sh here first; on the device, with carry [".whl", ".data"]:
#   bash benchmarks/gpu_study.sh      (results: $OUT/study-<preset>.json, .md, and the logs' tails)
set -uo pipefail
OUT=${OUT:-benchmarks/out/gpu_study}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
STUDIES=("$@")
[ ${#STUDIES[@]} -gt 0 ] || STUDIES=("examples/configs/ucm16-vgg14.yaml:.data/ucm16_128.safetensors:0,1,2:270:6"
                                     "examples/configs/aid150-vgg11.yaml:.data/aid150_128.safetensors:0,1,2:270:6")
for spec in "${STUDIES[@]}"; do
  IFS=: read -r preset pack seeds limit jobs <<< "$spec"
  name=$(basename "$preset" .yaml)
  echo "== $name"
  python3 -m stpcli study "$preset" --data "$pack" --seeds "${seeds:-0,1,2}" --jobs "${jobs:-6}" \
    --time-limit "${limit:-270}" --device cuda --out-dir "runs/$name" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? (124: stopped by the time limit; rerun to continue)"
  cp "runs/$name/study.json" "$OUT/study-$name.json" 2>/dev/null
  cp "runs/$name/study.md" "$OUT/study-$name.md" 2>/dev/null && cat "$OUT/study-$name.md"
done
