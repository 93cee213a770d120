"""Which neuromorphic chip a one-time-step SNN fits (``stp hardware``), from each chip's published
limits, checked against the checkpoint's layers and bit widths without torch. Each failed check
is one line: what does not fit and the change that would make it fit.

Sources of the limits (the table below says which applies where):

* BrainChip Akida 1.0 (AKD1000, AKD1500): akida_examples, ``doc/user_guide/hardware/1.0.rst``:
  input layer 1 or 3 channels, width <= 256, 8-bit weights, kernels 3/5/7 with at most 192
  (3 channels) or 512 (1 channel) 3x3 filters; other convolutions 1x1/3x3/5x5/7x7, stride 1 (2
  with 3x3 only), <= 2048 input channels, 1/2/4-bit weights, pooling 2x2 max inside a layer or
  global average (height <= 32), so VGG fits with ``train-ann --pool max``; fully connected inputs
  <= 57334; no layer adds two inputs.
  How many neurons one of its cores holds is not published, so stp does not check it.
* SynSense Speck / DYNAP-CNN: sinabs ``backend/dynapcnn`` (``chips/dynapcnn.py``,
  ``dynapcnn_layer.py::memory_summary``): 9 cores, one layer each; kernel memory 16, 16, 16, 32,
  32, 64, 64, 16, 16 Ki entries and neuron memory 64, 64, 64, 32, 32, 16, 16, 16, 16 Ki per core;
  a layer needs c * 2^(ceil(log2 k^2) + ceil(log2 f)) kernel entries and f * 2^(ceil(log2 h) +
  ceil(log2 w)) neurons; 8-bit weights, square kernels <= 16, stride 1/2/4/8, sum pooling 1/2/4 after
  the neurons; its cores take spike events, so an analog first layer runs off-chip.
* Intel Loihi 2 (lava-dl): 8-bit weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stpcli.errors import StpError
from stpcli.models.plan import PlanEntry, build_plan, input_sides, output_side, synaptic_layers

KI = 1024
SPECK_CORES = [(16 * KI, 64 * KI), (16 * KI, 64 * KI), (16 * KI, 64 * KI), (32 * KI, 32 * KI), (32 * KI, 32 * KI),
               (64 * KI, 16 * KI), (64 * KI, 16 * KI), (16 * KI, 16 * KI), (16 * KI, 16 * KI)]  # (kernel, neuron)
TARGETS = {"akida1": "BrainChip Akida 1.0 (AKD1000)", "speck": "SynSense Speck / DYNAP-CNN",
           "loihi2": "Intel Loihi 2"}


@dataclass
class Finding:
    where: str  # the layer, or "network"
    problem: str
    fix: str


def _layers(plan: list[PlanEntry], image_size: int) -> list[dict]:
    """Each synapse with its plan entry and whether it reads the input image."""
    return [{"name": layer.name, "index": layer.index, "entry": plan[layer.index], "first": layer.source is None}
            for layer in synaptic_layers(plan, image_size)]


def _sides(plan: list[PlanEntry], image_size: int) -> dict[int, int]:
    """The side of the map each plan entry outputs."""
    return {index: output_side(entry, side) for index, (entry, side) in enumerate(zip(plan, input_sides(plan, image_size)))}


def check(record: dict, target: str) -> list[Finding]:
    """Every reason ``record``'s network does not fit ``target`` (empty: it fits)."""
    if target not in TARGETS:
        raise StpError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    findings: list[Finding] = []
    spec, plan = record["model"], build_plan(record["model"])
    quantized = record.get("quantized")
    bits = quantized["weight_bits"] if quantized else None
    first_bits = quantized["input_layer_bits"] if quantized else None
    if record["kind"] != "snn" or record.get("timesteps") != 1:
        findings.append(Finding("network", "is not a one-time-step SNN", "convert and temporal-prune it to T = 1"))
    if not quantized:
        findings.append(Finding("network", "holds float weights", "stp quantize it (--weight-bits 8, 4 or 2)"))
    layers, sides = _layers(plan, spec["image_size"]), _sides(plan, spec["image_size"])
    if target == "akida1":
        if spec["in_channels"] not in (1, 3):
            findings.append(Finding("input", f"has {spec['in_channels']} bands; Akida 1.0's input layer reads 1 or 3",
                                    "train on 3 bands (--bands) or 1"))
        if spec["image_size"] > 256:
            findings.append(Finding("input", f"is {spec['image_size']} px wide; Akida 1.0 reads at most 256",
                                    "a smaller --image-size"))
        if first_bits not in (None, 8):
            findings.append(Finding("input layer", f"holds {first_bits}-bit weights; Akida 1.0's input layer holds 8-bit",
                                    "stp quantize --input-layer-bits 8"))
        if bits is not None and bits not in (1, 2, 4):
            findings.append(Finding("hidden layers", f"hold {bits}-bit weights; Akida 1.0 holds 1, 2 or 4-bit",
                                    "stp quantize --weight-bits 4 (or 2)"))
        for layer in layers:
            entry = layer["entry"]
            if entry["type"] == "block" and layer["name"].endswith("conv2"):
                findings.append(Finding(layer["name"], "adds its shortcut to its convolution; Akida 1.0 layers have one "
                                        "input", "a VGG network (--arch vgg11, vgg14, vgg16)"))
            if entry["type"] in ("conv", "block"):
                kernel = entry.get("kernel", 3)
                stride = entry["stride"] if not layer["name"].endswith("conv2") else 1
                if layer["first"]:
                    if kernel not in (3, 5, 7):
                        findings.append(Finding(layer["name"], f"is a {kernel}x{kernel} input convolution; Akida 1.0 "
                                                "takes 3x3, 5x5, 7x7", "-"))
                    limit = {1: {3: 512, 5: 192, 7: 96}, 3: {3: 192, 5: 64, 7: 32}}.get(
                        spec["in_channels"], {}).get(kernel)
                    if limit is not None and entry["out"] > limit:
                        findings.append(Finding(layer["name"], f"has {entry['out']} filters; Akida 1.0's {kernel}x{kernel} "
                                                f"input layer holds at most {limit}", "a smaller --width"))
                elif stride == 2 and kernel != 3 or stride > 2:
                    findings.append(Finding(layer["name"], f"has stride {stride} with a {kernel}x{kernel} kernel; Akida "
                                            "1.0 strides by 2 with 3x3 kernels only", "-"))
                if entry["in"] > 2048:
                    findings.append(Finding(layer["name"], f"reads {entry['in']} channels; Akida 1.0 at most 2048",
                                            "a smaller --width"))
            if entry["type"] in ("fc", "output") and entry["in"] > 57334:
                findings.append(Finding(layer["name"], f"reads {entry['in']} inputs; Akida 1.0 at most 57334",
                                        "a smaller --width or --image-size"))
        for index, entry in enumerate(plan):
            if entry["type"] == "pool" and entry["mode"] != "max":
                findings.append(Finding(f"layers.{index}", f"averages {entry['kernel']}x{entry['kernel']} windows; "
                                        "Akida 1.0 pools by 2x2 max inside a layer or by a global average",
                                        "max pooling of spikes (train-ann --pool max)"))
            elif entry["type"] == "pool" and (entry["kernel"], entry["stride"], entry["padding"]) != (2, 2, 0):
                findings.append(Finding(f"layers.{index}", f"max-pools {entry['kernel']}x{entry['kernel']} windows by "
                                        f"stride {entry['stride']}; Akida 1.0 max-pools 2x2 windows by 2",
                                        "a VGG network (--arch vgg11, vgg14, vgg16)"))
            if entry["type"] == "global_pool" and sides.get(index - 1, 0) > 32:
                findings.append(Finding(f"layers.{index}", "averages a map higher than 32; Akida 1.0 at most 32",
                                        "a smaller --image-size"))
    elif target == "speck":
        if bits is not None and max(bits, first_bits or 0) > 8:
            findings.append(Finding("network", "holds weights wider than 8 bits", "stp quantize --weight-bits 8"))
        findings.append(Finding(layers[0]["name"], "reads analog pixel values; Speck's cores take spike events",
                                "run the first convolution off-chip, or encode the image as events"))
        for index, entry in enumerate(plan):
            if entry["type"] == "pool" and entry["mode"] == "max":
                findings.append(Finding(f"layers.{index}", "max-pools; Speck pools by sum", "train-ann --pool avg"))
            elif entry["type"] == "pool" and not (entry["kernel"] == entry["stride"] in (1, 2, 4) and not entry["padding"]):
                findings.append(Finding(f"layers.{index}", f"pools {entry['kernel']}x{entry['kernel']} windows by stride "
                                        f"{entry['stride']}; Speck sum-pools 1x1, 2x2 or 4x4 windows by their size",
                                        "a VGG network"))
        needs = []
        for layer in layers:
            entry = layer["entry"]
            if entry["type"] == "block":
                if layer["name"].endswith("conv2"):
                    findings.append(Finding(layer["name"], "adds its shortcut; a Speck core has one input",
                                            "a VGG network"))
                continue
            if layer["first"] or entry["type"] == "output":
                continue
            # a linear layer becomes a convolution over the map it reads (1x1 after another linear layer)
            flattened = plan[layer["index"] - 1]["type"] == "flatten"
            kernel = entry.get("kernel", sides[layer["index"] - 2] if flattened else 1)
            channels = entry["in"] // (kernel * kernel) if entry["type"] == "fc" else entry["in"]
            stride = entry.get("stride", 1)
            if kernel > 16:
                findings.append(Finding(layer["name"], f"has a {kernel}x{kernel} kernel; Speck's are at most 16x16",
                                        "a smaller --image-size"))
            if stride not in (1, 2, 4, 8):
                findings.append(Finding(layer["name"], f"has stride {stride}; Speck strides by 1, 2, 4 or 8", "-"))
            side = sides[layer["index"]] if entry["type"] == "conv" else 1
            kernel_entries = channels * 2 ** (math.ceil(math.log2(kernel * kernel)) + math.ceil(math.log2(entry["out"])))
            neurons = entry["out"] * 2 ** (2 * math.ceil(math.log2(max(side, 1))))
            needs.append((layer["name"], kernel_entries, neurons))
        if len(needs) > len(SPECK_CORES):
            findings.append(Finding("network", f"has {len(needs)} neuron layers on the chip; Speck has {len(SPECK_CORES)} "
                                    "cores", "fewer layers (vgg11 at a smaller depth)"))
        else:
            findings += _speck_assignment(needs)
    elif target == "loihi2" and bits is not None and max(bits, first_bits or 0) > 8:
        findings.append(Finding("network", "holds weights wider than 8 bits", "stp quantize --weight-bits 8"))
    return findings


def _speck_assignment(needs: list[tuple[str, int, int]]) -> list[Finding]:
    """Give each layer a core with room for its kernel entries and neurons (bipartite matching); the
    layers no core can hold, each with what it needs."""
    fits = [[c for c, (kernel, neurons) in enumerate(SPECK_CORES) if k <= kernel and n <= neurons] for _, k, n in needs]
    owner: dict[int, int] = {}

    def place(layer: int, seen: set[int]) -> bool:
        for core in fits[layer]:
            if core not in seen:
                seen.add(core)
                if core not in owner or place(owner[core], seen):
                    owner[core] = layer
                    return True
        return False

    findings = []
    for layer, (name, kernel, neurons) in enumerate(needs):
        if not place(layer, set()):
            findings.append(Finding(name, f"needs {kernel / KI:g} Ki kernel entries and {neurons / KI:g} Ki neurons; no "
                                    "free Speck core holds both (its cores hold 16-64 Ki kernel entries and 16-64 Ki neurons, "
                                    "the more of one the fewer of the other)",
                                    "a smaller --width or --image-size"))
    return findings
