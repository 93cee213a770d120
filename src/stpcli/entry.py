"""The ``stp`` executable's entry point.

SIGTERM is caught from the first instant, before the heavy imports, so that a
run stopped while it starts exits with a message (status 130) instead of dying
silently with 143; the command wrapper reports it once the CLI is loaded.
"""

from __future__ import annotations

import signal

EARLY_SIGNALS: list[int] = []


def _remember(signum, frame):
    EARLY_SIGNALS.append(signum)


def main() -> None:
    try:
        signal.signal(signal.SIGTERM, _remember)
    except ValueError:  # not the main thread
        pass
    from stpcli.cli.terminal import guard_standard_streams

    guard_standard_streams()
    from stpcli.cli import main as cli_main

    cli_main()
