"""``stp study``: the TP and STP chains of a preset over several seeds (and Unit settings), then
the statistics a paper table needs.

Every stage runs as its own ``stp`` command in a child process, so every stage
stays a checkpoint file; each runs with make's rule (``--if-changed``): a stage made from the
same input with the same options is kept, one whose preset options changed is rebuilt with the
stages after it, an interrupted one (its state file exists) is resumed; chains run side by side
(``jobs``), and a time limit stops the children cleanly (SIGTERM: they keep
their state) so that running the study again continues it.

Layout: ``DIR/seed<S>/na``, ``s_t<T>`` (TP), and ``DIR/seed<S>/as<A>-m<M>/nb``,
``sb_t<T>``, ``sa_t<T>`` (STP) per Unit setting; a study that sweeps recipes
(``study: {recipe: [stp, reference]}``) puts each recipe's SNN files in a folder of
its name (``seed<S>/reference/s_t<T>``, ``seed<S>/as<A>-m<M>/reference/sb_t<T>``), all
from the same ``na`` and ``nb``. Summary: ``study.json``, ``study.csv``, ``study.md``
and two PNGs.
"""

from __future__ import annotations

import difflib

from stpcli.chain import Chain, Step, preset_integer, preset_units, stp_steps, tp_steps
from stpcli.defaults import RECIPES
from stpcli.errors import StpError
from stpcli.spec import MAX_GROUPS, MAX_LAYERS_PER_GROUP

STOPPED = 124  # exit status when the time limit stopped the study (as timeout(1))

STUDY_KEYS = ("as", "m", "recipe")


def unit_settings(preset: dict) -> list[tuple[int, int]]:
    """The (AS, M) pairs a preset's ``study:`` section sweeps (``as: [1, 5]``, ``m: [1]``), else its
    add-unit. Each value strictly an integer, each listed once (a value twice would count every
    checkpoint of its chain twice in the statistics)."""
    study = preset.get("study") or {}
    if not isinstance(study, dict):
        raise StpError(f"study must be a mapping such as {{as: [1, 5], m: [1]}}, got {study!r}")
    unknown = [key for key in study if key not in STUDY_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), STUDY_KEYS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise StpError(f"study has an unknown key {unknown[0]!r} (it sweeps 'as', 'm' and 'recipe'){hint}")
    default_as, default_m = preset_units(preset)
    grid: dict[str, list[int]] = {}
    for key, default in (("as", default_as), ("m", default_m)):
        values = study.get(key, [default])
        if not isinstance(values, list) or not values:
            raise StpError(f"study must give {key!r} as a list, e.g. {key}: [1, 5]")
        checked = [preset_integer(v, f"study: {key}", 1, MAX_GROUPS if key == "as" else MAX_LAYERS_PER_GROUP) for v in values]
        if len(set(checked)) != len(checked):
            raise StpError(f"study lists a value of {key!r} twice ({values}); list each once")
        grid[key] = checked
    return [(a, m) for a in grid["as"] for m in grid["m"]]


def study_recipes(preset: dict) -> list[str | None]:
    """The recipes a preset's ``study:`` section sweeps (``recipe: [stp, reference]``), or [None]: the
    preset's own, its files where a study without the sweep puts them."""
    study = preset.get("study") or {}
    if "recipe" not in study:
        return [None]
    values = study["recipe"]
    if not isinstance(values, list) or not values or any(v not in RECIPES for v in values):
        raise StpError(f"study: recipe must be a list of {', '.join(RECIPES)}, got {values!r}")
    if len(set(values)) != len(values):
        raise StpError(f"study lists a recipe twice ({values}); list each once")
    return list(values)


def plan(preset: dict, seeds: list[int]) -> tuple[list[Chain], list[Chain]]:
    """(the ANNs of each seed: Na and each Unit setting's Nb; every TP and STP chain after them)."""
    settings, recipes = unit_settings(preset), study_recipes(preset)
    folders = {units: f"as{units[0]}-m{units[1]}" for units in settings}
    anns = [Chain(seed, "ANN", (Step("train-ann", None, "na"),
                                *(stp_steps(preset, units, folders[units])[0] for units in settings)),
                  folder=f"seed{seed}")
            for seed in seeds]
    chains = []
    for seed in seeds:
        for recipe in recipes:
            named = f" ({recipe} recipe)" if recipe else ""
            chains.append(Chain(seed, "TP" + named, tuple(tp_steps(preset, recipe)), recipe=recipe or "",
                                folder=f"seed{seed}"))
            for units in settings:
                label = f"AS{units[0]} M{units[1]}"
                chains.append(Chain(seed, f"STP {label}{named}", tuple(stp_steps(preset, units, folders[units], recipe)[1:]),
                                    units=label, recipe=recipe or "", folder=f"seed{seed}"))
    return anns, chains
