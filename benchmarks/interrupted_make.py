"""Ctrl-C under make, during every training stage: does rerunning make resume each one and end
with the checkpoints of an uninterrupted run? (issue 34's target)

Runs ``make -C examples compare`` and, each time a stage's training-state file shows a finished
epoch for a stage not interrupted yet, sends SIGINT to make's process group (what Ctrl-C in a
terminal does), then reruns make, until make completes. Every checkpoint is then compared tensor by
tensor with an uninterrupted run's (``--reference``, a folder from ``make -C examples compare``
with the same preset).

    python benchmarks/interrupted_make.py --reference examples/out/demo --out /tmp/interrupted \\
        --json benchmarks/results/cpu-interrupted-make.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from stpcli.checkpoint import load_checkpoint
from stpcli.engine.state import read_state_record

ROOT = Path(__file__).resolve().parent.parent


def finished_epoch(state: Path) -> int:
    try:
        return int(read_state_record(state)["epoch"])
    except Exception:  # written as we read it, or not yet: look again
        return 0


def run_make(out: Path, preset: str, stp: str, log, interrupted: dict[str, int]) -> int:
    """One make run; returns its exit status, having interrupted it at the first stage whose state
    shows a finished epoch and that was not interrupted before."""
    make = subprocess.Popen(["make", "-C", str(ROOT / "examples"), "compare", f"OUT={out}", f"PRESET={preset}",
                             f"STP={stp}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while make.poll() is None:
        for state in sorted(out.glob("*.state.safetensors")):
            name = state.name.removesuffix(".state.safetensors")
            epoch = finished_epoch(state)
            if name not in interrupted and epoch >= 1:
                interrupted[name] = epoch
                os.killpg(make.pid, signal.SIGINT)
                make.wait()
                return make.returncode
        time.sleep(0.1)
    return make.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="an uninterrupted run's folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/stp-interrupted-make"))
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--stp", default=shutil.which("stp") or "stp")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    interrupted: dict[str, int] = {}
    runs = 0
    started = time.time()
    with open(out / "make.log", "ab") as log:
        while True:
            runs += 1
            code = run_make(out, args.preset, args.stp, log, interrupted)
            if code == 0:
                break
            if runs > 40:
                sys.exit(f"make kept failing (exit {code}); see {out / 'make.log'}")
    text = (out / "make.log").read_text(errors="replace")
    resumed = {Path(m.group(1)).name.removesuffix(".state.safetensors"): int(m.group(2))
               for m in re.finditer(r"resuming from (\S+) after epoch (\d+)", text)}
    restarted = re.findall(r"\[(\S+)\] .*starting over", text)
    rows = []
    for reference in sorted(args.reference.glob("*.safetensors")):
        ours = out / reference.name
        a, b = load_checkpoint(reference), load_checkpoint(ours)
        same = set(a.tensors) == set(b.tensors) and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
        name = reference.name.removesuffix(".safetensors")
        rows.append({"checkpoint": reference.name, "interrupted_after_epoch": interrupted.get(name),
                     "resumed_after_epoch": resumed.get(name), "tensors_identical": same,
                     "test_accuracy": b.history[-1]["metrics"]["test_accuracy"],
                     "reference_test_accuracy": a.history[-1]["metrics"]["test_accuracy"]})
    print(f"{'checkpoint':20} {'interrupted':>11} {'resumed':>8} {'identical':>9} {'test %':>7} {'ref %':>7}")
    for row in rows:
        print(f"{row['checkpoint']:20} {row['interrupted_after_epoch'] or '-':>11} {row['resumed_after_epoch'] or '-':>8} "
              f"{str(row['tensors_identical']):>9} {row['test_accuracy']:7.2f} {row['reference_test_accuracy']:7.2f}")
    interrupted_rows = [r for r in rows if r["interrupted_after_epoch"]]
    print(f"ratios: make runs {runs}, stages interrupted {len(interrupted_rows)}, resumed "
          f"{sum(r['resumed_after_epoch'] == r['interrupted_after_epoch'] for r in interrupted_rows)}, "
          f"identical {sum(r['tensors_identical'] for r in rows)}/{len(rows)}, restarted {len(restarted)}")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "make_runs": runs, "seconds": round(time.time() - started),
                                         "restarted": restarted, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
