"""What every command shares: error handling, config files, option types and the runtime."""

from __future__ import annotations

import functools
import inspect
import shlex
import signal
import sys
import typing
from dataclasses import Field, fields
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from stpcli.cli.terminal import OutputError, flush_standard_output, shown
from stpcli.defaults import RENAMED_OPTIONS
from stpcli.errors import StpError
from stpcli.files import MAX_TEXT_FILE, finish_outputs, first_line, readable_file
from stpcli.options import DataOptions, RunOptions, command_classes, command_fields, command_options, field_types, preset_values
from stpcli.signals import PENDING_SIGNALS, stop_if_signalled

if typing.TYPE_CHECKING:  # torch-heavy: imported when a command runs, not when the CLI starts
    from stpcli.run import Run
    from stpcli.stages.saving import StageIO

console = Console()
if not console.is_terminal:  # logs and pipes: wide enough for the tables, never wrapped at 80
    console = Console(width=140)
error_console = Console(stderr=True)
STATE = {"debug": False}


def stp_command(app: typer.Typer, name: str, **kwargs):
    """Register a command whose StpErrors (and surprises) become one-line messages."""

    def wrap(function):
        @functools.wraps(function)
        def run(*args, **kw):
            previous = _stop_on_sigterm()
            succeeded = False
            try:
                if PENDING_SIGNALS:
                    raise KeyboardInterrupt  # SIGTERM arrived while stp was starting
                result = function(*args, **kw)
                flush_standard_output()
                succeeded = True
                return result
            except typer.Exit as exc:
                succeeded = not exc.exit_code
                raise
            except typer.Abort:
                raise
            except StpError as exc:
                if STATE["debug"]:
                    raise
                if str(exc):  # a reader that closed its pipe (| head) is not told anything
                    error_console.print(f"error: {readable_length(shown(exc))}", markup=False, highlight=False,
                                        soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt:
                error_console.print("error: interrupted (nothing was written)", markup=False)
                raise typer.Exit(130) from None
            except MemoryError:
                error_console.print("error: out of memory; try a smaller --batch-size or --image-size", markup=False)
                raise typer.Exit(2) from None
            except Exception as exc:  # a bug, or something we did not foresee: still one line
                if STATE["debug"] or type(exc).__module__.startswith(("typer", "click")):
                    raise  # usage errors are the CLI framework's to print
                error_console.print(f"error: unexpected {type(exc).__name__}: {shown(first_line(exc, 300))} "
                                    "(rerun with --debug for a traceback)", markup=False, highlight=False,
                                    soft_wrap=True)
                raise typer.Exit(1) from None
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
                finish_outputs(succeeded)
                _shutdown_distributed()

        return app.command(name, **kwargs)(run)

    return wrap


MAX_MESSAGE = 600  # characters of an error line; a huge value quoted in it is cut in the middle


def readable_length(message: str) -> str:
    """An error line of readable length: its start and its end (where hints are) kept."""
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[:MAX_MESSAGE // 2]} … ({len(message) - MAX_MESSAGE + 60:,} characters left out) … {message[-MAX_MESSAGE // 2 + 60:]}"


def _shutdown_distributed() -> None:
    """Leave a process group if this command joined one. A command that never started torch has
    nothing to shut, and one stopped while importing it (a signal during ``import torch`` leaves
    the module half made) must not import it again on its way out."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None:
        return
    try:
        if distributed.is_available() and distributed.is_initialized():
            distributed.destroy_process_group()
    except Exception:  # half-imported torch, or a group already gone: nothing left to release
        pass


def _interrupt(signum, frame):
    """SIGINT/SIGTERM outside a training loop: stop now, say so, exit 130. Not in the middle of an
    import, though (the commands import torch when they start): an exception there leaves a module
    half made, so the signal is kept and acted on once the imports are done (``make_run``, or a
    training loop's first step)."""
    PENDING_SIGNALS.append(signum)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def _stop_on_sigterm():
    """SIGTERM stops a command with a message, as Ctrl-C does (training loops install their own
    handler that stops at the next step and keeps the state). Ctrl-C gets Python's own handler
    back from the entry point's early one, unless it was ignored (a background job)."""
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, _interrupt)
        return signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread
        return None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        # a key twice among the mapping's own keys is an error; a merged key (<<: *anchor) it repeats
        # is YAML's override, so the merge is flattened after the check
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]
        for key in keys:
            if keys.count(key) > 1:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str) -> dict:
    """A YAML mapping from a file, or one clear error (missing, not a regular file, too large, binary,
    invalid, nested beyond reason, not a mapping)."""
    readable_file(path, what, MAX_TEXT_FILE)
    try:
        text = path.read_bytes().decode("utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise StpError(f"{what} {path} is not a text file") from None
    except yaml.YAMLError as exc:
        raise StpError(f"{what} {path} is not valid YAML ({first_line(exc)})") from None
    except RecursionError:
        raise StpError(f"{what} {path} nests its values too deeply to be a preset") from None
    if not isinstance(data, dict):
        raise StpError(f"{what} {path} must be a mapping of option names to values")
    if not data:
        raise StpError(f"{what} {path} is empty; a preset that sets nothing would run every default")
    return data


def say(text: str) -> None:
    """A line of progress on the console, printed as is (no markup, no highlighting, control
    characters made visible)."""
    console.print(shown(text), markup=False, highlight=False, soft_wrap=True)


def echo(text: str) -> None:
    """A child stage's output line, passed on to the terminal; a terminal that went away (Ctrl-C
    under ``| tee``) stops the echo, not the stage, whose log keeps everything."""
    try:
        console.print(shown(text), markup=False, highlight=False, soft_wrap=True)
    except OutputError:
        pass


def command_line() -> str:
    return "stp " + shlex.join(sys.argv[1:])


def make_run(name: str, values: dict) -> Run:
    """The run of a command from its parameters (RunOptions' fields; one missing or None takes its default)."""
    from stpcli.engine.runtime import setup_runtime
    from stpcli.run import Run

    stop_if_signalled()  # a stop that arrived while the command's modules were being imported
    running = RunOptions.from_values({name: value for name, value in values.items() if value is not None})
    return Run(name, setup_runtime(running.device, running.precision, running.compile, running.lif_backend), console)


def make_io(out: Path, running: RunOptions) -> StageIO:
    from stpcli.stages.saving import StageIO

    if running.if_changed and running.force:
        raise StpError("--if-changed decides itself whether --out is rebuilt; drop --force (or --if-changed)")
    return StageIO(Path(out), force=running.force, resume=running.resume, command=command_line(),
                   if_changed=running.if_changed)


def make_data(values: dict) -> DataOptions:
    """Where a command reads its images, from its parameters (``data``: the location; DataOptions' fields)."""
    return DataOptions.from_values({**values, "location": values.get("data")})


def with_stage_options(command: str):
    """Append a stage command's options (``options.command_fields``: its stage's, the data's, how it
    runs) to its signature as Typer options, each with its flag, help and default; the command
    receives them in ``**values`` and builds its options objects with ``stage_options``."""
    def decorate(function):
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function, include_extras=True)  # the real Annotated types, not strings
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        types = {name: kind for cls in command_classes(command) for name, kind in field_types(cls).items()}
        extra = [inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=item.default,
                                   annotation=typer_option(item, types[item.name]))
                 for item in command_fields(command)]
        extra += [inspect.Parameter(_renamed_parameter(old), inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Annotated[str | None, typer.Option(f"--{old}", hidden=True)])
                  for old in RENAMED_OPTIONS.get(command, {})]  # refused with a hint, not "no such option"
        function.__signature__ = signature.replace(parameters=own + extra)
        function.__annotations__.update({p.name: p.annotation for p in extra})
        return function

    return decorate


