"""Process-wide signal state, on the ground floor so that every layer can read it: the SIGTERM and
SIGINT that the entry point caught before the command's modules were loaded, and the variable
through which ``stp pipeline`` and ``stp study`` tell a stage its driver's pid (``entry.py``)."""

from __future__ import annotations

PENDING_SIGNALS: list[int] = []  # SIGTERM/SIGINT received and not yet acted on
PARENT_VARIABLE = "STP_PARENT_PID"
