"""Running the chain's steps: each one the ``stp`` command its Makefile rule runs, in a child process.

A step is a command, as in ``examples/Makefile``: every stage keeps its own
process, its own one-line errors and its own checkpoint, and the driver only
decides which steps to run. ``Runner`` runs chains of steps side by side:
``run_pipeline`` gives it both chains of a preset in one folder (``stp pipeline``);
``stp study`` gives it each seed's chains. An interrupted driver stops its child with SIGTERM, so the stage keeps
its training state for the next run.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stpcli.chain import Chain, Step, compared, pipeline_steps
from stpcli.errors import StpError
from stpcli.files import create_out_dir, lock_holder, lock_output
from stpcli.names import checkpoint_path, log_path, state_path
from stpcli.signals import PARENT_VARIABLE, stop_if_signalled

STOP_GRACE_SECONDS = 120  # a stopped stage finishes its step and writes its state; then it is killed


def step_command(step: Step, folder: Path, preset: Path, *, seed: int | None = None, data: str | None = None,
                 device: str | None = None, redo: bool = False) -> list[str]:
    """The command line of one step, with the preset's options and make's rule (``--if-changed``: an
    output made the same way is kept, a changed one rebuilt, an interrupted one resumed), or with
    ``redo`` every output rebuilt (``--force``)."""
    args = [sys.executable, "-m", "stpcli", step.command]
    if step.source is not None:
        args.append(str(checkpoint_path(folder, step.source)))
    args += ["--config", str(preset), "--out", str(checkpoint_path(folder, step.target))]
    if seed is not None:
        args += ["--seed", str(seed)]
    args += step.args
    if step.command == "train-ann" and data is not None:
        args += ["--data", data]
    if device is not None:
        args += ["--device", device]
    return args + ["--force" if redo else "--if-changed"]


def run_child(args: Sequence[str], *, log: Path, echo: Callable[[str], None] | None = None,
              env: dict | None = None, stop_requested: Callable[[], bool] = lambda: False) -> int:
    """Run one step's command to its end and return its exit status.

    The child writes its output to ``log`` (appended), never to a pipe of ours, so it outlives a
    terminal that goes away (Ctrl-C under ``| tee``); ``echo`` is given what it writes, as it
    writes it. The child watches this process (``STP_PARENT_PID``) and stops itself if it dies,
    even by ``kill -9``. When ``stop_requested()`` turns true, or this process is interrupted, the
    child gets SIGTERM and a grace period."""
    stop_if_signalled()  # a stop that arrived while this driver imported its modules: no child starts
    environment = dict(os.environ if env is None else env, **{PARENT_VARIABLE: str(os.getpid())},
                       PYTHONUNBUFFERED="1")  # the log, and the echo, as the stage writes, not 8 kB later
    with open(log, "ab") as handle:
        start = handle.tell()
        child = subprocess.Popen(list(args), stdout=handle, stderr=subprocess.STDOUT, env=environment)
    with open(log, "rb") as reader:
        reader.seek(start)
        forward = _forwarder(reader, echo)
        try:
            while child.poll() is None:
                stop_if_signalled()
                if stop_requested():
                    _stop(child)
                forward()
                time.sleep(0.2)
        except BaseException:
            _stop(child)
            raise
        finally:
            forward(final=True)
    return child.returncode


def last_error(log: Path, tail_bytes: int = 16_384) -> str | None:
    """The one-line reason a stage gave for stopping (its last 'error: ' line), from the end of its log."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    found = next((line for line in reversed(lines) if line.startswith("error: ")), None)
    return found.removeprefix("error: ")[:300] if found else None


def _forwarder(reader, echo: Callable[[str], None] | None):
    """Hands ``echo`` each complete line the child has written so far (the rest on ``final``)."""
    pending = b""

    def forward(final: bool = False) -> None:
        nonlocal pending
        if echo is None:
            return
        *complete, pending = (pending + reader.read()).split(b"\n")
        if final and pending:
            complete, pending = [*complete, pending], b""
        for line in complete:
            echo(line.decode("utf-8", "replace"))

    return forward


