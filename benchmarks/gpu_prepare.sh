#!/usr/bin/env bash
# Prepare what a GPU lease needs, on this machine, before calling the device (nothing is fetched there):
#   benchmarks/gpu_prepare.sh [SHARED_DATASETS]
# 1. wheels the device image lacks (pydantic and what it needs; nir for export tests), for its
#    Python 3.12, into .whl/ (ignored, carried with `carry: [".whl", ".data"]`);
# 2. data packs at the paper presets' resolutions into .data/ (ignored): UC Merced 16 at 128 px
#    and AID at 128 px, each under the 64 MiB a call may carry together with the tree.
set -euo pipefail
DATASETS=${1:-../shared/datasets}
mkdir -p .whl .data
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection
# the benchmark peers (pure-Python wheels; the device image has torch, torchaudio, scipy, h5py, tqdm)
python3 -m pip download -q --no-deps -d .whl spikingjelly==2.0.0 snntorch==1.0.0 loguru SciencePlots
STP=${STP:-.venv/bin/stp}
[ -f .data/ucm16_128.safetensors ] || $STP data pack "$DATASETS/ucm16" --image-size 128 --quality 90 --out .data/ucm16_128.safetensors
[ -f .data/aid150_128.safetensors ] || $STP data pack "$DATASETS/aid150" --image-size 128 --quality 75 --out .data/aid150_128.safetensors
du -sh .whl .data/*
