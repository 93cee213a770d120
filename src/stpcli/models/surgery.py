"""Adding and removing shape-preserving layers, and Algorithm 2's index mapping.

Units are the trailing ``count`` layers of layer group ``group`` (the paper's stage AS, section 3.2).
``index_mapping`` is Algorithm 2: for each layer i of the smaller network,
the layer of the larger network whose tensors it takes.
"""

from __future__ import annotations

import copy

import torch

from stpcli.errors import StpError
from stpcli.models.plan import PlanEntry, build_plan, group_layers, is_shape_preserving
from stpcli.spec import MAX_LAYERS_PER_GROUP, ModelSpec


def group_range(spec: ModelSpec) -> range:
    return range(1, len(spec["depths"]) + 1)


def check_group(spec: ModelSpec, group: int) -> None:
    if group not in group_range(spec):
        raise StpError(
            f"--as {group} is out of range: {spec['arch']} has layer groups 1..{len(spec['depths'])}"
        )


def with_units(spec: ModelSpec, group: int, count: int) -> ModelSpec:
    """The spec of Nb: ``count`` Units appended to group ``group`` of Na."""
    check_group(spec, group)
    existing = spec.get("units")
    if existing:
        raise StpError(
            f"the model already has {existing['count']} Unit(s) in group {existing['group']}; "
            "add Units to the base ANN"
        )
    room = MAX_LAYERS_PER_GROUP - spec["depths"][group - 1]
    if not 1 <= count <= room:
        raise StpError(f"--m must lie in 1..{room} (a layer group holds at most {MAX_LAYERS_PER_GROUP} layers and "
                       f"group {group} has {spec['depths'][group - 1]}), got {count}")
    new = copy.deepcopy(spec)
    new["depths"][group - 1] += count
    new["units"] = {"group": group, "count": count}
    return new


def first_layer_index(plan: list[PlanEntry], group: int, count: int) -> int:
    """Plan index of the first of the trailing ``count`` layers of ``group`` (Algorithm 2's AS)."""
    members = group_layers(plan, group)
    return members[len(members) - count]


def without_layers(spec: ModelSpec, group: int, count: int, named: str | None = None) -> tuple[ModelSpec, int]:
    """The spec with the trailing ``count`` layers of ``group`` removed, and AS (their first index).

    ``named`` says where the layers were named (default: the --as/--m options) for the error message.
    """
    check_group(spec, group)
    if count < 1:
        raise StpError(f"--m must be at least 1, got {count}")
    named = named or f"--as {group} --m {count}"
    plan = build_plan(spec)
    members = group_layers(plan, group)
    removable = 0
    for i in reversed(members):
        if not is_shape_preserving(plan[i]) or removable == len(members) - 1:
            break
        removable += 1
    if count > removable:
        raise StpError(
            f"{named} asks to remove {count} layer(s), but group {group} ends in only "
            f"{removable} removable (shape-preserving) layer(s)"
        )
    new = copy.deepcopy(spec)
    new["depths"][group - 1] -= count
    units = spec.get("units")
    if units and units["group"] == group:
        left = units["count"] - count
        new["units"] = {"group": group, "count": left} if left > 0 else None
    return new, first_layer_index(plan, group, count)


def units_to_remove(spec: ModelSpec, group: int | None, count: int | None) -> tuple[int, int, str]:
    """What spatial-prune removes: the recorded Units by default, or the layers ``--as``/``--m`` name;
    (group, count, how they were named). When the spec records its Units, --as/--m must name exactly
    those: removing a base layer instead writes a broken network."""
    units = spec.get("units")
    named = f"--as {group} --m {count}"
    if group is None or count is None:
        if not units:
            raise StpError("the checkpoint has no Units recorded; pass --as and --m to name the layers to remove")
        if group is None and count is None:
            named = f"the recorded Units (group {units['group']}, M={units['count']})"
        elif group is None:
            named = f"--m {count} in the recorded Unit group {units['group']}"
        else:
            named = f"--as {group} with the recorded M={units['count']}"
        group = units["group"] if group is None else group
        count = units["count"] if count is None else count
    without_layers(spec, group, count, named)
    if units and (group, count) != (units["group"], units["count"]):
        first = first_layer_index(build_plan(spec), units["group"], units["count"])
        raise StpError(f"{named} names other layers than this checkpoint's Units: {units['count']} Unit(s) at the "
                       f"end of layer group {units['group']} (layers {first}..{first + units['count'] - 1}); leave "
                       f"--as and --m out to remove them (or pass --as {units['group']} --m {units['count']})")
    return group, count, named


def index_mapping(num_small: int, first_unit: int, count: int) -> list[int]:
    """Algorithm 2: layer i of Sa takes layer i of Sb if i < AS, else layer i + M."""
    return [i if i < first_unit else i + count for i in range(num_small)]


def insert_units(base, group: int, count: int):
    """Nb = Add_Unit(AS, M, Na): the model with ``count`` identity-initialised Units appended to
    group ``group``, every other layer's tensors copied from ``base`` by Algorithm 2's mapping.
    Without training it computes what ``base`` computes."""
    model = base.rebuilt(with_units(base.spec, group, count))
    first = first_layer_index(model.plan, group, count)
    mapping = index_mapping(len(base.plan), first, count)
    state = rename_layers(base.state_dict(), dict(enumerate(mapping)))
    for index in range(first, first + count):
        model.layers[index].init_identity()
        state.update({f"layers.{index}.{k}": v for k, v in model.layers[index].state_dict().items()})
    model.load_state_dict(state)
    return model


def remove_units(model, group: int, count: int, named: str | None = None):
    """Algorithm 2: the model without the trailing ``count`` layers of group ``group``; every other
    layer (weights, bias, threshold, leak) copied by the index mapping. Returns (model, AS)."""
    spec, first = without_layers(model.spec, group, count, named)
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
