"""A preset's whole chain checked before its first stage starts (``stp pipeline``, ``stp study``).

Each step's options are read as its child process will read them (the preset's values, then what
the driver passes: the step's own arguments, ``--seed``, ``--data``, ``--device``; the same
``options.preset_values``, so a typo, a value of the wrong type or a section no command has is
found here), then checked with the stage's own option checks, in chain order, so that what one stage
makes is known to the next: the model a ``--as``/``--m`` refers to, the T a schedule starts from.
A preset that would fail after an hour of training fails now, in one line naming the file, the
section and the option.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from stpcli.chain import Step
from stpcli.cli.common import read_yaml
from stpcli.engine.runtime import check_runtime_options
from stpcli.errors import StpError
from stpcli.models.surgery import units_to_remove, with_units, without_layers
from stpcli.options import (
    STAGE_OPTIONS,
    DataOptions,
    RunOptions,
    converted,
    field_types,
    option_field,
    preset_command_options,
)
from stpcli.spec import ModelSpec

T = TypeVar("T")


def planned(preset_path: Path, plan: Callable[[], T]) -> T:
    """``plan()`` (the chain's steps, read from a preset), its errors naming the preset."""
    try:
        return plan()
    except StpError as exc:
        raise StpError(f"preset {preset_path}: {exc}") from None


def check_chain(preset_path: Path, steps: list[Step], *, seed: int | None = None, data: str | None = None,
                device: str | None = None) -> None:
    """Refuse the first problem of any step of ``steps`` (all in one folder, targets unique)."""
    preset = read_yaml(preset_path, "--config")
    specs: dict[str, ModelSpec] = {}
    timesteps: dict[str, int] = {}
    for step in steps:
        arguments = step_arguments(step)
        if seed is not None:
            arguments["seed"] = seed
        if step.command == "train-ann" and data is not None:
            arguments["location"] = data
        if device is not None:
            arguments["device"] = device
        # the preset reader's errors name the file and the section themselves
        options, data_options, running = preset_command_options(step.command, preset, preset_path, arguments)
        try:
            _check_step(step, options, data_options, running, specs, timesteps)
        except StpError as exc:
            raise StpError(f"preset {preset_path}, {step.command}: {exc}") from None


def step_arguments(step: Step) -> dict:
    """A step's own command-line arguments (``--as 5 --m 1``, ``--recipe reference``) by field name."""
    types = {name: kind for cls in (STAGE_OPTIONS[step.command], DataOptions, RunOptions)
             for name, kind in field_types(cls).items()}
    arguments = {}
    for key, value in zip(step.args[::2], step.args[1::2]):
        item = option_field(step.command, key)
        if item is None:
            raise ValueError(f"a chain step passes {key}, which {step.command} does not take")
        arguments[item.name] = converted(types[item.name], value, f"{key}")
    return arguments


def _check_step(step: Step, options, data: DataOptions, running: RunOptions, specs: dict[str, ModelSpec],
                timesteps: dict[str, int]) -> None:
    check_runtime_options(running.device, running.precision, running.lif_backend)
    data.check()
    if data.location is not None and not Path(data.location).expanduser().exists():
        raise StpError(f"--data {data.location} does not exist")
    teacher = getattr(options, "teacher", None)
    if teacher is not None and not Path(teacher).expanduser().is_file():
        raise StpError(f"--teacher {teacher} does not exist")
    source = step.source or ""
    if step.command == "temporal-prune":
        options.check(timesteps[source])
    else:
        spec = options.check()
    if step.command == "train-ann":
        specs[step.target] = spec
    elif step.command == "add-unit":
        specs[step.target] = with_units(specs[source], options.unit_group, options.count)
    elif step.command == "convert":
        specs[step.target], timesteps[step.target] = specs[source], options.timesteps
    elif step.command == "temporal-prune":
        for name, t in zip(step.outputs, options.steps()):
            specs[name], timesteps[name] = specs[source], t
    elif step.command == "spatial-prune":
        try:
            group, count, _ = units_to_remove(specs[source], options.unit_group, options.count)
        except StpError as exc:
            raise StpError(str(exc).replace("the checkpoint", "its input", 1)) from None
        specs[step.target], timesteps[step.target] = without_layers(specs[source], group, count)[0], timesteps[source]