def wait_for_earlier_writers(paths: Sequence[Path], say: Callable[[str], None]) -> None:
    """An earlier driver killed with ``kill -9`` leaves its running stage stopping on its own
    (it keeps its state); wait for it rather than fail on its lock."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for path in paths:
        holder = lock_holder(path)
        if holder is not None:
            say(f"waiting for an earlier run's stage (pid {holder}) that is writing {path} to stop")
        while lock_holder(path) is not None and time.monotonic() < deadline:
            time.sleep(0.5)


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


@dataclass(frozen=True)
class Failure:
    chain: Chain
    step: Step
    code: int
    reason: str | None  # the stage's one-line error
    log: Path


class Runner:
    """Runs chains of steps, each step the stage command make's rule gives (``step_command``) in a child
    process (``run_child``), ``jobs`` chains side by side, until a shared deadline. A chain stops at
    its first failed step; the others go on. ``stp pipeline`` runs one chain, ``stp study`` many."""

    def __init__(self, preset_path: Path, out_dir: Path, *, data: str | None = None, device: str | None = None,
                 jobs: int = 1, time_limit: float | None = None, redo: bool = False, driver: str = "study",
                 say: Callable[[str], None] = print, echo: Callable[[str], None] | None = None):
        self.preset_path, self.out_dir, self.data, self.device = preset_path, out_dir, data, device
        self.jobs, self.redo, self.driver, self.say, self.echo = jobs, redo, driver, say, echo
        self.deadline = None if time_limit is None else time.monotonic() + time_limit
        self.stopped = False
        self.finished = 0  # stages this run completed
        self.failures: list[Failure] = []
        self.running: dict[Chain, Step] = {}

    def stop_requested(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = True
        return self.stopped

    def run_all(self, chains: list[Chain]) -> None:
        if self.jobs == 1:  # in this thread, so that Ctrl-C reaches the running step at once
            for chain in chains:
                self.run_chain(chain)
            return
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            try:
                list(pool.map(self.run_chain, chains))
            except BaseException:  # interrupted: every running stage stops and keeps its state
                self.stopped = True
                raise

    def run_chain(self, chain: Chain) -> bool:
        """Whether every step of ``chain`` finished."""
        folder = self.out_dir / chain.folder
        folder.mkdir(parents=True, exist_ok=True)
        return all(not self.stop_requested() and self.run_step(chain, step, folder) for step in chain.steps)

    def run_step(self, chain: Chain, step: Step, folder: Path) -> bool:
        out = checkpoint_path(folder, step.target)
        out.parent.mkdir(parents=True, exist_ok=True)
        args = step_command(step, folder, self.preset_path, seed=chain.seed, data=self.data, device=self.device,
                            redo=self.redo)
        environment = dict(os.environ)
        if self.jobs > 1 and "OMP_NUM_THREADS" not in environment:
            environment["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        log = log_path(out)
        wait_for_earlier_writers([checkpoint_path(folder, name) for name in step.outputs], self.say)
        started = time.monotonic()
        prefix = f"[{self.driver}] " + (f"{chain.name}: " if chain.name else "")
        if self.echo is None:  # side by side: one short line per step
            self.say(f"{prefix}{step.command} -> {out.relative_to(self.out_dir)}")
        else:  # its output follows: the whole command, to rerun by hand
            self.say(f"{prefix}stp {shlex.join(args[3:])}  (log: {log})")
        self.running[chain] = step  # kept when interrupted: the driver names the step
        code = run_child(args, log=log, echo=self.echo, env=environment, stop_requested=self.stop_requested)
        del self.running[chain]
        if code == 0:
            self.finished += 1
            if self.echo is None:
                self.say(f"{prefix}{step.command} done in {time.monotonic() - started:.0f} s")
            return True
        if self.stopped:  # we sent the SIGTERM: the stage kept its state for the next run
            self.say(f"{prefix}{step.command} stopped at the time limit")
            return False
        self.failures.append(Failure(chain, step, code, last_error(log), log))
        if self.echo is None:
            self.say(f"{prefix}{step.command} failed with exit {code}; log: {log}")
        return False


def run_pipeline(preset: dict, preset_path: Path, out_dir: Path, *, data: str | None = None,
                 device: str | None = None, seed: int | None = None, force: bool = False,
                 say: Callable[[str], None] = print, echo: Callable[[str], None] | None = print) -> list[Path]:
    """Na, the STP chain and the TP baseline of ``preset`` in ``out_dir``: one chain of one seed for the
    ``Runner`` a study uses; returns the files a comparison shows (``stpcli.report.compare``).

    Each step runs with make's rule (``step_command``): a stage whose output was made from the same
    input with the same options says so and does nothing; ``force`` rebuilds every step. ``out_dir``
    is created once the preset's chain is known.
    Each step's output goes to ``<out_dir>/<file>.log`` and to ``echo``.
    """
    chain = Chain(seed, "", tuple(pipeline_steps(preset)))
    create_out_dir(out_dir)
    lock_output(out_dir / "pipeline")  # one driver per folder
    runner = Runner(preset_path, out_dir, data=data, device=device, redo=force, driver="pipeline", say=say, echo=echo)
    try:
        runner.run_chain(chain)
    except KeyboardInterrupt:
        step = runner.running.get(chain) or chain.steps[0]
        kept = [state_path(checkpoint_path(out_dir, name)) for name in step.outputs]
        kept = [path for path in kept if path.exists()]
        where = (f"it keeps its training state in {kept[-1]}, so a rerun continues it" if kept
                 else "it had not finished an epoch, so a rerun starts it again")
        raise StpError(f"pipeline interrupted during {step.command}: the finished stages are kept and {where}; "
                       f"rerun the same command to continue (its output: {log_path(checkpoint_path(out_dir, step.target))})",
                       exit_code=130) from None
    if runner.failures:
        failure = runner.failures[0]  # a chain stops at its first failure
        raise StpError(f"pipeline stopped: stp {failure.step.command} exited with status {failure.code}"
                       + (f": {failure.reason}" if failure.reason else "") + f" (its output: {failure.log})",
                       exit_code=failure.code)
    return [checkpoint_path(out_dir, name) for name in compared(preset)]