def _renamed_parameter(old: str) -> str:
    return "renamed_" + old.replace("-", "_")


def typer_option(item: Field, kind: Any) -> Any:
    """An options field as a Typer option: its type, flags, help (and metavar, environment variable)."""
    settings = {key: item.metadata[key] for key in ("metavar", "envvar") if item.metadata[key] is not None}
    return Annotated[kind, typer.Option(*item.metadata["declarations"], help=item.metadata["help"], **settings)]


def field_option(cls: type, name: str) -> Any:
    """The Typer option of the field ``name`` of an options class, for the commands that are not
    stages but take the same option (``--data``, ``--device``, ...)."""
    item = next(i for i in fields(cls) if i.name == name)
    return typer_option(item, field_types(cls)[name])


def stage_command_options(ctx: typer.Context, command: str, values: dict[str, Any]):
    """A stage command's options objects (its stage's, the data's, how it runs) from its parameters,
    each not given on the command line filled from the ``--config`` preset; checked before any
    checkpoint is read."""
    for old, new in RENAMED_OPTIONS.get(command, {}).items():
        if values.pop(_renamed_parameter(old), None) is not None:
            raise StpError(f"{command}'s --{old} is now --{new} (each flag means one thing across commands)")
    config = values.get("config")
    if config is not None:
        preset = preset_values(command, read_yaml(config, "--config"), config)
        for name, (_, value) in preset.items():
            source = ctx.get_parameter_source(name)
            if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
                values[name] = value
    options, data, running = command_options(command, values)
    options.check()
    data.check()
    return options, data, running


# Option types shared by the commands (one definition each; those the stages have too, from their fields).
Data = field_option(DataOptions, "location")
AllowDataChange = field_option(DataOptions, "allow_data_change")
OnBadImage = field_option(DataOptions, "on_bad_image")
CacheDir = field_option(DataOptions, "cache_dir")
Device = field_option(RunOptions, "device")
Force = field_option(RunOptions, "force")
Out = Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint (.safetensors); its folder is created if missing.")]
Source = Annotated[Path, typer.Argument(help="Input checkpoint.")]
JsonOutput = Annotated[bool, typer.Option("--json", metavar="", help="Print JSON instead of tables.")]
