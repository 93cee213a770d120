"""Inference on the CPU: stp's ANN and one-time-step SNN in PyTorch and in onnxruntime (fp32, int8).

Batch-1 latency (median of --repeats single-image calls, after warm-up) and batch-64 throughput
(images per second, median of --repeats batches), the model's size, and its test accuracy and
energy-model estimate (45 nm, per image) from stp's own evaluation, side by side in one run.

    make demo    # writes examples/out/demo/na.safetensors and sa_t1.safetensors
    python benchmarks/inference.py --json benchmarks/results/cpu-inference.json
    python benchmarks/inference.py --ann runs/na.safetensors --snn runs/sa_t1.safetensors --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(call, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ann", type=Path, default=ROOT / "examples/out/demo/na.safetensors")
    parser.add_argument("--snn", type=Path, default=ROOT / "examples/out/demo/sa_t1.safetensors")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    for path in (options.ann, options.snn):
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: run `make demo` first, or pass --ann/--snn")
    torch.set_num_threads(options.threads)

    import onnxruntime as ort

    from stpcli.checkpoint import load_checkpoint
    from stpcli.engine.runtime import setup_runtime
    from stpcli.export.onnx_model import CALIBRATION_IMAGES, normalised, onnx_accuracy, onnx_bytes, quantize_int8
    from stpcli.report import evaluate
    from stpcli.restore import model_from_checkpoint
    from stpcli.run import DataOptions, Run, load_checkpoint_data

    run = Run("benchmark", setup_runtime("cpu"))
    sessions = ort.SessionOptions()
    sessions.intra_op_num_threads = options.threads
    rows = []
    for path in (options.ann, options.snn):
        ckpt = load_checkpoint(path)
        parts = load_checkpoint_data(run, ckpt, DataOptions())
        train, _ = parts.part("train")
        test, labels = parts.part("test")
        images, truth = normalised(ckpt, test), labels.numpy()
        one, batch = images[:1], np.concatenate([images] * (64 // len(images) + 1))[:64]
        report = evaluate(run, ckpt, DataOptions(), parts=parts)
        energy = report["energy"]["energy_pj"] / 1e6
        label = "ANN" if ckpt.kind == "ann" else f"SNN T={ckpt.timesteps}"
        model = model_from_checkpoint(ckpt).eval()
        with torch.no_grad():
            x1, x64 = torch.from_numpy(one), torch.from_numpy(batch)
            latency = median_seconds(lambda m=model, x=x1: m(x), options.repeats)
            per_batch = median_seconds(lambda m=model, x=x64: m(x), max(5, options.repeats // 3))
        rows.append({"model": label, "runtime": "PyTorch fp32", "checkpoint": str(path),
                     "bytes": path.stat().st_size, "latency_ms": 1e3 * latency, "images_per_s": 64 / per_batch,
                     "test_accuracy": report["overall_accuracy"], "energy_uj": energy})
        fp32 = onnx_bytes(ckpt)
        int8 = quantize_int8(fp32, ckpt, normalised(ckpt, train[:CALIBRATION_IMAGES]))
        for name, blob in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
            session = ort.InferenceSession(blob, sessions, providers=["CPUExecutionProvider"])
            latency = median_seconds(lambda s=session, x=one: s.run(None, {"image": x}), options.repeats)
            per_batch = median_seconds(lambda s=session, x=batch: s.run(None, {"image": x}), max(5, options.repeats // 3))
            rows.append({"model": label, "runtime": name, "checkpoint": str(path), "bytes": len(blob),
                         "latency_ms": 1e3 * latency, "images_per_s": 64 / per_batch,
                         "test_accuracy": onnx_accuracy(blob, images, truth), "energy_uj": energy})
    size = load_checkpoint(options.ann).record["input"]["image_size"]
    print(f"CPU inference, {size} px, {options.threads} thread(s); latency: batch 1, median of {options.repeats}; "
          "throughput: batch 64")
    print(f"{'model':<10} {'runtime':<18} {'size MB':>8} {'latency ms':>11} {'images/s':>9} {'test acc %':>10} "
          f"{'energy uJ (model)':>17}")
    for row in rows:
        print(f"{row['model']:<10} {row['runtime']:<18} {row['bytes'] / 1e6:>8.2f} {row['latency_ms']:>11.2f} "
              f"{row['images_per_s']:>9.0f} {row['test_accuracy']:>10.2f} {row['energy_uj']:>17.2f}")
    if options.json:
        settings = {"device": "cpu", "threads": options.threads, "image_size": size, "repeats": options.repeats,
                    "torch": torch.__version__, "onnxruntime": ort.__version__}
        options.json.write_text(json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
