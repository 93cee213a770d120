#!/usr/bin/env bash
# Issue 3's real-data check over several seeds, each seed drawing its own split: per seed, Na and
# Nb are trained once, then the STP and TP chains run plain and with --distill side by side (four
# `make -C examples compare` runs per seed; each `-j2` runs STP and TP in parallel). Sized for a GPU
# node (16 cores): on a 2-core CPU run one seed at a time with PARALLEL=0.
#   benchmarks/ucm16_seeds.sh DATA [OUT_DIR]        DATA: ImageFolder root or `stp data pack` file
# Environment: SEEDS ("0 1"), PRESET (examples/configs/ucm16-long.yaml), DISTILL (0.5),
# LIMIT_S (no limit), PARALLEL (1), STP (.venv/bin/stp), PY (.venv/bin/python). Prints the test accuracy of every file.
set -uo pipefail
DATA=$(realpath "${1:?usage: $0 DATA [OUT_DIR]}")
OUT=$(realpath -m "${2:-benchmarks/out/ucm16_seeds}")
PRESET=$(realpath "${PRESET:-examples/configs/ucm16-long.yaml}")
STP=$(realpath "${STP:-.venv/bin/stp}"); PY=${PY:-$PWD/.venv/bin/python}
SEEDS=${SEEDS:-0 1}; DISTILL=${DISTILL:-0.5}; PARALLEL=${PARALLEL:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # several trainings share the cores
mkdir -p "$OUT"

one_seed() {
  local s=$1 plain=$OUT/s$1_plain kd=$OUT/s$1_distill
  mkdir -p "$plain" "$kd"
  # presets are rewritten only when they change: make reruns every stage of a newer preset
  sed -e "s/^seed: .*/seed: $s/" "$PRESET" > "$plain/preset.new"
  { cat "$plain/preset.new"; echo "distill: $DISTILL"; } > "$kd/preset.new"
  for d in "$plain" "$kd"; do
    if cmp -s "$d/preset.new" "$d/preset.yaml"; then rm "$d/preset.new"; else mv "$d/preset.new" "$d/preset.yaml"; fi
  done
  make -C examples "$plain/nb.safetensors" CONFIG="$plain/preset.yaml" OUT="$plain" DATA="$DATA" STP="$STP" \
    > "$plain/ann.log" 2>&1 || { echo "seed $s: Na/Nb failed, see $plain/ann.log"; return 1; }
  if [ ! "$kd/nb.safetensors" -nt "$plain/nb.safetensors" ]; then  # share Na and Nb; a rerun keeps them
    cp "$plain/na.safetensors" "$plain/nb.safetensors" "$kd/"
    touch "$kd/na.safetensors"; touch "$kd/nb.safetensors"  # newer than the preset: make keeps them
  fi
  make -C examples compare -j2 CONFIG="$kd/preset.yaml" OUT="$kd" DATA="$DATA" STP="$STP" > "$kd/run.log" 2>&1 &
  make -C examples compare -j2 CONFIG="$plain/preset.yaml" OUT="$plain" DATA="$DATA" STP="$STP" > "$plain/run.log" 2>&1
  wait
}
export -f one_seed; export OUT PRESET STP DATA DISTILL

run_all() {
  for s in $SEEDS; do
    if [ "$PARALLEL" = 1 ]; then one_seed "$s" & else one_seed "$s"; fi
  done
  wait
}
export -f run_all; export SEEDS PARALLEL
if [ -n "${LIMIT_S:-}" ]; then timeout "$LIMIT_S" bash -c run_all; else run_all; fi

"$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path
from stpcli.checkpoint import read_record
names = ["na", "nb", "s_t5", "s_t3", "s_t2", "s_t1", "sb_t5", "sb_t3", "sb_t2", "sb_t1", "sa_t2", "sa_t1"]
print("run".ljust(14) + "".join(n.rjust(8) for n in names))
for run in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
    cells = []
    for n in names:
        f = run / f"{n}.safetensors"
        cells.append(f"{read_record(f)['metrics']['test_accuracy']:.2f}" if f.exists() else "-")
    print(run.name.ljust(14) + "".join(c.rjust(8) for c in cells))
PY
