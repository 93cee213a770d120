"""Threshold balancing: the layer-by-layer walk (stp) against rerunning the network from the input
for every neuron layer (the previous implementation's O(L^2) scheme), side by side in one run.

    python benchmarks/balance_thresholds.py [--arch vgg11] [--width 0.5] [--image-size 64] [--images 256] [--timesteps 5]

Prints the wall time of each and the largest relative difference between their thresholds (the
rerun takes the exact percentile over every value; the walk samples at most 2^20 values per step).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stpcli.models.ann import ANN
from stpcli.models.registry import make_spec
from stpcli.spiking.convert import balance_thresholds, snn_from_ann
from stpcli.spiking.settings import SpikingSettings


@torch.no_grad()
def rerun_per_neuron(snn, images, percentile, scale, chunk=64):
    """For each neuron layer, run the network from the input (earlier thresholds set) and take the
    exact percentile of that layer's input current over all values, per step; keep the maximum."""
    thresholds = []
    for _, neuron in snn.neurons():
        per_step = [[] for _ in range(snn.timesteps)]

        def hook(module, args, per_step=per_step):
            for t, current in enumerate(args[0]):
                per_step[t].append(current.reshape(-1).float())

        handle = neuron.register_forward_pre_hook(hook)
        for start in range(0, images.shape[0], chunk):
            snn(images[start:start + chunk])
        handle.remove()
        value = 0.0
        for values in per_step:
            flat = torch.cat(values)
            value = max(value, float(flat.kthvalue(max(1, round(percentile / 100 * flat.numel()))).values))
        threshold = max(scale * value, 1e-3)
        neuron.threshold.fill_(threshold)
        thresholds.append(threshold)
    return thresholds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--timesteps", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    ann = ANN(make_spec(args.arch, 16, args.image_size, args.width, dropout=0.0)).eval()
    images = torch.randn(args.images, 3, args.image_size, args.image_size)
    rows = {}
    for name, function in (("layer-by-layer walk (stp)", balance_thresholds), ("rerun per neuron layer", rerun_per_neuron)):
        # spikes of amplitude V: the rerun has no step folding thresholds into the next weights
        snn = snn_from_ann(ann, args.timesteps, SpikingSettings(dropout=0.0, spike_amplitude="threshold")).eval()
        start = time.perf_counter()
        thresholds = function(snn, images, 99.7, 0.6)
        rows[name] = {"seconds": time.perf_counter() - start, "thresholds": thresholds}
    walk, rerun = rows.values()
    worst = max(abs(a - b) / b for a, b in zip(walk["thresholds"], rerun["thresholds"]))
    print(f"{args.arch} x{args.width}, {args.image_size} px, T={args.timesteps}, {args.images} images, "
          f"{len(walk['thresholds'])} neuron layers, CPU threads {torch.get_num_threads()}")
    print(f"{'method':28s} {'seconds':>9s}")
    for name, row in rows.items():
        print(f"{name:28s} {row['seconds']:9.2f}")
    print(f"speed-up {rerun['seconds'] / walk['seconds']:.2f}x; largest threshold difference {100 * worst:.2f} %")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "results": rows, "largest_relative_difference": worst}, handle, indent=2)


if __name__ == "__main__":
    main()
