"""The layer plan: a spec expanded into an ordered list of layer entries.

Both the ANN and the SNN are built from the same plan, and their state dicts
share its indices (``layers.<i>.…``), so Units, Algorithm 2's index mapping,
BN folding and the MAC count all speak about the same layers.

Entry types: ``conv`` (conv3 + BN + ReLU/LIF), ``block`` (ResNet BasicBlock),
``pool`` (average or max pooling: its ``mode``), ``flatten``, ``global_pool``, ``fc`` (hidden linear
+ ReLU/LIF + dropout), ``output`` (the classifier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Required, TypedDict

from stpcli.defaults import DEFAULT_POOLING
from stpcli.spec import ModelSpec

# One layer of the plan; which keys an entry has depends on its type (LAYER_TYPES).
PlanEntry = TypedDict("PlanEntry", {
    "type": Required[str], "in": int, "out": int, "kernel": int, "stride": int, "padding": int,
    "group": int, "unit": bool, "dropout": float, "mode": str,
}, total=False)


@dataclass(frozen=True)
class LayerType:
    """What every part of stp needs to know about one kind of plan entry. The ANN and SNN modules
    for each type are in ``models.ann.ANN_LAYERS`` and ``spiking.network.SNN_LAYERS`` (a test
    checks both cover this table)."""

    weights: bool  # has synaptic weights (counted as a weight layer)
    neuron: bool  # ends in ReLU (ANN) / LIF neurons (SNN)
    unit: bool  # can be a Unit: a shape-preserving layer of a layer group


LAYER_TYPES: dict[str, LayerType] = {
    "conv": LayerType(weights=True, neuron=True, unit=True),
    "block": LayerType(weights=True, neuron=True, unit=True),
    "pool": LayerType(weights=False, neuron=False, unit=False),
    "global_pool": LayerType(weights=False, neuron=False, unit=False),
    "flatten": LayerType(weights=False, neuron=False, unit=False),
    "fc": LayerType(weights=True, neuron=True, unit=False),
    "output": LayerType(weights=True, neuron=False, unit=False),
}

PLAN_BUILDERS: dict[str, Callable[[ModelSpec], list[PlanEntry]]] = {}


def plan_builder(family: str):
    """Register the function that expands a family's spec into its layer plan."""
    def wrap(function):
        PLAN_BUILDERS[family] = function
        return function

    return wrap


def build_plan(spec: ModelSpec) -> list[PlanEntry]:
    builder = PLAN_BUILDERS.get(spec["family"])
    if builder is None:
        raise ValueError(f"no layer plan for the architecture family {spec['family']!r}")
    return builder(spec)


def group_layers(plan: list[PlanEntry], group: int) -> list[int]:
    """Plan indices of the layers of ``group`` that could be Units (conv layers, residual blocks)."""
    return [i for i, e in enumerate(plan) if LAYER_TYPES[e["type"]].unit and e.get("group") == group]


def has_neuron(entry: PlanEntry) -> bool:
    return LAYER_TYPES[entry["type"]].neuron


def has_weights(entry: PlanEntry) -> bool:
    return LAYER_TYPES[entry["type"]].weights


def pooling_mode(spec: ModelSpec) -> str:
    """How the spec's pooling layers pool: "avg" or "max" (train-ann's --pool; a record from before
    the option averages)."""
    return spec.get("pool", DEFAULT_POOLING)


def _unit_flags(spec: ModelSpec, group: int, depth: int) -> list[bool]:
    units = spec.get("units")
    count = units["count"] if units and units["group"] == group else 0
    return [j >= depth - count for j in range(depth)]


