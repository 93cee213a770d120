"""Inference on the CPU: stp's ANN and its one-time-step SNN in PyTorch and in onnxruntime (fp32, int8).

For each pair (an ANN and an SNN at T = 1 made from it): batch-64 throughput (images per second)
and batch-1 latency, each the median of --rounds rounds that alternate the two models side by
side, the model's size, and its test accuracy. PyTorch runs the models as ``stp evaluate`` and
``stp predict`` do; the row "ANN, BN folded" is the ANN with its batch norm folded into the
convolutions (as onnxruntime does for both), for a like-for-like reading of the PyTorch ratio.
The SNN's ONNX models are also checked against stp: argmax and logits on the test split.

    make demo    # examples/out/demo/na.safetensors and sa_t1.safetensors
    python benchmarks/inference.py --json benchmarks/results/cpu-inference.json
    python benchmarks/inference.py --pair runs/na.safetensors:runs/sa_t1.safetensors --threads 1

Without --pair: the demo pair, and a VGG11 x0.5 pair at 64 px on the embedded data (one ANN
epoch, converted at T = 1 without training; speed does not depend on the weights), made in
benchmarks/out/ when missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "examples/out/demo/na.safetensors", ROOT / "examples/out/demo/sa_t1.safetensors")
WIDE = (ROOT / "benchmarks/out/inference/na_64px.safetensors", ROOT / "benchmarks/out/inference/s_t1_64px.safetensors")


def seconds_per_call(call, repeats: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def make_wide_pair() -> None:
    """VGG11 x0.5 at 64 px on the embedded data: one ANN epoch, then T = 1 without training."""
    ann, snn = WIDE
    stp = [sys.executable, "-m", "stpcli"]
    if not ann.exists():
        subprocess.run([*stp, "train-ann", "--arch", "vgg11", "--width", "0.5", "--image-size", "64", "--epochs", "1",
                        "--device", "cpu", "--out", str(ann)], check=True)
    if not snn.exists():
        subprocess.run([*stp, "convert", str(ann), "--timesteps", "1", "--epochs", "0", "--calibration-images", "128",
                        "--device", "cpu", "--out", str(snn)], check=True)


def folded_ann(model):
    """The ANN with each batch norm folded into its convolution (eval mode), as ONNX runtimes do."""
    from torch import nn

    from stpcli.models.ann import fold_batchnorm

    for module in model.modules():
        for name, child in list(module.named_children()):
            bn = getattr(module, name.replace("conv", "bn"), None) if "conv" in name else None
            if isinstance(child, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                weight, bias = fold_batchnorm(child.weight, None, bn)
                fused = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                  child.padding, bias=True)
                fused.weight.data, fused.bias.data = weight, bias
                setattr(module, name, fused)
                setattr(module, name.replace("conv", "bn"), nn.Identity())
    return model.eval()


def models_of(ann_path: Path, snn_path: Path, run, sessions):
    """Every (label, runtime, callable on a numpy batch, bytes, test accuracy) of one pair."""
    import onnxruntime as ort

    from stpcli.checkpoint import load_checkpoint
    from stpcli.export.onnx_model import CALIBRATION_IMAGES, normalised, onnx_accuracy, onnx_bytes, quantize_int8
    from stpcli.options import DataOptions
    from stpcli.report import evaluate
    from stpcli.restore import model_from_checkpoint
    from stpcli.run import load_checkpoint_data

    entries, checks = [], {}
    for path in (ann_path, snn_path):
        ckpt = load_checkpoint(path)
        parts = load_checkpoint_data(run, ckpt, DataOptions())
        train, _ = parts.part("train")
        test, labels = parts.part("test")
        images, truth = normalised(ckpt, test), labels.numpy()
        label = "ANN" if ckpt.kind == "ann" else f"SNN T={ckpt.timesteps}"
        accuracy = evaluate(run, ckpt, DataOptions(), parts=parts)["overall_accuracy"]
        model = model_from_checkpoint(ckpt).eval()
        torch_models = [("PyTorch fp32", model)]
        if ckpt.kind == "ann":
            torch_models.append(("PyTorch fp32, BN folded", folded_ann(model_from_checkpoint(ckpt))))
        for runtime, module in torch_models:
            def call(x, m=module):
                with torch.no_grad():
                    return m(torch.from_numpy(x)).numpy()
            entries.append({"model": label, "runtime": runtime, "call": call, "bytes": path.stat().st_size,
                            "test_accuracy": accuracy, "images": images})
        fp32 = onnx_bytes(ckpt)
        int8 = quantize_int8(fp32, ckpt, normalised(ckpt, train[:CALIBRATION_IMAGES]))
        for runtime, blob in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
            session = ort.InferenceSession(blob, sessions, providers=["CPUExecutionProvider"])
            entries.append({"model": label, "runtime": runtime, "bytes": len(blob), "images": images,
                            "call": lambda x, s=session: s.run(None, {"image": x})[0],
                            "test_accuracy": onnx_accuracy(blob, images, truth)})
            if ckpt.kind == "snn":
                with torch.no_grad():
                    ours = model(torch.from_numpy(images)).numpy()
                theirs = entries[-1]["call"](images)
                checks[runtime] = {"argmax_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean()),
                                   "max_abs_logit_difference": float(np.abs(ours - theirs).max())}
                if runtime == "onnxruntime fp32":
                    checks[runtime].update(spike_agreement(model, blob, images, sessions))
    return entries, checks


def spike_agreement(snn, blob: bytes, images: np.ndarray, sessions) -> dict:
    """Every neuron's spike in onnxruntime (each step's output, added as a graph output) against stp's."""
    import onnx
    import onnxruntime as ort

    from stpcli.spiking.neuron import LIF

    graph = onnx.load_from_string(blob)
    steps = [node.output[0] for node in graph.graph.node if node.op_type == "Clip"]
    graph.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in steps)
    session = ort.InferenceSession(graph.SerializeToString(), sessions, providers=["CPUExecutionProvider"])
    theirs = session.run(steps, {"image": images})
    ours: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, a, out: ours.append(out[0] != 0)) for m in snn.modules()
             if isinstance(m, LIF)]
    with torch.no_grad():
        snn(torch.from_numpy(images))
    for hook in hooks:
        hook.remove()
    same = sum(int((a.numpy().reshape(b.shape) == (b != 0)).sum()) for a, b in zip(ours, theirs, strict=True))
    total = sum(b.size for b in theirs)
    return {"spikes_compared": total, "spikes_different": total - same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", action="append", help="ANN:SNN checkpoints (repeatable)")
    parser.add_argument("--rounds", type=int, default=11, help="side-by-side rounds; the median is kept")
    parser.add_argument("--repeats", type=int, default=10, help="calls per timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    if options.pair:
        pairs = [tuple(Path(p) for p in pair.split(":")) for pair in options.pair]
    else:
        if not DEMO[1].exists():
            raise SystemExit(f"{DEMO[1]} does not exist: run `make demo` first, or pass --pair ANN:SNN")
        make_wide_pair()
        pairs = [DEMO, WIDE]
    torch.set_num_threads(options.threads)

    import onnxruntime as ort

    from stpcli.checkpoint import load_checkpoint
    from stpcli.engine.runtime import setup_runtime
    from stpcli.run import Run

    run = Run("benchmark", setup_runtime("cpu"))
    sessions = ort.SessionOptions()
    sessions.intra_op_num_threads = options.threads
    sessions.inter_op_num_threads = 1
    # no spinning between calls: a session's idle threads would otherwise take the cores from the next
    # model timed (7 models share 2 cores here), which made the readings swing by 30 %
    sessions.add_session_config_entry("session.intra_op.allow_spinning", "0")
    report, ratios = [], {}
    for ann_path, snn_path in pairs:
        record = load_checkpoint(ann_path).record
        name = f"{record['model']['arch']} x{record['model']['width']:g} {record['input']['image_size']} px"
        entries, checks = models_of(ann_path, snn_path, run, sessions)
        entries.sort(key=lambda e: e["runtime"])  # each runtime's ANN and SNN timed back to back
        throughput = {i: [] for i in range(len(entries))}
        latency = {i: [] for i in range(len(entries))}
        for round_ in range(options.rounds):  # every model once per round, so slow phases of the machine hit all
            for i, entry in (reversed(list(enumerate(entries))) if round_ % 2 else enumerate(entries)):
                images = entry["images"]
                batch = np.concatenate([images] * (64 // len(images) + 1))[:64]
                throughput[i].append(64 / seconds_per_call(lambda e=entry, b=batch: e["call"](b), options.repeats))
                latency[i].append(seconds_per_call(lambda e=entry, x=images[:1]: e["call"](x), options.repeats))
        rows = []
        for i, entry in enumerate(entries):
            rows.append({"pair": name, "model": entry["model"], "runtime": entry["runtime"], "bytes": entry["bytes"],
                         "images_per_s": statistics.median(throughput[i]), "rounds": [round(v) for v in throughput[i]],
                         "latency_ms": 1e3 * statistics.median(latency[i]), "test_accuracy": entry["test_accuracy"]})
        index = {(e["model"].split()[0], e["runtime"]): i for i, e in enumerate(entries)}
        key = name.replace(" ", "_").replace(".", "")
        for ratio, snn, ann in (("pytorch", "PyTorch fp32", "PyTorch fp32"),
                                ("bn_folded_pytorch", "PyTorch fp32", "PyTorch fp32, BN folded"),
                                ("onnxruntime_fp32", "onnxruntime fp32", "onnxruntime fp32"),
                                ("onnxruntime_int8", "onnxruntime int8", "onnxruntime int8")):
            # the median of the rounds' own ratios: both sides of each were measured back to back
            per_round = [a / b for a, b in zip(throughput[index[("SNN", snn)]], throughput[index[("ANN", ann)]])]
            ratios[f"{key}:snn_t1_vs_ann_{ratio}"] = statistics.median(per_round)
        report.append({"pair": name, "ann": str(ann_path), "snn": str(snn_path), "rows": rows, "onnx_checks": checks})
        print(f"\n{name}: CPU inference, {options.threads} thread(s); throughput batch 64 and latency batch 1, "
              f"median of {options.rounds} side-by-side rounds")
        print(f"{'model':<10} {'runtime':<24} {'size MB':>8} {'images/s':>9} {'latency ms':>11} {'test acc %':>10}")
        for row in rows:
            print(f"{row['model']:<10} {row['runtime']:<24} {row['bytes'] / 1e6:>8.2f} {row['images_per_s']:>9.0f} "
                  f"{row['latency_ms']:>11.3f} {row['test_accuracy']:>10.2f}")
        for runtime, check in checks.items():
            spikes = (f", {check['spikes_different']} of {check['spikes_compared']:,} spikes differ"
                      if "spikes_compared" in check else "")
            print(f"SNN {runtime} against stp on the test split: argmax {100 * check['argmax_agreement']:.2f} %, "
                  f"max |logit difference| {check['max_abs_logit_difference']:.2e}{spikes}")
    finish(options, ratios, {"pairs": report})


def finish(options, ratios: dict[str, float], results: dict) -> None:
    """The ``ratios:`` line, and with --json the settings, ``results`` and the ratios as JSON."""
    import onnxruntime as ort

    print("ratios: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    if options.json:
        settings = {"device": "cpu", "threads": options.threads, "rounds": options.rounds, "repeats": options.repeats,
                    "torch": torch.__version__, "onnxruntime": ort.__version__}
        options.json.write_text(json.dumps({"settings": settings, **results, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
