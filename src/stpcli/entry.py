"""The ``stp`` executable's entry point.

SIGTERM and SIGINT are caught from the first instant, before the heavy imports, so that a run
stopped while it starts exits with a message (status 130) instead of dying silently; the
command wrapper reports them once the CLI is loaded. Every such signal is also kept in
``PENDING_SIGNALS``: one that arrives while a module is being imported can be swallowed on its
way up, and a training loop that starts later still sees it and stops at its first step. A signal that arrives after the command
has finished is ignored: the command's own exit status and message stand.

A stage started by ``stp pipeline`` or ``stp study`` is told its driver's pid
(``STP_PARENT_PID``); if the driver dies (even by ``kill -9``), the stage sends itself SIGTERM,
so it stops at a safe point and keeps its training state instead of running on as an orphan.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from stpcli.signals import PARENT_VARIABLE, PENDING_SIGNALS


def _remember(signum, frame):
    PENDING_SIGNALS.append(signum)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # a background job's ignored SIGINT stays ignored
                signal.signal(sig, _remember)
        except ValueError:  # not the main thread
            pass
    parent = os.environ.pop(PARENT_VARIABLE, "")
    if parent.isascii() and parent.isdigit():
        threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True, name="stp-parent-watch").start()
    from stpcli.cli.terminal import guard_standard_streams

    guard_standard_streams()
    from stpcli.cli import main as cli_main

    try:
        cli_main()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except ValueError:
                pass