@plan_builder("vgg")
def _vgg_plan(spec: ModelSpec) -> list[PlanEntry]:
    plan: list[PlanEntry] = []
    channels = spec["in_channels"]
    for group, (depth, width) in enumerate(zip(spec["depths"], spec["channels"]), start=1):
        for is_unit in _unit_flags(spec, group, depth):
            plan.append({"type": "conv", "in": channels, "out": width, "kernel": 3, "stride": 1,
                         "padding": 1, "group": group, "unit": is_unit})
            channels = width
        plan.append({"type": "pool", "kernel": 2, "stride": 2, "padding": 0, "group": group, "mode": pooling_mode(spec)})
    side = spec["image_size"] // 2 ** len(spec["depths"])
    plan.append({"type": "flatten"})
    features = channels * side * side
    for hidden in spec["hidden"]:
        plan.append({"type": "fc", "in": features, "out": hidden, "dropout": spec["dropout"]})
        features = hidden
    plan.append({"type": "output", "in": features, "out": spec["num_classes"]})
    return plan


@plan_builder("resnet")
def _resnet_plan(spec: ModelSpec) -> list[PlanEntry]:
    stem = spec["channels"][0]
    plan: list[PlanEntry] = [
        {"type": "conv", "in": spec["in_channels"], "out": stem, "kernel": 7, "stride": 2, "padding": 3,
         "group": 0, "unit": False},
        {"type": "pool", "kernel": 3, "stride": 2, "padding": 1, "group": 0, "mode": pooling_mode(spec)},
    ]
    channels = stem
    for group, (depth, width) in enumerate(zip(spec["depths"], spec["channels"]), start=1):
        for j, is_unit in enumerate(_unit_flags(spec, group, depth)):
            stride = 2 if (j == 0 and group > 1) else 1
            plan.append({"type": "block", "in": channels, "out": width, "stride": stride, "group": group,
                         "unit": is_unit})
            channels = width
    plan.append({"type": "global_pool"})
    plan.append({"type": "output", "in": channels, "out": spec["num_classes"]})
    return plan


def is_shape_preserving(entry: PlanEntry) -> bool:
    return LAYER_TYPES[entry["type"]].unit and entry["in"] == entry["out"] and entry["stride"] == 1


@dataclass
class SynapticLayer:
    """One weight layer: its MACs per image and the spiking layer that feeds it."""

    name: str  # module path, e.g. layers.3.conv
    index: int  # plan index
    macs: int
    source: str | None  # neuron module path feeding it; None for the analog input


def conv_side(size: int, kernel: int, stride: int, padding: int) -> int:
    """The side of a convolution's (or pooling's) output map."""
    return (size + 2 * padding - kernel) // stride + 1


def output_side(entry: PlanEntry, side: int) -> int:
    """The side of the map a plan entry makes from a map of side ``side`` (1 once flattened)."""
    if entry["type"] in ("conv", "pool"):
        return conv_side(side, entry["kernel"], entry["stride"], entry["padding"])
    if entry["type"] == "block":
        return conv_side(side, 3, entry["stride"], 1)
    return 1


def input_sides(plan: list[PlanEntry], image_size: int) -> list[int]:
    """The side of the map each plan entry receives."""
    sides = [image_size]
    for entry in plan[:-1]:
        sides.append(output_side(entry, sides[-1]))
    return sides


