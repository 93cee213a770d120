"""A preset's whole chain checked before its first stage starts (``stp pipeline``, ``stp study``).

Each step is parsed as the command its child process will run (the same arguments, the same
``--config`` merging, so a typo, a value of the wrong type or a section no command has is found
here), then checked with the stage's own option checks, in chain order, so that what one stage
makes is known to the next: the model a ``--as``/``--m`` refers to, the T a schedule starts from.
A preset that would fail after an hour of training fails now, in one line naming the file, the
section and the option.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from stpcli.chain import Step
from stpcli.cli.common import make_train_config, resolve
from stpcli.cli.stages import conversion_arguments, timestep_recipes
from stpcli.data.source import BAD_IMAGE_POLICIES
from stpcli.engine.runtime import check_runtime_options
from stpcli.errors import StpError
from stpcli.models.surgery import units_to_remove, with_units, without_layers
from stpcli.pipeline import step_command
from stpcli.spec import ModelSpec
from stpcli.stages.ann import check_train_ann
from stpcli.stages.snn import check_convert, check_temporal_prune

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
    from stpcli.cli import app

    group = typer.main.get_command(app)
    root = typer.Context(group, info_name="stp")
    specs: dict[str, ModelSpec] = {}
    timesteps: dict[str, int] = {}
    for step in steps:
        command = group.commands[step.command]  # type: ignore[attr-defined]
        args = step_command(step, Path("."), preset_path, seed=seed, data=data, device=device, redo=True)[4:]
        try:
            ctx = command.make_context(step.command, list(args), parent=root)
        except Exception as exc:  # the CLI framework's usage error, whatever its class
            if not hasattr(exc, "format_message"):
                raise
            raise StpError(f"preset {preset_path}, {step.command}: {exc.format_message()}") from None
        values = resolve(ctx, dict(ctx.params))
        try:
            _check_step(step, values, specs, timesteps)
        except StpError as exc:
            raise StpError(f"preset {preset_path}, {step.command}: {exc}") from None


def _check_step(step: Step, values: dict, specs: dict[str, ModelSpec], timesteps: dict[str, int]) -> None:
    check_runtime_options(values["device"], values["precision"], values["lif_backend"])
    if values["on_bad_image"] not in BAD_IMAGE_POLICIES:
        raise StpError(f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {values['on_bad_image']!r}")
    if values.get("data") is not None and not Path(values["data"]).expanduser().exists():
        raise StpError(f"--data {values['data']} does not exist")
    if values.get("teacher") is not None and not Path(values["teacher"]).expanduser().is_file():
        raise StpError(f"--teacher {values['teacher']} does not exist")
    config = make_train_config(values)
    source = step.source or ""
    if step.command == "train-ann":
        specs[step.target] = check_train_ann(arch=values["arch"], width=values["width"],
                                             image_size=values["image_size"], dropout=values["dropout"],
                                             train_ratio=values["train_ratio"], val_ratio=values["val_ratio"],
                                             config=config, pretrained=values["pretrained"],
                                             normalisation=values["normalisation"], scale=values["scale"],
                                             split_file=values["split_file"], known=values["known"],
                                             pool=values["pool"])
    elif step.command == "add-unit":
        config.check()
        specs[step.target] = with_units(specs[source], values["unit_group"], values["count"])
    elif step.command == "convert":
        check_convert(timesteps=values["timesteps"], **conversion_arguments(values))
        specs[step.target], timesteps[step.target] = specs[source], values["timesteps"]
    elif step.command == "temporal-prune":
        schedule, configs = timestep_recipes(values)
        check_temporal_prune(schedule, configs, timesteps[source])
        for name, t in zip(step.outputs, schedule):
            specs[name], timesteps[name] = specs[source], t
    elif step.command == "spatial-prune":
        config.check()
        try:
            group, count, _ = units_to_remove(specs[source], values["unit_group"], values["count"])
        except StpError as exc:
            raise StpError(str(exc).replace("the checkpoint", "its input", 1)) from None
        specs[step.target], timesteps[step.target] = without_layers(specs[source], group, count)[0], timesteps[source]
