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
from dataclasses import dataclass, replace
from typing import Required, TypedDict

from stpcli.defaults import DEFAULT_POOLING
from stpcli.spec import ModelSpec

# One layer of the plan; which keys an entry has depends on its type (LAYER_TYPES).
PlanEntry = TypedDict("PlanEntry", {
    "type": Required[str], "in": int, "out": int, "kernel": int, "stride": int, "padding": int,
    "group": int, "unit": bool, "dropout": float, "mode": str,
}, total=False)


def conv_side(size: int, kernel: int, stride: int, padding: int) -> int:
    """The side of a convolution's (or pooling's) output map."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class SynapticLayer:
    """One weight layer: its MACs per image and the spiking layer that feeds it."""

    name: str  # module path, e.g. layers.3.conv
    macs: int
    source: str | None  # neuron module path feeding it; None for the analog input
    index: int = -1  # plan index


class TensorShapes(dict):
    """The names and shapes of a network's tensors, filled in by each layer type (``tensor_shapes``)."""

    def __init__(self, kind: str, binary: bool, quantized: bool):
        super().__init__()
        self.snn, self.binary, self.quantized = kind == "snn", binary, quantized

    def synapse(self, name: str, weight: tuple[int, ...], bias: bool = False) -> None:
        """A convolution (bias: the SNN's, where BN is folded in) or a linear layer (always biased)."""
        self[f"{name}.weight"] = weight
        if self.snn or bias:
            self[f"{name}.bias"] = weight[:1]
        if self.snn and self.quantized:  # a quantized SNN's integer form (spiking/quantize.py)
            self[f"{name}.weight_int"], self[f"{name}.weight_step"] = weight, weight[:1]

    def batchnorm(self, name: str, channels: int) -> None:
        if not self.snn:
            self.update({f"{name}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")})
            self[f"{name}.num_batches_tracked"] = ()

    def neuron(self, name: str, channels: int) -> None:
        if self.snn:
            self[f"{name}.threshold"] = self[f"{name}.leak"] = ()
            if self.quantized:
                self[f"{name}.threshold_int"] = (channels,)


@dataclass(frozen=True)
class LayerType:
    """What every part of stp needs to know about one kind of plan entry: its flags, the side of
    the map it makes, its synapses, its tensors and its name in tables. The ANN and SNN modules for
    each type are in ``models.ann.ANN_LAYERS`` and ``spiking.network.SNN_LAYERS`` (a test checks
    both cover this table)."""

    weights: bool = False  # has synaptic weights (counted as a weight layer)
    neuron: bool = False  # ends in ReLU (ANN) / LIF neurons (SNN)
    unit: bool = False  # can be a Unit: a shape-preserving layer of a layer group

    def output_side(self, entry: PlanEntry, side: int) -> int:
        return 1  # flattened

    def synapses(self, entry: PlanEntry, at: str, side: int, source: str | None) -> tuple[list[SynapticLayer], str | None]:
        """(its synapses, given the side of its output and the neurons that feed it; the neurons that
        feed the next layer)."""
        return [], source

    def tensors(self, entry: PlanEntry, at: str, shapes: TensorShapes) -> None:
        return None

    def describe(self, entry: PlanEntry) -> str:
        return entry["type"].replace("_", "-")


class Conv(LayerType):
    def output_side(self, entry, side):
        return conv_side(side, entry["kernel"], entry["stride"], entry["padding"])

    def synapses(self, entry, at, side, source):
        macs = entry["out"] * entry["in"] * entry["kernel"] ** 2 * side * side
        return [SynapticLayer(f"{at}.conv", macs, source)], f"{at}.neuron"

    def tensors(self, entry, at, shapes):
        shapes.synapse(f"{at}.conv", (entry["out"], entry["in"], entry["kernel"], entry["kernel"]))
        shapes.batchnorm(f"{at}.bn", entry["out"])
        shapes.neuron(f"{at}.neuron", entry["out"])

    def describe(self, entry):
        return f"conv{entry['kernel']}-{entry['out']}" + (f"/{entry['stride']}" if entry["stride"] > 1 else "")


