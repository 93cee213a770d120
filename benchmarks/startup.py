"""How fast the CLI answers: wall time of ``stp --help``, ``--version``, ``schema`` and ``info CKPT``.

Each command runs in a fresh process (as a user or a shell completion runs it), five times; the
table shows the median and the range, and which heavy modules the process imported.

    python benchmarks/startup.py                       # makes a tiny checkpoint for info
    python benchmarks/startup.py --checkpoint sa_t1.safetensors --json benchmarks/results/cpu-startup.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = ("import sys, runpy; sys.argv = ['stp', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('stpcli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print(','.join(m for m in ('torch', 'matplotlib', 'numpy', 'pydantic') if m in sys.modules), file=sys.stderr)")


def timed(args: list[str], repeats: int) -> dict:
    seconds, heavy = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        heavy = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    return {"command": "stp " + " ".join(args), "median_s": statistics.median(seconds), "min_s": min(seconds),
            "max_s": max(seconds), "imports": heavy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="Checkpoint for `stp info` (default: a tiny one made here).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON.")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = options.checkpoint
        if checkpoint is None:
            checkpoint = Path(folder) / "na.safetensors"
            subprocess.run([sys.executable, "-m", "stpcli", "train-ann", "--width", "0.125", "--image-size", "32",
                            "--epochs", "1", "--device", "cpu", "--out", str(checkpoint)], check=True,
                           capture_output=True)
        rows = [timed(args, options.repeats) for args in (["--help"], ["--version"], ["schema"], ["info", str(checkpoint)])]
    print(f"{'command':<48} {'median s':>9} {'min':>6} {'max':>6}  heavy modules imported")
    for row in rows:
        command = row["command"] if len(row["command"]) < 48 else row["command"][:45] + "..."
        print(f"{command:<48} {row['median_s']:>9.2f} {row['min_s']:>6.2f} {row['max_s']:>6.2f}  {row['imports'] or '-'}")
    if options.json:
        options.json.write_text(json.dumps({"repeats": options.repeats, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
