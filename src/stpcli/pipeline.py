"""Running the chain's steps: each one the ``stp`` command its Makefile rule runs, in a child process.

A step is a command, as in ``examples/Makefile``: every stage keeps its own
process, its own one-line errors and its own checkpoint, and the driver only
decides which steps to run. ``run_pipeline`` runs both chains of a preset in
one folder (``stp pipeline``); ``stpcli.study`` runs them per seed, side by
side. An interrupted driver stops its child with SIGTERM, so the stage keeps
its training state for the next run.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from stpcli.chain import Step, compared, pipeline_steps
from stpcli.engine.state import state_path_for
from stpcli.errors import StpError
from stpcli.files import create_out_dir

STOP_GRACE_SECONDS = 120  # a stopped stage finishes its step and writes its state; then it is killed


def step_command(step: Step, folder: Path, preset: Path, *, seed: int | None = None, data: str | None = None,
                 device: str | None = None, redo: bool = False) -> list[str]:
    """The command line of one step, with the preset's options; ``redo`` rebuilds an existing output,
    otherwise an interrupted stage is resumed (and temporal pruning reuses the T files it finished)."""
    args = [sys.executable, "-m", "stpcli", step.command]
    if step.source is not None:
        args.append(str(folder / f"{step.source}.safetensors"))
    args += ["--config", str(preset), "--out", str(folder / f"{step.target}.safetensors")]
    if seed is not None:
        args += ["--seed", str(seed)]
    args += step.args
    if step.command == "train-ann" and data is not None:
        args += ["--data", data]
    if device is not None:
        args += ["--device", device]
    if redo:
        return args + ["--force"]
    files = [folder / f"{name}.safetensors" for name in step.outputs]
    if any(path.exists() for path in files):  # temporal pruning with a T file missing: --resume reuses
        args.append("--force")                # the Ts that still descend from their parent
    if step.command == "temporal-prune" or any(state_path_for(path).exists() for path in files):
        args.append("--resume")
    return args


def run_child(args: Sequence[str], *, output: IO | None = None, env: dict | None = None,
              stop_requested: Callable[[], bool] = lambda: False) -> int:
    """Run one step's command to its end and return its exit status. When ``stop_requested()``
    turns true, or this process is interrupted, the child gets SIGTERM and a grace period."""
    child = subprocess.Popen(list(args), stdout=output, stderr=subprocess.STDOUT if output else None, env=env)
    try:
        while child.poll() is None:
            if stop_requested():
                _stop(child)
            time.sleep(0.2)
    except BaseException:
        _stop(child)
        raise
    return child.returncode


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def run_pipeline(preset: dict, preset_path: Path, out_dir: Path, *, data: str | None = None,
                 device: str | None = None, seed: int | None = None, force: bool = False,
                 say: Callable[[str], None] = print) -> list[Path]:
    """Na, the STP chain and the TP baseline of ``preset`` in ``out_dir``; returns the files a
    comparison shows (``stpcli.report.compare``).

    As make does: a step whose file exists is skipped unless its input was rebuilt in this run
    (``force``: every step is rebuilt). ``out_dir`` is created once the preset's chain is known.
    """
    steps = pipeline_steps(preset)
    create_out_dir(out_dir)
    rebuilt: set[str] = set()
    for step in steps:
        redo = force or step.source in rebuilt
        if all((out_dir / f"{name}.safetensors").exists() for name in step.outputs) and not redo:
            say(f"[pipeline] {out_dir / step.target}.safetensors exists; skipping {step.command}")
            continue
        args = step_command(step, out_dir, preset_path, seed=seed, data=data, device=device, redo=redo)
        say(f"[pipeline] stp {shlex.join(args[3:])}")
        try:
            code = run_child(args)
        except KeyboardInterrupt:
            raise StpError(f"pipeline interrupted during {step.command}: finished stages are kept and the "
                           "interrupted one keeps its training state; rerun the same command to continue",
                           exit_code=130) from None
        if code:
            raise StpError(f"pipeline stopped: stp {step.command} exited with status {code}", exit_code=code)
        rebuilt.update(step.outputs)
    return [out_dir / f"{name}.safetensors" for name in compared(preset)]
