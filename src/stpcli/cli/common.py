"""What every command shares: error handling, config files, option types and the runtime."""

from __future__ import annotations

import difflib
import functools
import inspect
import shlex
import signal
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from stpcli.cli.terminal import OutputError, flush_standard_output, shown
from stpcli.defaults import DEFAULT_LIF_BACKEND, LIF_BACKENDS
from stpcli.engine.recipe import TRAIN_OPTIONS, TrainConfig
from stpcli.errors import StpError
from stpcli.files import MAX_TEXT_FILE, finish_outputs, first_line, readable_file
from stpcli.signals import PENDING_SIGNALS, stop_if_signalled

if typing.TYPE_CHECKING:  # torch-heavy: imported when a command runs, not when the CLI starts
    from stpcli.run import DataOptions, Run
    from stpcli.stages.saving import StageIO

console = Console()
if not console.is_terminal:  # logs and pipes: wide enough for the tables, never wrapped at 80
    console = Console(width=140)
error_console = Console(stderr=True)
STATE = {"debug": False}
STAGE_COMMANDS = ("train-ann", "add-unit", "convert", "temporal-prune", "spatial-prune", "quantize")


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


PRESET_ONLY_SECTIONS = ("study",)  # read by stp study, not an option section of a command


def apply_config(ctx: typer.Context, values: dict[str, Any], config: Path | None) -> dict[str, Any]:
    """Fill options not given on the command line from a YAML file whose keys are option names.

    A preset file may hold one section per command (``train-ann:``, ``convert:``, ...)
    beside shared top-level keys; a command reads its own section (every key must
    be one of its options) and the shared keys it has an option for. Nothing is
    ignored without a word: a section must name a command, a shared key must be an
    option of some command, and a value must have its option's type (``2.9`` is not
    an integer, ``true`` is not a number).
    """
    if config is None:
        return values
    data = read_yaml(config, "--config")
    check_preset_layout(ctx, data, config)
    params = {p.name: p for p in ctx.command.params}
    names = command_option_names(ctx.command)
    sections = {k for k, v in data.items() if isinstance(v, dict)}
    shared = {k: v for k, v in data.items() if k not in sections}
    own = data.get(ctx.info_name, {}) if sections else data
    merged = {}
    for key, value in (shared.items() if sections else []):
        name = names.get(str(key).lstrip("-"))
        if name is not None and name != "config":
            merged[name] = (key, value)
    for key, value in own.items():
        name = names.get(str(key).lstrip("-"))
        if name is None or name == "config":
            close = difflib.get_close_matches(str(key), [k for k in names if "_" not in k], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StpError(f"--config {config}: unknown option {key!r} for {ctx.info_name}{hint}")
        merged[name] = (key, value)
    for name, (key, value) in merged.items():
        source = ctx.get_parameter_source(name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            where = f"--config {config}" + (f", {ctx.info_name}" if key in own and sections else "")
            problem = _type_problem(params[name], value)
            if problem:
                raise StpError(f"{where}: bad value for {key!r}: expected {problem}, got {value!r}")
            try:
                values[name] = params[name].process_value(ctx, value)
            except Exception as exc:  # the CLI framework's conversion error, whatever its class
                message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
                raise StpError(f"{where}: bad value for {key!r}: {message}") from None
    return values


def _type_problem(param, value) -> str | None:
    """What a preset value should have been for ``param``, or None if it has the right kind."""
    annotation = param.type_descriptor.annotation
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = kinds[0]
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    if isinstance(value, (bool, dict, list)) or value is None:
        return "a single value" if isinstance(value, (dict, list)) else f"a value of type {kind.__name__}"
    if kind is int and isinstance(value, float):
        return "an integer"
    return None


def check_preset_layout(ctx: typer.Context, data: dict, config: Path) -> None:
    """Every section of a preset names a command, and every shared key is an option of one."""
    root = ctx.find_root().command
    commands = getattr(root, "commands", {ctx.info_name: ctx.command})
    stage_commands = {name: command for name, command in commands.items() if name in STAGE_COMMANDS}
    known_sections = [*stage_commands, *PRESET_ONLY_SECTIONS]
    shared_names = {name for command in stage_commands.values() for name in command_option_names(command)}
    for key, value in data.items():
        key = str(key)
        if isinstance(value, dict):
            if key not in known_sections:
                close = difflib.get_close_matches(key.replace("_", "-"), known_sections, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise StpError(f"--config {config}: unknown section {key!r} (sections name commands){hint}")
        elif key in known_sections:
            raise StpError(f"--config {config}: section {key!r} must be a mapping of option names to values, "
                           f"got {value!r}")
        elif any(isinstance(v, dict) for v in data.values()) and key.lstrip("-") not in shared_names:
            close = difflib.get_close_matches(key, sorted(n for n in shared_names if "_" not in n), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StpError(f"--config {config}: unknown option {key!r} (not an option of any stage command){hint}")


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


def option_name(param) -> str:
    """The name users know a parameter by: its first long flag without dashes (``as``, ``image-size``)."""
    flags = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return flags[0][2:] if flags else param.name


def command_option_names(command) -> dict[str, str]:
    """Every spelling a preset may use for a command's parameter (``image-size``, ``image_size``) -> its name."""
    names = {}
    for param in command.params:
        for spelling in (option_name(param), param.name):
            names[spelling] = names[spelling.replace("-", "_")] = param.name
    return names


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
    from stpcli.engine.runtime import setup_runtime
    from stpcli.run import Run

    stop_if_signalled()  # a stop that arrived while the command's modules were being imported
    runtime = setup_runtime(values.get("device", "auto"), values.get("precision", "fp32"),
                            values.get("compile", False), values.get("lif_backend", DEFAULT_LIF_BACKEND))
    return Run(name, runtime, console)


def make_io(values: dict) -> StageIO:
    from stpcli.stages.saving import StageIO

    if values.get("if_changed") and values.get("force"):
        raise StpError("--if-changed decides itself whether --out is rebuilt; drop --force (or --if-changed)")
    return StageIO(Path(values["out"]), force=values.get("force", False), resume=values.get("resume", False),
                   command=command_line(), if_changed=values.get("if_changed", False))


def make_data(values: dict) -> DataOptions:
    from stpcli.run import DataOptions

    return DataOptions(location=values.get("data"), allow_data_change=values.get("allow_data_change", False),
                       on_bad_image=values.get("on_bad_image", "fail"), cache_dir=values.get("cache_dir"))


def make_train_config(values: dict) -> TrainConfig:
    """The recipe from a command's resolved options: each TrainConfig field reads the option its
    metadata names (``--lr-schedule`` -> ``schedule``); a field without its option keeps its default."""
    parameters = {name: option[2:].replace("-", "_") for name, option in TRAIN_OPTIONS.items()}
    return TrainConfig(**{name: values[parameter] for name, parameter in parameters.items() if parameter in values})


def with_options(*groups: list[tuple[str, Any, Any]]):
    """Append shared options (name, Annotated type, default) to a command's signature.

    Typer has no option groups; this keeps each shared option declared once (the groups below)
    instead of in every command. The command receives them in ``**options``; ``resolve`` merges
    them with its own parameters and the ``--config`` preset.
    """
    def decorate(function):
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function, include_extras=True)  # the real Annotated types, not strings
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                 for group in groups for name, annotation, default in group]
        function.__signature__ = signature.replace(parameters=own + extra)
        function.__annotations__.update({name: annotation for group in groups for name, annotation, _ in group})
        return function

    return decorate


def resolve(ctx: typer.Context, local_values: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters and shared options, filled from ``--config`` where not given."""
    values = {k: v for k, v in local_values.items() if k not in ("ctx", "options")}
    values.update(local_values.get("options", {}))
    return apply_config(ctx, values, values.get("config"))


# Option types shared by the commands (one definition each).
Out = Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint (.safetensors); its folder is created if missing.")]
Force = Annotated[bool, typer.Option("--force", metavar="", help="Overwrite an existing output / start over.")]
Resume = Annotated[bool, typer.Option("--resume", metavar="", help="Continue an interrupted run from its state file.")]
IfChanged = Annotated[bool, typer.Option("--if-changed", metavar="", help="Make's rule, by lineage (what the Makefile, stp pipeline and stp study run): keep --out when it was made from the same input with the same options, rebuild it (saying which option changed) when not, resume an interrupted run.")]
Config = Annotated[Path | None, typer.Option("--config", help="YAML file of option values; flags win.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
Precision = Annotated[str, typer.Option("--precision", help="fp32 | bf16 (autocast).")]
Compile = Annotated[bool, typer.Option("--compile", metavar="", help="torch.compile the training step.")]
LifBackend = Annotated[str, typer.Option("--lif-backend", envvar="STP_LIF_BACKEND", help="How the LIF neurons run: " + " | ".join(LIF_BACKENDS) + " (torch: eager PyTorch; inductor: fused by torch.compile, the same results bit for bit, needs a C++ compiler on the CPU; triton: CUDA kernels). Recorded in the lineage.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for split, initialisation, shuffling, augmentation.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Global batch size.")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="sgd | adam.")]
Momentum = Annotated[float, typer.Option("--momentum", help="SGD momentum.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="L2 weight decay.")]
Schedule = Annotated[str, typer.Option("--lr-schedule", help="step (divide by 5 at fixed fractions) | cosine | constant.")]
Data = Annotated[str | None, typer.Option("--data", help="ImageFolder root or stp data pack; default: recorded data.")]
AllowDataChange = Annotated[bool, typer.Option("--allow-data-change", metavar="", help="Accept data whose fingerprint differs from the recorded one.")]
OnBadImage = Annotated[str, typer.Option("--on-bad-image", help="fail | skip images that do not decode.")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Where decoded images are cached (default ~/.cache/stpcli).")]
Source = Annotated[Path, typer.Argument(help="Input checkpoint.")]
Distill = Annotated[float, typer.Option("--distill", help="Loss weight of matching the teacher's soft outputs, 0..1 (0: off).")]
DistillTemperature = Annotated[float, typer.Option("--distill-temperature", help="Softmax temperature for --distill.")]
Teacher = Annotated[Path | None, typer.Option("--teacher", help="Checkpoint to distil from (default: the ANN this SNN was converted from).")]
JsonOutput = Annotated[bool, typer.Option("--json", metavar="", help="Print JSON instead of tables.")]
Lr = Annotated[float, typer.Option("--lr", help="Learning rate (the schedule's peak).")]
AmsGrad = Annotated[bool | None, typer.Option("--amsgrad/--no-amsgrad", help="Adam's AMSGrad variant (default: on in the reference recipe's SNN stages, else off).")]


def training_options(*, lr: float, optimizer: str, weight_decay: float, lr_schedule: str,
                     distill: bool = False) -> list[tuple[str, Any, Any]]:
    """The options of every training command, with the command's recipe defaults."""
    group: list[tuple[str, Any, Any]] = [("batch_size", BatchSize, 64), ("lr", Lr, lr), ("optimizer", Optimizer, optimizer),
             ("momentum", Momentum, 0.9), ("weight_decay", WeightDecay, weight_decay),
             ("lr_schedule", Schedule, lr_schedule), ("amsgrad", AmsGrad, None)]
    if distill:
        group += [("distill", Distill, 0.0), ("distill_temperature", DistillTemperature, 4.0), ("teacher", Teacher, None)]
    return group + [("seed", Seed, 0)]


RECORDED_DATA = [("data", Data, None), ("allow_data_change", AllowDataChange, False), ("on_bad_image", OnBadImage, "fail"),
                 ("cache_dir", CacheDir, None)]
COMMAND_OPTIONS = [("device", Device, "auto"), ("precision", Precision, "fp32"), ("compile", Compile, False),
               ("lif_backend", LifBackend, DEFAULT_LIF_BACKEND), ("force", Force, False), ("resume", Resume, False),
               ("if_changed", IfChanged, False),
               ("config", Config, None)]
ANN_TRAINING = training_options(lr=0.01, optimizer="sgd", weight_decay=5e-4, lr_schedule="cosine")
SNN_TRAINING = training_options(lr=1e-4, optimizer="adam", weight_decay=0.0, lr_schedule="step", distill=True)
