"""Progress bars for long loops (decoding, packing, predicting): shown on a terminal, silent in logs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(console: Console, label: str, total: int | None = None,
                 show: bool = True) -> Iterator[Callable[..., None]]:
    """Yields ``advance(count, total=None)``; a transient bar only when ``show`` and on a terminal."""
    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                  console=console, transient=True, disable=not (show and console.is_terminal)) as progress:
        task = progress.add_task(label, total=total)

        def advance(count: int, total: int | None = None) -> None:
            if total is not None:
                progress.update(task, total=total)
            progress.advance(task, count)

        yield advance
