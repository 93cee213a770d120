"""Process-wide signal state, on the ground floor so that every layer can read it: the SIGTERM and
SIGINT that the entry point caught before the command's modules were loaded, and the variable
through which ``stp pipeline`` and ``stp study`` tell a stage its driver's pid (``entry.py``)."""

from __future__ import annotations

PENDING_SIGNALS: list[int] = []  # SIGTERM/SIGINT received and not yet acted on
PARENT_VARIABLE = "STP_PARENT_PID"


def stop_if_signalled() -> None:
    """Act on a SIGINT/SIGTERM that arrived while a module was being imported (kept, not raised, so
    as not to leave the module half made): stop now, before any further work starts."""
    if PENDING_SIGNALS:
        raise KeyboardInterrupt