def synaptic_layers(plan: list[PlanEntry], image_size: int) -> list[SynapticLayer]:
    """Walk shapes through the plan; list every weight layer with MACs and source neuron."""
    layers: list[SynapticLayer] = []
    source = None
    for i, (entry, side) in enumerate(zip(plan, input_sides(plan, image_size))):
        kind, out = entry["type"], output_side(entry, side)
        if kind == "conv":
            macs = entry["out"] * entry["in"] * entry["kernel"] ** 2 * out * out
            layers.append(SynapticLayer(f"layers.{i}.conv", i, macs, source))
            source = f"layers.{i}.neuron"
        elif kind == "block":
            per_pixel = entry["out"] * out * out
            layers.append(SynapticLayer(f"layers.{i}.conv1", i, per_pixel * entry["in"] * 9, source))
            layers.append(SynapticLayer(f"layers.{i}.conv2", i, per_pixel * entry["out"] * 9, f"layers.{i}.neuron1"))
            if entry["stride"] != 1 or entry["in"] != entry["out"]:
                layers.append(SynapticLayer(f"layers.{i}.shortcut", i, per_pixel * entry["in"], source))
            source = f"layers.{i}.neuron2"
        elif kind in ("fc", "output"):
            layers.append(SynapticLayer(f"layers.{i}.fc", i, entry["in"] * entry["out"], source))
            source = f"layers.{i}.neuron"
    return layers


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def tensor_shapes(plan: list[PlanEntry], kind: str, binary: bool = False,
                  quantized: bool = False) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the tensors an ANN (``kind="ann"``: convolutions without bias, then
    BN) or an SNN (BN folded into biased convolutions, a threshold and a leak per neuron layer)
    built from ``plan`` holds, worked out without building it (and without torch), so a file can
    be checked against its record before anything is allocated. A test compares this with the
    modules' own state dicts for every architecture."""
    shapes: dict[str, tuple[int, ...]] = {}

    def integer(name: str, weight: tuple[int, ...]) -> None:  # a quantized SNN's integer form (spiking/quantize.py)
        if quantized:
            shapes[f"{name}.weight_int"], shapes[f"{name}.weight_step"] = weight, weight[:1]

    def conv(name: str, cin: int, cout: int, kernel: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, kernel, kernel)
        if kind == "snn":
            shapes[f"{name}.bias"] = (cout,)
            integer(name, (cout, cin, kernel, kernel))

    def neuron(name: str, channels: int = 0) -> None:
        if kind == "snn":
            shapes[f"{name}.threshold"] = shapes[f"{name}.leak"] = ()
            if quantized:
                shapes[f"{name}.threshold_int"] = (channels,)

    for i, entry in enumerate(plan):
        at, layer = f"layers.{i}", entry["type"]
        if layer == "conv":
            conv(f"{at}.conv", entry["in"], entry["out"], entry["kernel"])
            if kind == "ann":
                shapes.update(_bn(f"{at}.bn", entry["out"]))
            neuron(f"{at}.neuron", entry["out"])
        elif layer == "block":
            cin, cout = entry["in"], entry["out"]
            projection = entry["stride"] != 1 or cin != cout
            for name, a, b in (("1", cin, cout), ("2", cout, cout)):
                conv(f"{at}.conv{name}", a, b, 3)
                if kind == "ann":
                    shapes.update(_bn(f"{at}.bn{name}", cout))
                neuron(f"{at}.neuron{name}", cout)
            if projection and kind == "ann":
                conv(f"{at}.shortcut.conv", cin, cout, 1)
                shapes.update(_bn(f"{at}.shortcut.bn", cout))
            elif projection:
                conv(f"{at}.shortcut", cin, cout, 1)
            elif kind == "snn" and binary:
                shapes[f"{at}.shortcut_scale"] = ()
                if quantized:
                    shapes[f"{at}.shortcut_int"] = (cout,)
        elif layer in ("fc", "output"):
            shapes[f"{at}.fc.weight"], shapes[f"{at}.fc.bias"] = (entry["out"], entry["in"]), (entry["out"],)
            if kind == "snn":
                integer(f"{at}.fc", (entry["out"], entry["in"]))
            if layer == "fc":
                neuron(f"{at}.neuron", entry["out"])
    return shapes


def describe(entry: PlanEntry) -> str:
    kind = entry["type"]
    if kind == "conv":
        return f"conv{entry['kernel']}-{entry['out']}" + (f"/{entry['stride']}" if entry["stride"] > 1 else "")
    if kind == "block":
        return f"block-{entry['out']}" + (f"/{entry['stride']}" if entry["stride"] > 1 else "")
    if kind == "pool":
        return f"{entry['mode']}pool{entry['kernel']}"
    if kind in ("fc", "output"):
        return f"fc-{entry['out']}"
    return kind.replace("_", "-")
