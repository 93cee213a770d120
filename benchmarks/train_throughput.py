"""Training throughput and peak memory: our ANN and SNN vs SpikingJelly and snnTorch.

Every configuration trains the same VGG11 topology (conv3 + neuron, 2x2 average pooling,
FC-4096 x2 scaled by --width, classifier) with the same batch, resolution, precision and
device, in a fresh subprocess so peak memory is its own. Images per second count full
training steps (forward, backward, optimiser step) after warm-up.

    python benchmarks/train_throughput.py --device cpu     # 64 px, batch 32, fp32, median of 3 runs
    python benchmarks/train_throughput.py --device cuda --compile --json out.json   # 224 px, batch 64, bf16

A configuration is ``<framework>[_t<T>][_<variant>]``: ``ann``, ``stp_t2``, ``spikingjelly_t1``;
variants of ours: ``_compiled`` (torch.compile of the model; its compile time, the first steps,
is reported apart from the steady-state rate), ``_inductor`` (the LIF's elementwise steps fused
by torch.compile, STP_LIF_BACKEND=inductor: the same results bit for bit) and ``_triton`` (the
fused Triton LIF kernels, STP_LIF_BACKEND=triton). ``--compile`` adds the compiled rows of ours. The JSON holds
``settings``, ``results`` and ``ratios``.

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
COMPILED = ["ann_compiled", "stp_t1_compiled", "stp_t2_compiled", "stp_t5_compiled"]
VARIANTS = ("compiled", "inductor", "triton")


def parse(name: str) -> tuple[str, int, str | None]:
    """``stp_t2_compiled`` -> ("stp", 2, "compiled")."""
    parts = name.split("_")
    variant = parts.pop() if parts[-1] in VARIANTS else None
    timesteps = int(parts.pop()[1:]) if len(parts) > 1 and parts[-1].startswith("t") else 1
    return "_".join(parts), timesteps, variant


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
        from stpcli.spiking.settings import SpikingSettings

        return SNN(spec, timesteps, SpikingSettings(dropout=0.0))
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

    from stpcli.spiking.neuron import use_lif_backend

    torch.manual_seed(0)
    device = torch.device(args.device)
    name = args.worker
    use_lif_backend(os.environ.get("STP_LIF_BACKEND", "torch"))
    kind, timesteps, variant = parse(name)
    before_kib = _rss_kib("VmRSS")
    model = build(kind, timesteps, args.width, args.image_size, 10).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step_fn = model
    if variant == "compiled":
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

    first = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - first  # includes compilation for the compiled variants
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
    return {"config": name, "images_per_s": args.steps * args.batch_size / seconds, "peak_mib": peak_mib,
            "warmup_s": warmup_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--precision", choices=["fp32", "bf16"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile rows of our ANN and SNN")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--repeats", type=int, help="runs per configuration; the median is kept (CPU: 3)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.image_size = args.image_size or (224 if cuda else 64)
    args.batch_size = args.batch_size or (64 if cuda else 32)
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.steps = args.steps or (30 if cuda else 20)  # CPU readings swing by 15 % at 6 steps
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    args.repeats = args.repeats or (1 if cuda else 3)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    names = args.configs.split(",") + (COMPILED if args.compile else [])
    results = []
    for name in dict.fromkeys(names):
        runs = []
        for _ in range(args.repeats):
            command = [sys.executable, __file__, "--worker", name] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k in ("device", "image_size", "batch_size", "precision", "width", "steps", "warmup")]
            environment = dict(os.environ)
            if parse(name)[2] in ("inductor", "triton"):
                environment["STP_LIF_BACKEND"] = parse(name)[2]
            run = subprocess.run(command, capture_output=True, text=True, env=environment)
            if run.returncode != 0:
                tail = (run.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{name}: failed ({tail})", file=sys.stderr)
                break
            runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
        if not runs:
            results.append({"config": name, "images_per_s": None, "peak_mib": None, "warmup_s": None})
            continue
        runs.sort(key=lambda r: r["images_per_s"])
        median = dict(runs[len(runs) // 2])
        median["repeats"] = [round(r["images_per_s"], 2) for r in runs]
        results.append(median)
        print(f"  {name:20s} {median['images_per_s']:9.1f} img/s  {median['peak_mib']:9.0f} MiB  "
              f"warm-up {median['warmup_s']:.1f} s", file=sys.stderr, flush=True)
    print(f"\nVGG11 x{args.width}, {args.image_size} px, batch {args.batch_size}, {args.precision}, {args.device}, "
          f"{args.steps} timed steps after {args.warmup} warm-up" + (", torch.compile" if args.compile else ""))
    print(f"{'config':20s} {'images/s':>10s} {'peak MiB':>10s} {'warm-up s':>10s}")
    for row in results:
        ips = "failed" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}"
        mem = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        warm = "-" if row["warmup_s"] is None else f"{row['warmup_s']:.1f}"
        print(f"{row['config']:20s} {ips:>10s} {mem:>10s} {warm:>10s}")
    ratios = compute_ratios({r["config"]: r for r in results})
    measured = {k: v for k, v in ratios.items() if v is not None}
    print("ratios: " + (" ".join(f"{k}={v:.2f}" for k, v in measured.items()) or "none"))
    for name in sorted(set(ratios) - set(measured)):  # a ratio is only printed when both sides ran
        peer = name.split("_vs_")[1]
        hint = " (install the peers: make bench)" if peer.startswith(("spikingjelly", "snntorch")) else ""
        print(f"not printed: {name}, {peer} did not run{hint}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results,
                       "ratios": ratios}, handle, indent=2)


def compute_ratios(by: dict) -> dict:
    """Our best (eager or compiled) SNN against the references, and peak memory at T = 2."""
    def rate(name, key="images_per_s"):
        return by.get(name, {}).get(key)

    def best(timesteps):
        rates = [r for r in (rate(f"stp_t{timesteps}"), rate(f"stp_t{timesteps}_compiled"),
                             rate(f"stp_t{timesteps}_inductor"), rate(f"stp_t{timesteps}_triton")) if r]
        return max(rates) if rates else None

    def ratio(a, b):
        return a / b if a and b else None

    return {
        "snn_t1_vs_ann": ratio(best(1), rate("ann")),
        "snn_t2_vs_ann": ratio(best(2), rate("ann")),
        "snn_t1_vs_spikingjelly": ratio(best(1), rate("spikingjelly_t1")),
        "snn_t2_vs_spikingjelly": ratio(best(2), rate("spikingjelly_t2")),
        "snn_t1_vs_ann_compiled": ratio(best(1), rate("ann_compiled")),
        "snn_t2_vs_ann_compiled": ratio(best(2), rate("ann_compiled")),
        "mem_t2_vs_spikingjelly": ratio(rate("stp_t2", "peak_mib"), rate("spikingjelly_t2", "peak_mib")),
    }


if __name__ == "__main__":
    main()
