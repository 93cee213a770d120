"""On a CUDA machine: the Triton LIF kernels against the PyTorch reference, then a torch.profiler
breakdown of one training step (ANN, SNN at T = 1 and 2, each LIF backend).

    python benchmarks/gpu_kernels.py --json kernels.json

Parity: spikes exactly and gradients to float tolerance, fp32 and bf16, contiguous, channels-last
and broadcast (first-layer) currents. Profile: CUDA time per category (convolution, LIF kernels,
layout copies, elementwise, optimizer, other) over 5 profiled steps of VGG11 at 224 px, batch 64, bf16.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
import torch.nn.functional as F


def parity() -> list[dict]:
    from stpcli.spiking import neuron, triton_lif

    rows = []
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for layout in ("contiguous", "channels_last", "broadcast"):
            for binary in (False, True):
                steps, batch = 3, 8
                if layout == "broadcast":
                    current = (torch.randn(batch, 64, 28, 28, device="cuda") + 0.5).to(dtype)
                    current = current.unsqueeze(0).expand(steps, *current.shape)
                else:
                    folded = (torch.randn(steps * batch, 64, 28, 28, device="cuda") + 0.5).to(dtype)
                    if layout == "channels_last":
                        folded = folded.contiguous(memory_format=torch.channels_last)
                    current = folded.view(steps, batch, 64, 28, 28)
                weights = torch.randn(steps, batch, 64, 28, 28, device="cuda", dtype=dtype)
                outs = []
                for function in (neuron._LIFFunction, triton_lif.TritonLIF):
                    c = current.detach().clone().requires_grad_() if layout != "broadcast" else \
                        current.detach().requires_grad_()
                    v = torch.tensor(0.8, device="cuda", requires_grad=True)
                    lam = torch.tensor(0.9, device="cuda", requires_grad=True)
                    spikes = function.apply(c, v, lam, 0.3, 0.5, binary)
                    (spikes.float() * weights.float()).sum().backward()
                    outs.append((spikes.detach().float(), c.grad.float(), v.grad, lam.grad))
                (ref, ours) = outs
                rows.append({"dtype": str(dtype), "layout": layout, "binary": binary,
                             "spikes_equal": bool(torch.equal(ref[0], ours[0])),
                             "spike_mismatch_share": float((ref[0] != ours[0]).float().mean()),
                             "grad_current_max_abs": float((ref[1] - ours[1]).abs().max()),
                             "grad_threshold_rel": float((ref[2] - ours[2]).abs() / ref[2].abs().clamp(min=1e-6)),
                             "grad_leak_rel": float((ref[3] - ours[3]).abs() / ref[3].abs().clamp(min=1e-6))})
                print(rows[-1], flush=True)
    return rows


CATEGORIES = [("lif", ("_lif_", "lif")), ("convolution", ("conv", "cudnn", "implicit_gemm", "wgrad", "dgrad", "sm90_xmma")),
              ("copy/layout", ("copy", "transpose", "nchw", "nhwc")), ("optimizer", ("sgd", "adam", "foreach", "multi_tensor")),
              ("gemm", ("gemm", "cutlass", "matmul")), ("elementwise", ("elementwise", "vectorized", "reduce"))]


def profile(kind: str, timesteps: int, backend: str) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from stpcli.models.ann import ANN
    from stpcli.models.registry import make_spec
    from stpcli.spiking.network import SNN
    from stpcli.spiking.neuron import use_lif_backend
    from stpcli.spiking.settings import SpikingSettings

    use_lif_backend(backend)
    spec = make_spec("vgg11", 10, 224, 1.0, dropout=0.0)
    model = (ANN(spec) if kind == "ann" else SNN(spec, timesteps, SpikingSettings(dropout=0.0))).cuda()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(64, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    totals = defaultdict(float)
    for event in prof.key_averages():
        cuda_us = getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)
        if not cuda_us:
            continue
        name = event.key.lower()
        category = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        totals[category] += cuda_us / 5 / 1000  # ms per step
    cpu_ms = sum(e.self_cpu_time_total for e in prof.key_averages()) / 5 / 1000
    row = {"config": f"{kind}_t{timesteps}_{backend}" if kind != "ann" else "ann", "gpu_ms_per_step": dict(totals),
           "gpu_ms_total": sum(totals.values()), "cpu_ms_per_step": cpu_ms}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "parity": parity(), "profile": []}
    for kind, steps, backend in (("ann", 1, "torch"), ("snn", 1, "torch"), ("snn", 1, "triton"), ("snn", 2, "torch"),
                                 ("snn", 2, "triton")):
        try:
            result["profile"].append(profile(kind, steps, backend))
        except Exception as exc:  # keep what was measured
            result["profile"].append({"config": f"{kind}_t{steps}_{backend}", "error": str(exc)[:300]})
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
