"""The chip-ready integer network in onnxruntime against the float one-time-step SNN it came from.

For each float SNN at T = 1: its fp32 ONNX (the one-step form), onnxruntime's int8 QDQ quantization
of it (``stp export --quantize int8``), and stp's integer graphs (``stp quantize``, then ``stp export
--format onnx``: ConvInteger/MatMulInteger with int32 accumulators and thresholds) at 8 and 4-bit
weights; batch-64 throughput and batch-1 latency, each the median of --rounds rounds that alternate
the models side by side, and each model's test accuracy. The integer graphs are also checked
against ``stp evaluate`` of their checkpoint (argmax on the whole test split).

    make demo
    python benchmarks/integer_inference.py --json benchmarks/results/cpu-integer-inference.json

Without --snn: the demo's sa_t1 and the VGG11 x0.5 64 px T = 1 SNN of benchmarks/inference.py.
The quantized checkpoints are made with --epochs 0 in benchmarks/out/integer/ when missing (speed
does not depend on fine-tuning; their accuracies here are therefore the untuned ones).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from inference import DEMO, WIDE, finish, make_wide_pair, seconds_per_call

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/out/integer"


def quantized(snn: Path, bits: int) -> Path:
    out = OUT / f"{snn.parent.name}_{snn.stem}_w{bits}.safetensors"
    if not out.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "stpcli", "quantize", str(snn), "--weight-bits", str(bits), "--epochs", "0",
                        "--device", "cpu", "--out", str(out)], check=True)
    return out


def models_of(snn_path: Path, run, sessions) -> list[dict]:
    import onnxruntime as ort

    from stpcli.checkpoint import load_checkpoint
    from stpcli.export.onnx_model import CALIBRATION_IMAGES, normalised, onnx_bytes, quantize_int8
    from stpcli.options import DataOptions
    from stpcli.report import evaluate
    from stpcli.restore import model_from_checkpoint
    from stpcli.run import load_checkpoint_data

    snn = load_checkpoint(snn_path)
    parts = load_checkpoint_data(run, snn, DataOptions())
    train, _ = parts.part("train")
    test, labels = parts.part("test")
    truth = labels.numpy()
    entries = []

    def add(name: str, blob: bytes, images: np.ndarray, reference: np.ndarray | None = None) -> None:
        session = ort.InferenceSession(blob, sessions, providers=["CPUExecutionProvider"])
        logits = session.run(None, {"image": images})[0]
        entry = {"model": name, "bytes": len(blob), "images": images,
                 "call": lambda x, s=session: s.run(None, {"image": x})[0],
                 "test_accuracy": 100 * float((logits.argmax(1) == truth).mean())}
        if reference is not None:
            entry["argmax_agreement_with_stp"] = float((logits.argmax(1) == reference).mean())
        entries.append(entry)

    fp32 = onnx_bytes(snn)
    float_images = normalised(snn, test)
    add("float SNN, fp32", fp32, float_images)
    add("float SNN, int8 QDQ", quantize_int8(fp32, snn, normalised(snn, train[:CALIBRATION_IMAGES])), float_images)
    for bits in (8, 4):
        ckpt = load_checkpoint(quantized(snn_path, bits))
        with torch.no_grad():
            ours = model_from_checkpoint(ckpt).eval()(torch.from_numpy(normalised(ckpt, test))).numpy().argmax(1)
        add(f"integer, {bits}-bit weights", onnx_bytes(ckpt), normalised(ckpt, test), reference=ours)
        assert abs(entries[-1]["test_accuracy"] - evaluate(run, ckpt, DataOptions(), parts=parts)["overall_accuracy"]) < 1e-9
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snn", action="append", type=Path, help="a float SNN at T = 1 (repeatable)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    if not options.snn:
        if not DEMO[1].exists():
            raise SystemExit(f"{DEMO[1]} does not exist: run `make demo` first, or pass --snn")
        make_wide_pair()
        options.snn = [DEMO[1], WIDE[1]]
    torch.set_num_threads(options.threads)

    import onnxruntime as ort

    from stpcli.checkpoint import load_checkpoint
    from stpcli.engine.runtime import setup_runtime
    from stpcli.run import Run

    run = Run("benchmark", setup_runtime("cpu"))
    sessions = ort.SessionOptions()
    sessions.intra_op_num_threads = options.threads
    sessions.inter_op_num_threads = 1
    sessions.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see inference.py
    report, ratios = [], {}
    for snn_path in options.snn:
        record = load_checkpoint(snn_path).record
        name = f"{record['model']['arch']} x{record['model']['width']:g} {record['input']['image_size']} px"
        entries = models_of(snn_path, run, sessions)
        throughput: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        latency: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        for round_ in range(options.rounds):
            for i, entry in (reversed(list(enumerate(entries))) if round_ % 2 else enumerate(entries)):
                images = entry["images"]
                batch = np.concatenate([images] * (64 // len(images) + 1))[:64]
                throughput[i].append(64 / seconds_per_call(lambda e=entry, b=batch: e["call"](b), options.repeats))
                latency[i].append(seconds_per_call(lambda e=entry, x=images[:1]: e["call"](x), options.repeats))
        rows = [{"snn": name, "model": e["model"], "bytes": e["bytes"], "images_per_s": statistics.median(throughput[i]),
                 "rounds": [round(v) for v in throughput[i]], "latency_ms": 1e3 * statistics.median(latency[i]),
                 "test_accuracy": e["test_accuracy"],
                 **({"argmax_agreement_with_stp": e["argmax_agreement_with_stp"]}
                    if "argmax_agreement_with_stp" in e else {})} for i, e in enumerate(entries)]
        key = name.replace(" ", "_").replace(".", "")
        for i, entry in enumerate(entries[1:], start=1):
            per_round = [a / b for a, b in zip(throughput[i], throughput[0])]
            ratios[f"{key}:{entry['model'].split(',')[0].replace(' ', '_')}_{entry['model'].split(', ')[1].replace(' ', '_')}"
                   "_vs_fp32"] = statistics.median(per_round)
        report.append({"snn": str(snn_path), "name": name, "rows": rows})
        print(f"\n{name}: onnxruntime on the CPU, {options.threads} thread(s); batch 64 and batch 1, median of "
              f"{options.rounds} side-by-side rounds")
        print(f"{'model':<28} {'size MB':>8} {'images/s':>9} {'latency ms':>11} {'test acc %':>10} {'= stp':>7}")
        for row in rows:
            same = f"{100 * row['argmax_agreement_with_stp']:.1f}%" if "argmax_agreement_with_stp" in row else "-"
            print(f"{row['model']:<28} {row['bytes'] / 1e6:>8.2f} {row['images_per_s']:>9.0f} {row['latency_ms']:>11.3f} "
                  f"{row['test_accuracy']:>10.2f} {same:>7}")
    finish(options, ratios, {"snns": report})


if __name__ == "__main__":
    main()
