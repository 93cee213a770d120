"""Training throughput and peak memory: our ANN and SNN vs SpikingJelly and snnTorch.

Every configuration trains the same VGG11 topology (conv3 + neuron, 2x2 average pooling,
FC-4096 x2 scaled by --width, classifier) with the same batch, resolution, precision and
device, in a fresh subprocess so peak memory is its own. Images per second count full
training steps (forward, backward, optimiser step) after warm-up.

    python benchmarks/train_throughput.py --device cpu     # 64 px, batch 32, fp32
    python benchmarks/train_throughput.py --device cuda    # 224 px, batch 64, bf16

SpikingJelly and snnTorch are benchmark-only dependencies (`make bench` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = ["ann", "stp_t1", "stp_t2", "stp_t5", "spikingjelly_t1", "spikingjelly_t2", "spikingjelly_t5",
           "snntorch_t1", "snntorch_t2", "snntorch_t5"]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def build(kind: str, timesteps: int, width: float, size: int, classes: int):
    from torch import nn

    from stpcli.models.registry import make_spec

    spec = make_spec("vgg11", classes, size, width, dropout=0.0)
    if kind == "ann":
        from stpcli.models.ann import ANN

        return ANN(spec)
    if kind == "stp":
        from stpcli.spiking.network import SNN

        return SNN(spec, timesteps, dropout=0.0)
    from stpcli.models.plan import build_plan

    plan = build_plan(spec)
    if kind == "spikingjelly":
        from spikingjelly.activation_based import functional, layer, neuron, surrogate

        def lif():
            return neuron.LIFNode(tau=2.0, detach_reset=True, surrogate_function=surrogate.ATan(), step_mode="m")

        layers = []
        for entry in plan:
            if entry["type"] == "conv":
                layers += [layer.Conv2d(entry["in"], entry["out"], 3, padding=1, step_mode="m"), lif()]
            elif entry["type"] == "pool":
                layers.append(layer.AvgPool2d(2, 2, step_mode="m"))
            elif entry["type"] == "flatten":
                layers.append(layer.Flatten(start_dim=1, step_mode="m"))
            elif entry["type"] == "fc":
                layers += [layer.Linear(entry["in"], entry["out"], step_mode="m"), lif()]
            elif entry["type"] == "output":
                layers.append(layer.Linear(entry["in"], entry["out"], step_mode="m"))

        class SJNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(*layers)

            def forward(self, x):
                functional.reset_net(self)
                return self.body(x.unsqueeze(0).repeat(timesteps, 1, 1, 1, 1)).mean(0)

        return SJNet()
    if kind == "snntorch":
        import snntorch as snn
        from snntorch import surrogate as snn_surrogate

        class SnnTorchNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.ops = nn.ModuleList()
                self.neurons = nn.ModuleList()
                self.kinds = []
                for entry in plan:
                    kind_ = entry["type"]
                    if kind_ == "conv":
                        self.ops.append(nn.Conv2d(entry["in"], entry["out"], 3, padding=1))
                    elif kind_ == "pool":
                        self.ops.append(nn.AvgPool2d(2))
                    elif kind_ == "flatten":
                        self.ops.append(nn.Flatten())
                    elif kind_ in ("fc", "output"):
                        self.ops.append(nn.Linear(entry["in"], entry["out"]))
                    spiking = kind_ in ("conv", "fc")
                    self.neurons.append(snn.Leaky(beta=0.9, spike_grad=snn_surrogate.atan()) if spiking else nn.Identity())
                    self.kinds.append(spiking)

            def forward(self, x):
                membranes = [None] * len(self.ops)
                total = 0
                for _ in range(timesteps):
                    h = x
                    for i, (op, neuron_, spiking) in enumerate(zip(self.ops, self.neurons, self.kinds)):
                        h = op(h)
                        if spiking:
                            if membranes[i] is None:
                                membranes[i] = neuron_.init_leaky()
                            h, membranes[i] = neuron_(h, membranes[i])
                    total = total + h
                return total / timesteps

        return SnnTorchNet()
    raise ValueError(kind)


def worker(args) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    device = torch.device(args.device)
    name = args.worker
    kind, _, steps_text = name.partition("_t")
    timesteps = int(steps_text) if steps_text else 1
    before_kib = _rss_kib("VmRSS")
    model = build(kind, timesteps, args.width, args.image_size, 10).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step_fn = model
    if args.compile and kind in ("ann", "stp"):
        step_fn = torch.compile(model)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else torch.autocast(device_type=device.type, enabled=False))

    def step():
        with autocast:
            loss = F.cross_entropy(step_fn(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (_rss_kib("VmHWM") - before_kib) / 1024
    return {"config": name, "images_per_s": args.steps * args.batch_size / seconds, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--precision", choices=["fp32", "bf16"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--compile", action="store_true", help="torch.compile our ANN and SNN (CUDA runs)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.image_size = args.image_size or (224 if cuda else 64)
    args.batch_size = args.batch_size or (64 if cuda else 32)
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.steps = args.steps or (30 if cuda else 20)  # CPU readings swing by 15 % at 6 steps
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = []
    for name in args.configs.split(","):
        command = [sys.executable, __file__, "--worker", name] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k in ("device", "image_size", "batch_size", "precision", "width", "steps", "warmup")]
        if args.compile:
            command.append("--compile")
        run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if run.returncode != 0:
            tail = (run.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name}: failed ({tail})", file=sys.stderr)
            results.append({"config": name, "images_per_s": None, "peak_mib": None})
            continue
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(f"  {name:18s} {results[-1]['images_per_s']:9.1f} img/s  {results[-1]['peak_mib']:9.0f} MiB",
              file=sys.stderr, flush=True)
    print(f"\nVGG11 x{args.width}, {args.image_size} px, batch {args.batch_size}, {args.precision}, {args.device}, "
          f"{args.steps} timed steps after {args.warmup} warm-up" + (", torch.compile" if args.compile else ""))
    print(f"{'config':18s} {'images/s':>10s} {'peak MiB':>10s}")
    for row in results:
        ips = "failed" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}"
        mem = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        print(f"{row['config']:18s} {ips:>10s} {mem:>10s}")
    by = {r["config"]: r for r in results}

    def ratio(a, b, key="images_per_s"):
        x, y = by.get(a, {}).get(key), by.get(b, {}).get(key)
        return f"{x / y:.2f}" if x and y else "nan"

    print(f"ratios: snn_t1_vs_ann={ratio('stp_t1', 'ann')} snn_t2_vs_ann={ratio('stp_t2', 'ann')} "
          f"snn_t1_vs_spikingjelly={ratio('stp_t1', 'spikingjelly_t1')} "
          f"snn_t2_vs_spikingjelly={ratio('stp_t2', 'spikingjelly_t2')} "
          f"mem_t2_vs_spikingjelly={ratio('stp_t2', 'spikingjelly_t2', 'peak_mib')}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