class Block(LayerType):
    """A ResNet BasicBlock: conv3 + BN + neurons, conv3 + BN, the shortcut added, neurons."""

    def output_side(self, entry, side):
        return conv_side(side, 3, entry["stride"], 1)

    def synapses(self, entry, at, side, source):
        per_pixel = entry["out"] * side * side
        synapses = [SynapticLayer(f"{at}.conv1", per_pixel * entry["in"] * 9, source),
                    SynapticLayer(f"{at}.conv2", per_pixel * entry["out"] * 9, f"{at}.neuron1")]
        if projects(entry):
            synapses.append(SynapticLayer(f"{at}.shortcut", per_pixel * entry["in"], source))
        return synapses, f"{at}.neuron2"

    def tensors(self, entry, at, shapes):
        cin, cout = entry["in"], entry["out"]
        for name, channels in (("1", cin), ("2", cout)):
            shapes.synapse(f"{at}.conv{name}", (cout, channels, 3, 3))
            shapes.batchnorm(f"{at}.bn{name}", cout)
            shapes.neuron(f"{at}.neuron{name}", cout)
        if projects(entry):  # a 1x1 conv + BN (ANN), folded into one biased conv (SNN)
            shapes.synapse(f"{at}.shortcut" + ("" if shapes.snn else ".conv"), (cout, cin, 1, 1))
            shapes.batchnorm(f"{at}.shortcut.bn", cout)
        elif shapes.snn and shapes.binary:
            shapes[f"{at}.shortcut_scale"] = ()
            if shapes.quantized:
                shapes[f"{at}.shortcut_int"] = (cout,)

    def describe(self, entry):
        return f"block-{entry['out']}" + (f"/{entry['stride']}" if entry["stride"] > 1 else "")


class Pool(LayerType):
    def output_side(self, entry, side):
        return conv_side(side, entry["kernel"], entry["stride"], entry["padding"])

    def describe(self, entry):
        return f"{entry['mode']}pool{entry['kernel']}"


class Linear(LayerType):
    """A hidden linear layer with its neurons (``fc``), or the classifier (``output``)."""

    def synapses(self, entry, at, side, source):
        return [SynapticLayer(f"{at}.fc", entry["in"] * entry["out"], source)], f"{at}.neuron" if self.neuron else None

    def tensors(self, entry, at, shapes):
        shapes.synapse(f"{at}.fc", (entry["out"], entry["in"]), bias=True)
        if self.neuron:
            shapes.neuron(f"{at}.neuron", entry["out"])

    def describe(self, entry):
        return f"fc-{entry['out']}"


LAYER_TYPES: dict[str, LayerType] = {
    "conv": Conv(weights=True, neuron=True, unit=True),
    "block": Block(weights=True, neuron=True, unit=True),
    "pool": Pool(),
    "global_pool": LayerType(),
    "flatten": LayerType(),
    "fc": Linear(weights=True, neuron=True),
    "output": Linear(weights=True),
}


def projects(entry: PlanEntry) -> bool:
    """Whether a residual block's shortcut is a 1x1 convolution (it changes stride or width)."""
    return entry["stride"] != 1 or entry["in"] != entry["out"]


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


def output_side(entry: PlanEntry, side: int) -> int:
    """The side of the map a plan entry makes from a map of side ``side`` (1 once flattened)."""
    return LAYER_TYPES[entry["type"]].output_side(entry, side)


def input_sides(plan: list[PlanEntry], image_size: int) -> list[int]:
    """The side of the map each plan entry receives."""
    sides = [image_size]
    for entry in plan[:-1]:
        sides.append(output_side(entry, sides[-1]))
    return sides


def synaptic_layers(plan: list[PlanEntry], image_size: int) -> list[SynapticLayer]:
    """Every weight layer of the plan with its MACs per image and the neurons that feed it."""
    layers: list[SynapticLayer] = []
    source = None
    for i, (entry, side) in enumerate(zip(plan, input_sides(plan, image_size))):
        synapses, source = LAYER_TYPES[entry["type"]].synapses(entry, f"layers.{i}", output_side(entry, side), source)
        layers += [replace(synapse, index=i) for synapse in synapses]
    return layers


def tensor_shapes(plan: list[PlanEntry], kind: str, binary: bool = False,
                  quantized: bool = False) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the tensors an ANN (``kind="ann"``: convolutions without bias, then
    BN) or an SNN (BN folded into biased convolutions, a threshold and a leak per neuron layer)
    built from ``plan`` holds, worked out without building it (and without torch), so a file can
    be checked against its record before anything is allocated. A test compares this with the
    modules' own state dicts for every architecture."""
    shapes = TensorShapes(kind, binary, quantized)
    for i, entry in enumerate(plan):
        LAYER_TYPES[entry["type"]].tensors(entry, f"layers.{i}", shapes)
    return dict(shapes)


def describe(entry: PlanEntry) -> str:
    return LAYER_TYPES[entry["type"]].describe(entry)
