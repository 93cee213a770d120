"""The one exception type that reaches the user as a one-line message."""


class StpError(Exception):
    """A problem the user can fix (bad input, wrong checkpoint, missing file).

    The CLI prints ``error: <message>`` and exits with ``exit_code``; it never
    shows a traceback for these unless ``--debug`` is given.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Interrupted(StpError):
    """Training stopped by SIGINT/SIGTERM at a safe point; the state file is kept."""

    exit_code = 130
