#!/usr/bin/env bash
# Issue 11's GPU checks for one lease, each under its own limit, most useful first:
# (1) Triton LIF parity and a torch.profiler breakdown of a training step, (2) throughput of ours
# (eager, Triton LIF, compiled) against SpikingJelly at 224 px, batch 64, bf16, (3) the wall time of
# the AID VGG11 paper preset's whole STP chain (one seed). Results: $OUT (JSON, logs).
#   bash benchmarks/gpu_engine.sh    (carry [".whl", ".data"]; benchmarks/gpu_prepare.sh fills them here first)
set -uo pipefail
OUT=${OUT:-benchmarks/out/gpu_engine}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
echo "== 1. kernels: parity and profile"
timeout "${KERNELS_S:-150}" python3 benchmarks/gpu_kernels.py --json "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; tail -n 5 "$OUT/kernels.log"
echo "== 2. throughput"
timeout "${THROUGHPUT_S:-240}" python3 benchmarks/train_throughput.py --device cuda --compile \
  --configs ann,stp_t1,stp_t2,stp_t1_triton,stp_t2_triton,spikingjelly_t1,spikingjelly_t2 --json "$OUT/throughput.json" 2>&1
echo "throughput rc=$?"
echo "== 3. the AID VGG11 STP chain, one seed"
start=$(date +%s)
timeout "${CHAIN_S:-150}" python3 -m stpcli study examples/configs/aid150-vgg11.yaml --data .data/aid150_128.safetensors \
  --seeds 0 --jobs 2 --device cuda --out-dir runs/aid-chain > "$OUT/chain.log" 2>&1
echo "chain rc=$? wall $(( $(date +%s) - start )) s"; tail -n 20 "$OUT/chain.log"
