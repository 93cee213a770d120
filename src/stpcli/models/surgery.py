"""Adding and removing shape-preserving layers, and Algorithm 2's index mapping.

Units are the trailing ``count`` layers of stage ``stage`` (paper, section 3.2).
``index_mapping`` is Algorithm 2: for each layer i of the smaller network,
the layer of the larger network whose tensors it takes.
"""

from __future__ import annotations

import copy

import torch

from stpcli.errors import StpError
from stpcli.models.plan import PlanEntry, build_plan, is_shape_preserving, stage_layers
from stpcli.spec import ModelSpec


def stage_range(spec: ModelSpec) -> range:
    return range(1, len(spec["depths"]) + 1)


def check_stage(spec: ModelSpec, stage: int) -> None:
    if stage not in stage_range(spec):
        raise StpError(
            f"--as {stage} is out of range: {spec['arch']} has stages 1..{len(spec['depths'])}"
        )


def with_units(spec: ModelSpec, stage: int, count: int) -> ModelSpec:
    """The spec of Nb: ``count`` Units appended to stage ``stage`` of Na."""
    check_stage(spec, stage)
    if count < 1:
        raise StpError(f"--m must be at least 1, got {count}")
    existing = spec.get("units")
    if existing:
        raise StpError(
            f"the model already has {existing['count']} Unit(s) at stage {existing['stage']}; "
            "add Units to the base ANN"
        )
    new = copy.deepcopy(spec)
    new["depths"][stage - 1] += count
    new["units"] = {"stage": stage, "count": count}
    return new


def first_layer_index(plan: list[PlanEntry], stage: int, count: int) -> int:
    """Plan index of the first of the trailing ``count`` layers of ``stage`` (Algorithm 2's AS)."""
    members = stage_layers(plan, stage)
    return members[len(members) - count]


def without_layers(spec: ModelSpec, stage: int, count: int, named: str | None = None) -> tuple[ModelSpec, int]:
    """The spec with the trailing ``count`` layers of ``stage`` removed, and AS (their first index).

    ``named`` says where the layers were named (default: the --as/--m options) for the error message.
    """
    check_stage(spec, stage)
    if count < 1:
        raise StpError(f"--m must be at least 1, got {count}")
    named = named or f"--as {stage} --m {count}"
    plan = build_plan(spec)
    members = stage_layers(plan, stage)
    removable = 0
    for i in reversed(members):
        if not is_shape_preserving(plan[i]) or removable == len(members) - 1:
            break
        removable += 1
    if count > removable:
        raise StpError(
            f"{named} asks to remove {count} layer(s), but stage {stage} ends in only "
            f"{removable} removable (shape-preserving) layer(s)"
        )
    new = copy.deepcopy(spec)
    new["depths"][stage - 1] -= count
    units = spec.get("units")
    if units and units["stage"] == stage:
        left = units["count"] - count
        new["units"] = {"stage": stage, "count": left} if left > 0 else None
    return new, first_layer_index(plan, stage, count)


def index_mapping(num_small: int, first_unit: int, count: int) -> list[int]:
    """Algorithm 2: layer i of Sa takes layer i of Sb if i < AS, else layer i + M."""
    return [i if i < first_unit else i + count for i in range(num_small)]


def insert_units(base, stage: int, count: int):
    """Nb = Add_Unit(AS, M, Na): the model with ``count`` identity-initialised Units appended to
    stage ``stage``, every other layer's tensors copied from ``base`` by Algorithm 2's mapping.
    Without training it computes what ``base`` computes."""
    model = base.rebuilt(with_units(base.spec, stage, count))
    first = first_layer_index(model.plan, stage, count)
    mapping = index_mapping(len(base.plan), first, count)
    state = rename_layers(base.state_dict(), dict(enumerate(mapping)))
    for index in range(first, first + count):
        model.layers[index].init_identity()
        state.update({f"layers.{index}.{k}": v for k, v in model.layers[index].state_dict().items()})
    model.load_state_dict(state)
    return model


def remove_units(model, stage: int, count: int, named: str | None = None):
    """Algorithm 2: the model without the trailing ``count`` layers of stage ``stage``; every other
    layer (weights, bias, threshold, leak) copied by the index mapping. Returns (model, AS)."""
    spec, first = without_layers(model.spec, stage, count, named)
    small = model.rebuilt(spec)
    mapping = index_mapping(len(small.plan), first, count)
    small.load_state_dict(rename_layers(model.state_dict(), {large: i for i, large in enumerate(mapping)}))
    return small, first


def rename_layers(state: dict[str, torch.Tensor], rename: dict[int, int]) -> dict[str, torch.Tensor]:
    """Copy tensors ``layers.<old>.*`` to ``layers.<new>.*`` for each old -> new in ``rename``.

    Layers not named in ``rename`` are dropped (spatial pruning drops the Units
    this way). Spatial pruning renames ``{mapping[i]: i}``; adding Units renames
    ``{i: mapping[i]}``, the same mapping read the other way.
    """
    out = {}
    for key, tensor in state.items():
        _, index, rest = key.split(".", 2)
        if int(index) in rename:
            out[f"layers.{rename[int(index)]}.{rest}"] = tensor.clone()
    return out
