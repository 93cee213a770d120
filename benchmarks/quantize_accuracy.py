"""Test accuracy of one-time-step SNNs as integers: float, then stp quantize at 8, 4 and 2 bits
(8-bit first layer), each from the same float checkpoint, over several seeds' checkpoints.

    python benchmarks/quantize_accuracy.py runs/recipes-demo/seed*/as5-m1/stp/sa_t1.safetensors \\
        --epochs 4 --json benchmarks/results/cpu-quantize-demo.json

Prints a table (mean +- std over the checkpoints, and the paired difference to float) and writes
every run; each quantize runs as the stp command, in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="float SNNs at T = 1 (one per seed)")
    parser.add_argument("--bits", default="8,4,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", help="the data, where the checkpoints' recorded path no longer holds it")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    from stpcli.checkpoint import read_checkpoint

    runs = []
    with tempfile.TemporaryDirectory(prefix="stp-quantize-") as folder:
        for index, source in enumerate(options.checkpoints):
            record = read_checkpoint(source).record
            row = {"checkpoint": str(source), "float": record["metrics"]["test_accuracy"],
                   "seed": record["split"].get("seed")}
            for bits in map(int, options.bits.split(",")):
                out = Path(folder) / f"{index}_w{bits}.safetensors"
                command = [sys.executable, "-m", "stpcli", "quantize", str(source), "--weight-bits", str(bits),
                           "--epochs", str(options.epochs), "--lr", str(options.lr), "--batch-size",
                           str(options.batch_size), "--out", str(out)] + (["--data", options.data] if options.data else [])
                subprocess.run(command, check=True, capture_output=True, text=True)
                metrics = read_checkpoint(out).record["metrics"]
                row[f"w{bits}"] = metrics["test_accuracy"]
                row[f"w{bits}_before_training"] = metrics["test_accuracy_before_training"]
                print(f"{source}: {bits}-bit {row[f'w{bits}']:.2f}% (float {row['float']:.2f}%)", file=sys.stderr, flush=True)
            runs.append(row)
    columns = ["float"] + [f"w{b}" for b in options.bits.split(",")]
    summary = {}
    print(f"\n{len(runs)} checkpoints, quantize --epochs {options.epochs} --lr {options.lr}")
    print(f"{'weights':<8} {'mean %':>8} {'std':>6} {'vs float (paired)':>18}")
    for column in columns:
        values = [r[column] for r in runs]
        gaps = [r[column] - r["float"] for r in runs]
        summary[column] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                           "n": len(values), "minus_float_mean": statistics.mean(gaps)}
        std = summary[column]["std"]
        print(f"{column:<8} {summary[column]['mean']:>8.2f} {'-' if std is None else f'{std:.2f}':>6} "
              f"{summary[column]['minus_float_mean']:>+18.2f}")
    if options.json:
        options.json.write_text(json.dumps({"settings": vars(options) | {"checkpoints": [str(c) for c in options.checkpoints],
                                                                          "json": str(options.json)},
                                            "summary": summary, "runs": runs}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
