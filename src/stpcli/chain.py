"""The STP chain and its TP baseline, written down once: which stage command makes which file.

``stp pipeline``, ``stp study`` and ``examples/Makefile`` (checked by a test)
run these steps. File names follow the preset: the first SNN is ``s_t<T>``
/ ``sb_t<T>`` for the preset's ``convert`` time steps, temporal pruning writes
one file per T of its schedule, and spatial pruning makes ``sa_t<T>`` for
each T <= 2 of the schedule (the paper's tables report T = 2 and T = 1).

STP: Na -> Nb -> Sb(T0) -> Sb(T...1) -> Sa(T2), Sa(T1)
TP:  Na -> S(T0) -> S(T...1)                   (same Na, hence the same split)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stpcli.defaults import DEFAULT_SCHEDULE, DEFAULT_TIMESTEPS, DEFAULT_UNITS, RECIPES
from stpcli.errors import StpError
from stpcli.names import at_timesteps
from stpcli.schema import MAX_TIMESTEPS
from stpcli.spec import MAX_GROUPS, MAX_LAYERS_PER_GROUP


def parse_schedule(text: str | list) -> list[int]:
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise StpError(f"--schedule must be comma-separated integers such as 3,2,1, got {text!r}") from None
    if not values or any(not 1 <= v <= MAX_TIMESTEPS for v in values):
        raise StpError(f"--schedule values must be time steps in 1..{MAX_TIMESTEPS}, got {text!r}")
    if any(a <= b for a, b in zip(values, values[1:])):
        raise StpError(f"--schedule must be strictly descending, got {text!r}")
    if values[-1] != 1:
        raise StpError(f"--schedule must end at 1 time step, got {text!r}")
    return values


@dataclass(frozen=True)
class Step:
    command: str
    source: str | None  # file name without .safetensors, relative to the chain's folder
    target: str
    args: tuple[str, ...] = ()
    also_writes: tuple[str, ...] = field(default=())  # temporal-prune's intermediate T files

    @property
    def outputs(self) -> tuple[str, ...]:
        return (*self.also_writes, self.target)


@dataclass(frozen=True)
class Chain:
    """Steps a driver runs in order, in one folder: ``stp pipeline``'s whole preset, or one of a study's
    chains of one seed."""

    seed: int | None  # passed to every step (None: the preset's)
    label: str  # "ANN", "TP" or "STP AS<A> M<M>" and the recipe in a study; "" for a pipeline
    steps: tuple[Step, ...]
    units: str = ""  # "AS<A> M<M>" for a study's STP chain
    recipe: str = ""  # the recipe a recipe sweep converts with
    folder: str = ""  # under the driver's output folder

    @property
    def name(self) -> str:
        """How the driver's lines call it: "seed 0 TP"."""
        return " ".join(part for part in (f"seed {self.seed}" if self.label and self.seed is not None else "",
                                          self.label) if part)


def _section(preset: dict, name: str) -> dict:
    section = preset.get(name) or {}
    if not isinstance(section, dict):
        raise StpError(f"section {name!r} must be a mapping of option names to values, got {section!r}")
    return section


def preset_integer(value, what: str, low: int, high: int) -> int:
    """An integer the chain's file names depend on: strictly an integer (not 2.9, not true)."""
    if isinstance(value, str) and value.strip().lstrip("-").isascii() and value.strip().lstrip("-").isdigit():
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise StpError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def preset_timesteps(preset: dict) -> tuple[int, list[int]]:
    """The preset's conversion T and temporal-pruning schedule (the commands' defaults if absent)."""
    convert, prune = _section(preset, "convert"), _section(preset, "temporal-prune")
    timesteps = preset_integer(convert.get("timesteps", preset.get("timesteps", DEFAULT_TIMESTEPS)),
                               "convert: timesteps", 1, MAX_TIMESTEPS)
    schedule = prune.get("schedule", ",".join(map(str, DEFAULT_SCHEDULE)))
    if not isinstance(schedule, (str, int)) or isinstance(schedule, bool):
        raise StpError(f"temporal-prune: schedule must be written like '3,2,1', got {schedule!r}")
    return timesteps, parse_schedule(str(schedule))


def preset_units(preset: dict) -> tuple[int, int]:
    section = _section(preset, "add-unit")
    return (preset_integer(section.get("as", DEFAULT_UNITS[0]), "add-unit: as", 1, MAX_GROUPS),
            preset_integer(section.get("m", DEFAULT_UNITS[1]), "add-unit: m", 1, MAX_LAYERS_PER_GROUP))


def tp_steps(preset: dict, recipe: str | None = None) -> list[Step]:
    """The TP chain; ``recipe`` converts with that recipe, its files in a folder of its name."""
    t0, schedule = preset_timesteps(preset)
    at, recipe_args = _recipe_folder(recipe)
    first, last = at + at_timesteps("s", t0), at + at_timesteps("s", 1)
    return [Step("convert", "na", first, recipe_args),
            Step("temporal-prune", first, last, also_writes=tuple(at + at_timesteps("s", t) for t in schedule[:-1]))]


def stp_steps(preset: dict, units: tuple[int, int] | None = None, folder: str = "", recipe: str | None = None) -> list[Step]:
    """The STP chain; ``units`` (AS, M) overrides the preset's, ``folder`` prefixes its files (not Na's),
    ``recipe`` converts with that recipe, the SNN files in a folder of its name (under ``folder``)."""
    t0, schedule = preset_timesteps(preset)
    unit_args = () if units is None else ("--as", str(units[0]), "--m", str(units[1]))
    at = (folder + "/") if folder else ""
    snn, recipe_args = _recipe_folder(recipe)
    snn = at + snn
    steps = [Step("add-unit", "na", f"{at}nb", unit_args),
             Step("convert", f"{at}nb", snn + at_timesteps("sb", t0), recipe_args),
             Step("temporal-prune", snn + at_timesteps("sb", t0), snn + at_timesteps("sb", 1),
                  also_writes=tuple(snn + at_timesteps("sb", t) for t in schedule[:-1]))]
    steps += [Step("spatial-prune", snn + at_timesteps("sb", t), snn + at_timesteps("sa", t))
              for t in sorted(schedule, reverse=True) if t <= 2]
    return steps


def _recipe_folder(recipe: str | None) -> tuple[str, tuple[str, ...]]:
    """Where a chain's SNN files go and the convert arguments for ``recipe`` (None: the preset's own)."""
    if recipe is None:
        return "", ()
    if recipe not in RECIPES:
        raise StpError(f"unknown recipe {recipe!r}; the recipes are {', '.join(RECIPES)}")
    return f"{recipe}/", ("--recipe", recipe)


def pipeline_steps(preset: dict) -> list[Step]:
    """Both chains in the order ``stp pipeline`` runs them."""
    return [Step("train-ann", None, "na")] + stp_steps(preset) + tp_steps(preset)


def compared(preset: dict) -> list[str]:
    """The files a pipeline's comparison shows: Na, then TP and STP at each T <= 2."""
    _, schedule = preset_timesteps(preset)
    low = [t for t in sorted(schedule, reverse=True) if t <= 2]
    return ["na"] + [at_timesteps("s", t) for t in low] + [at_timesteps("sa", t) for t in low]
