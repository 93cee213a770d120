#!/usr/bin/env bash
# Issue 3's T = 1 gap, recipe by recipe, over seeds and validation sizes: per (seed, val ratio) the
# TP chain of a preset runs once up to S(T2) (its own S(T1) is the baseline recipe), then every
# T = 1 variant retrains that same S(T2) side by side. Sized for a GPU node (16 cores); on a 2-core
# CPU use PARALLEL=0 and one seed.
#   benchmarks/ucm16_t1_recipes.sh DATA [OUT_DIR]     DATA: ImageFolder root or `stp data pack` file
# Environment: SEEDS ("0 1 2"), VAL_RATIOS ("0.1 0.2"), PRESET (examples/configs/ucm16-long.yaml),
# VARIANTS ("name:temporal-prune flags|..."), LIMIT_S (no limit), PARALLEL (1), STP (.venv/bin/stp),
# PY (.venv/bin/python). Prints one row per chain: ANN, S(T2), S(T1) and each variant's T = 1
# test accuracy with its best validation accuracy in brackets, then the mean T = 1 gap per column.
set -uo pipefail
DATA=$(realpath "${1:?usage: $0 DATA [OUT_DIR]}")
OUT=$(realpath -m "${2:-benchmarks/out/ucm16_t1_recipes}")
PRESET=$(realpath "${PRESET:-examples/configs/ucm16-long.yaml}")
STP=$(realpath "${STP:-.venv/bin/stp}"); PY=${PY:-$PWD/.venv/bin/python}
SEEDS=${SEEDS:-0 1 2}; VAL_RATIOS=${VAL_RATIOS:-0.1 0.2}; PARALLEL=${PARALLEL:-1}
VARIANTS=${VARIANTS:-"wd:--weight-decay 5e-4|wd_cos40:--weight-decay 5e-4 --epochs-per-stage 40 --lr-schedule cosine|cos40:--epochs-per-stage 40 --lr-schedule cosine"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # many trainings share the cores
mkdir -p "$OUT"

one_chain() {  # $1 seed, $2 validation ratio
  local d=$OUT/s$1_v$2
  mkdir -p "$d"
  sed -e "s/^seed: .*/seed: $1/" -e "s/^train-ann:$/&\n  val-ratio: $2/" "$PRESET" > "$d/preset.new"
  if cmp -s "$d/preset.new" "$d/preset.yaml"; then rm "$d/preset.new"; else mv "$d/preset.new" "$d/preset.yaml"; fi
  make -C examples "$d/s_t2.safetensors" CONFIG="$d/preset.yaml" OUT="$d" DATA="$DATA" STP="$STP" \
    > "$d/chain.log" 2>&1 || { echo "seed $1 val $2: chain failed, see $d/chain.log"; return 1; }
  local IFS='|' spec
  for spec in $VARIANTS; do
    IFS=' ' read -r -a flags <<< "${spec#*:}"
    "$STP" temporal-prune "$d/s_t2.safetensors" --config "$d/preset.yaml" --schedule 1 "${flags[@]}" \
      --force --out "$d/t1_${spec%%:*}.safetensors" > "$d/t1_${spec%%:*}.log" 2>&1 &
  done
  wait
}
export -f one_chain; export OUT PRESET STP DATA VARIANTS

run_all() {
  for s in $SEEDS; do for v in $VAL_RATIOS; do
    if [ "$PARALLEL" = 1 ]; then one_chain "$s" "$v" & else one_chain "$s" "$v"; fi
  done; done
  wait
}
export -f run_all; export SEEDS VAL_RATIOS PARALLEL
if [ -n "${LIMIT_S:-}" ]; then timeout "$LIMIT_S" bash -c run_all; else run_all; fi

"$PY" - "$OUT" "$VARIANTS" <<'PY'
import sys
from pathlib import Path
from stpcli.checkpoint import read_record
out, variants = Path(sys.argv[1]), [v.split(":")[0] for v in sys.argv[2].split("|")]
names = ["s_t1"] + [f"t1_{v}" for v in variants]
print("chain".ljust(12) + "ANN".rjust(8) + "S(T2)".rjust(8) + "".join(n.rjust(16) for n in names))
gaps = {}  # (validation ratio, column) -> ANN minus T = 1 accuracy
for run in sorted(p for p in out.iterdir() if p.is_dir()):
    def metrics(name):
        f = run / f"{name}.safetensors"
        return read_record(f)["metrics"] if f.exists() else None
    ann, t2 = metrics("na"), metrics("s_t2")
    cells = [f"{m['test_accuracy']:.2f}" if m else "-" for m in (ann, t2)]
    for n in names:
        m = metrics(n)
        cells.append(f"{m['test_accuracy']:.2f} ({m['val_accuracy']:.1f})" if m else "-")
        if m and ann:
            gaps.setdefault((run.name.split("_v")[-1], n), []).append(ann["test_accuracy"] - m["test_accuracy"])
    print(run.name.ljust(12) + cells[0].rjust(8) + cells[1].rjust(8) + "".join(c.rjust(16) for c in cells[2:]))
for ratio in sorted({r for r, _ in gaps}):
    cells = [gaps.get((ratio, n), []) for n in names]
    print(f"gap, val {ratio}".ljust(28) + "".join(
        (f"{sum(g) / len(g):.2f} (n={len(g)})" if g else "-").rjust(16) for g in cells))
PY
