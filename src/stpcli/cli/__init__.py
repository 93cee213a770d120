"""The ``stp`` command line: a thin skin over the stages (see stpcli.stages)."""

from __future__ import annotations

from typing import Annotated

import typer

from stpcli import __version__
from stpcli.cli import data, inspect, pipeline, stages, study, use
from stpcli.cli.common import STATE, error_console
from stpcli.cli.terminal import OutputError

app = typer.Typer(
    name="stp",
    help="Spatio-Temporal Pruning: train one-time-step spiking neural networks for remote-sensing scenes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
for group in (stages.app, inspect.app, use.app, pipeline.app, study.app):
    app.registered_commands.extend(group.registered_commands)
app.add_typer(data.app, name="data")


def _version(value: bool):
    if value:
        typer.echo(f"stp {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="", help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", metavar="", help="Show tracebacks instead of one-line errors.")] = False,
):
    STATE["debug"] = debug


def main() -> None:
    try:
        app()
    except OutputError as exc:  # --help or --version to a full device: outside any command's wrapper
        if str(exc):
            error_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
