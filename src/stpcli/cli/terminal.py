"""What stp prints, and where: standard output that fails in one line, text any terminal can show.

* ``guard_standard_streams`` wraps stdout so that a write that fails (``> /dev/full``, a full
  disk under a redirect, a closed pipe) becomes one ``OutputError`` naming standard output,
  instead of ``unexpected OSError`` or Python's "Exception ignored" at exit; the bytes still
  buffered are dropped, not written again at exit.
* Streams whose encoding cannot show a character (``PYTHONIOENCODING=ascii``, an old terminal)
  degrade it to ASCII (``ê`` -> ``e``, ``…`` -> ``...``, else ``\\u2026``) instead of failing.
* ``shown`` makes a user-controlled string (a class name, a path) safe to print: control
  characters, ANSI escapes and newlines become visible escapes, never terminal commands.
"""

from __future__ import annotations

import codecs
import errno
import os
import sys
import unicodedata

from rich.markup import escape

from stpcli.errors import StpError

ASCII_FALLBACK = "stp-ascii"
_REPLACEMENTS = {"…": "...", "±": "+-", "−": "-", "–": "-", "—": "-", "×": "x", "µ": "u", "λ": "lambda",
                 "≤": "<=", "≥": ">=", "→": "->", "←": "<-", "·": "*", "°": " deg", "’": "'", "“": '"', "”": '"'}


class OutputError(StpError):
    """Standard output could not be written (full device, closed pipe)."""

    exit_code = 1


def _ascii_fallback(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    out = []
    for char in text:
        if char in _REPLACEMENTS:
            out.append(_REPLACEMENTS[char])
            continue
        plain = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        out.append(plain if plain.isascii() and plain else char.encode("ascii", "backslashreplace").decode())
    return "".join(out), error.end


codecs.register_error(ASCII_FALLBACK, _ascii_fallback)


def shown(text: object) -> str:
    """``text`` with every control character (C0, DEL, C1; ESC and newlines included) written as a
    visible escape such as ``\\x1b`` or ``\\n``."""
    return "".join(char if unicodedata.category(char) != "Cc" else char.encode("unicode_escape").decode()
                   for char in str(text))


def safe(text: object) -> str:
    """``shown(text)`` with Rich markup escaped: a user-controlled string inside a Rich table or line."""
    return escape(shown(text))


class _GuardedStream:
    """A text stream whose failed writes raise ``OutputError`` once, then swallow what follows."""

    def __init__(self, stream, name: str):
        self._stream, self._name, self._failed = stream, name, False

    def _fail(self, exc: OSError):
        if self._failed:
            return None
        self._failed = True
        try:  # what is still buffered goes nowhere, so Python's flush at exit cannot fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        if exc.errno == errno.EPIPE:  # the reader went away (| head): nothing to say, as other tools do
            raise OutputError("", exit_code=1) from None
        raise OutputError(f"cannot write to {self._name}: {exc.strerror or exc}") from None

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")  # a text stream, as Click probes
        if not text:  # Click probes a stream with empty writes; a full device must fail real output only
            return 0
        if self._failed:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._fail(exc)
            return len(text)

    def flush(self) -> None:
        if self._failed:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            self._fail(exc)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _degrade_encoding(stream):
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    if encoding in ("utf8", "utf8sig") or not hasattr(stream, "reconfigure"):
        return
    try:
        stream.reconfigure(errors=ASCII_FALLBACK)
    except (ValueError, OSError):
        pass


def guard_standard_streams() -> None:
    """For the ``stp`` executable (tests drive the CLI through Click's own streams instead)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            _degrade_encoding(stream)
    if sys.stdout is not None and not isinstance(sys.stdout, _GuardedStream):
        sys.stdout = _GuardedStream(sys.stdout, "standard output")


def flush_standard_output() -> None:
    """Flush inside the command, so that a failure at the end is reported like one in the middle."""
    if sys.stdout is not None:
        sys.stdout.flush()
