"""NIR graphs of an SNN (the ``nir`` package; shapes exclude the batch dimension).

``portable`` (the default) is written for the consumers that read NIR (snnTorch's
``import_from_nir``, Norse's ``from_nir``, nirtorch), to run unmodified:

* the SNN as a chain of ``Conv2d`` and neuron nodes only (``export.convolutions``): pooling, flattening,
  linear layers and residual blocks expressed as convolutions, so no consumer meets a node type
  it does not map (``Scale``, ``AvgPool2d``), a ``Flatten`` that folds the batch, or a branch its
  executor runs in the wrong order; node names without dots;
* neurons as NIR's ``LIF`` read with Euler steps of ``dt = 1e-4`` s (snnTorch's fixed step; Norse
  takes ``dt`` as an argument): ``tau = dt / (1 - leak)``, ``r = 1``, ``v_leak = 0``, the feeding
  weights divided by ``1 - leak``, so ``v(t) = leak v(t-1) + I(t)`` as in stp; a layer with
  leak 1 is an ``IF`` node. At T = 1 the leak plays no part and every neuron is
  ``LIF(tau = dt, r = 1)``: ``v = I`` in one step from rest, the same in both consumers;
* the first step's ``leak x initial membrane`` is folded into the bias at T = 1, so starting
  every neuron at rest (what consumers do) is exact; at T > 1 the initial membrane ``f x V`` is
  each neuron node's ``metadata["initial_membrane"]``, for the consumer's initial state;
* stp subtracts the threshold on a spike (``reset: "subtract"`` in the metadata); NIR 1.0's
  neurons reset to ``v_reset`` (0). At T = 1 there is no reset to differ.

The logits are the output node's values summed over the T steps, the same image being the input
at every step (direct encoding); the output has shape (classes, 1, 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stpcli.checkpoint import Checkpoint
from stpcli.export.convolutions import Neurons, Synapse, integer_chain, passthrough_exact, snn_chain
from stpcli.models.plan import PlanEntry, build_plan, conv_side, output_side, synaptic_layers
from stpcli.spiking.network import SNN
from stpcli.spiking.neuron import LIF

GRAPHS = ("portable", "stp")
PORTABLE_DT = 1e-4  # seconds per time step the portable graph's neuron constants assume
VERIFIED = {  # by the tests (tests/test_deploy.py), unpatched
    "snntorch 1.0.0": "snntorch.import_nir.import_from_nir(graph), membranes kept between calls: T = 1 exact "
                      "(VGG, ResNet); T > 1: a layer with leak 1 (an IF node) does not run",
    "norse 1.1.0": "norse.torch.from_nir(graph, dt=1e-4): T = 1 exact (VGG, ResNet); T > 1 approximate "
                   "(its LIF resets to v_reset, not by subtraction): start each LIF state at "
                   "metadata['initial_membrane']",
}


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy().astype(np.float32)


def portable_graph(snn: SNN):
    """The portable graph (see the module docstring)."""
    one_step = snn.timesteps == 1
    chain = snn_chain(snn, fold_initial=one_step)
    exact_beyond_one_step = all(passthrough_exact(part) and part.leak < 1.0 for part in chain if isinstance(part, Neurons))
    metadata = {"producer": "stp", "graph": "portable", "timesteps": snn.timesteps, "dt": PORTABLE_DT,
                "encoding": "direct: the analog image is the input at every time step",
                "readout": "logits = output summed over the time steps; shape (classes, 1, 1)",
                "reset": "subtract (NIR 1.0 neurons reset to v_reset; no difference at T = 1)",
                "initial_membrane": "folded into the biases (T = 1)" if one_step
                else "each neuron node's metadata['initial_membrane']",
                "exact_in_consumers": "yes (T = 1)" if one_step else (
                    "only in a consumer that resets by subtraction and starts each neuron at its "
                    "metadata['initial_membrane']" if exact_beyond_one_step else
                    "no: a layer with leak 1 needs a subtracting IF, or a residual relay lags (see the README)"),
                "verified_consumers": VERIFIED}
    return _chain_graph(chain, (snn.spec["in_channels"], snn.spec["image_size"], snn.spec["image_size"]), one_step,
                        metadata)


def integer_graph(ckpt: Checkpoint):
    """A quantized checkpoint's integer network as a portable graph (``export.convolutions.integer_chain``)."""
    spec = ckpt.model_spec
    quantized = ckpt.record["quantized"]
    metadata = {"producer": "stp", "graph": "portable, integer", "timesteps": 1, "dt": PORTABLE_DT,
                "encoding": "the stored image values (0..255 for 8-bit images), no normalisation: it is folded "
                            "into the first layer's thresholds",
                "weights": f"integers ({quantized['weight_bits']}-bit, {quantized['input_layer_bits']}-bit in the "
                           "first layer); sum pooling; the output layer's weights are its integers times their "
                           "per-class step, its bias the float bias",
                "thresholds": "a channel's integer threshold theta is the integer bias -theta of the synapse "
                              "that feeds it; every neuron's v_threshold is 1/2, so an integer potential A fires "
                              "when A > theta, whether a consumer tests A - theta > 1/2 or >= 1/2",
                "readout": "logits = output; shape (classes, 1, 1)",
                "verified_consumers": VERIFIED}
    chain = integer_chain(spec, build_plan(spec), ckpt.tensors)
    later, largest_input = _float32_exactness(chain)
    metadata["exact_in_consumers"] = (
        f"every spike, in float32, for input values up to {largest_input:,}: every integer sum a consumer "
        f"forms stays below 2^24 (after the first layer at most {later:,})" if later < FLOAT32_EXACT else
        f"no: a layer's integer sums can reach {later:,}, beyond float32's exact integers (2^24)")
    return _chain_graph(chain, (spec["in_channels"], spec["image_size"], spec["image_size"]), True, metadata)


FLOAT32_EXACT = 2 ** 24  # every integer of smaller magnitude, and every sum of them that stays below it, is exact


def _float32_exactness(chain: list[Synapse | Neurons]) -> tuple[int, int]:
    """(the largest |partial sum| any synapse after the first can form, the largest input value for
    which the first synapse's sums stay below 2^24), from the integer chain's weights and biases:
    a synapse's sums are bounded by sum |w| x its largest input + |b|; neurons put out 0 or 1."""
    largest_in, later, first = 1, 0, None
    for position, part in enumerate(chain):
        if isinstance(part, Neurons):
            largest_in = 1
            continue
        if position == len(chain) - 1:
            break  # the readout: float weights, not an integer sum
        weights = np.abs(part.weight).reshape(part.weight.shape[0], -1).sum(axis=1)
        if first is None:
            first = int((FLOAT32_EXACT - 1 - np.abs(part.bias).max()) // max(1.0, weights.max()))
            largest_in = 1  # what a neuron layer after it puts out
            continue
        bound = int((weights * largest_in + np.abs(part.bias)).max())
        later = max(later, bound)
        if position + 1 < len(chain) and not isinstance(chain[position + 1], Neurons):
            largest_in = bound  # a pooling sum feeds the next synapse directly
    return later, max(0, first or 0)


def _chain_graph(chain: list[Synapse | Neurons], shape: tuple[int, ...], one_step: bool, metadata: dict):
    import nir

    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(shape)})}
    edges: list[tuple[str, str]] = []
    previous = "input"
    for position, part in enumerate(chain):
        if isinstance(part, Synapse):
            feeds = chain[position + 1] if position + 1 < len(chain) else None
            gain = 1.0
            if isinstance(feeds, Neurons) and not one_step and feeds.leak < 1.0:
                gain = 1.0 / (1.0 - feeds.leak)  # r = 1: the Euler step's dt / tau = 1 - leak, undone here
            nodes[part.name] = nir.Conv2d(input_shape=tuple(shape[1:]), weight=(part.weight * gain).astype(np.float32),
                                          stride=part.stride, padding=part.padding, dilation=1, groups=1,
                                          bias=(part.bias * gain).astype(np.float32))
        else:
            nodes[part.name] = _portable_neurons(nir, part, one_step)
        edges.append((previous, part.name))
        previous, shape = part.name, part.out_shape if isinstance(part, Synapse) else part.shape
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    edges.append((previous, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def _portable_neurons(nir, layer: Neurons, one_step: bool):
    def full(value: float) -> np.ndarray:
        return np.full(layer.shape, value, dtype=np.float32)

    metadata = {"reset": "subtract", "initial_membrane": layer.initial, "stp_leak": layer.leak,
                "stp_threshold": layer.threshold, "dt": PORTABLE_DT, "relay_channels": layer.passthrough}
    if one_step:
        return nir.LIF(tau=full(PORTABLE_DT), r=full(1.0), v_leak=full(0.0), v_threshold=full(layer.threshold),
                       metadata=metadata)
    if layer.leak >= 1.0:
        return nir.IF(r=full(1.0), v_threshold=full(layer.threshold), metadata=metadata)
    return nir.LIF(tau=full(PORTABLE_DT / (1.0 - layer.leak)), r=full(1.0), v_leak=full(0.0),
                   v_threshold=full(layer.threshold), metadata=metadata)


def nir_graph(snn: SNN, graph: str = "portable"):
    """The SNN as a NIR graph of the kind ``graph`` names (``GRAPHS``)."""
    return portable_graph(snn) if graph == "portable" else stp_graph(snn)


def _neuron_node(nir, neuron: LIF, initial: float, shape: tuple):
    """NIR neuron parameters are per neuron: stp's per-layer scalars, broadcast to the layer's shape."""
    threshold, leak = float(neuron.threshold), float(neuron.leak)
    metadata = {"reset": "subtract", "initial_membrane": initial * threshold, "dt": 1.0, "stp_leak": leak,
                "spike_amplitude": 1.0}

    def full(value: float) -> np.ndarray:
        return np.full(shape, value, dtype=np.float32)

    if leak >= 1.0:
        return nir.IF(r=full(1.0), v_threshold=full(threshold), metadata=metadata)
    tau = 1.0 / (1.0 - leak)
    return nir.LIF(tau=full(tau), r=full(tau), v_leak=full(0.0), v_threshold=full(threshold), metadata=metadata)


class _GraphWalk:
    """The stp-dialect graph under construction: its nodes and edges, the node the next layer reads
    and the shape it reads."""

    def __init__(self, nir, snn: SNN):
        self.nir, self.initial = nir, snn.settings.initial_membrane
        self.amplitudes = {name: m.spike_amplitude() for name, m in snn.neurons()}
        self.sources = {layer.name: layer.source for layer in synaptic_layers(snn.plan, snn.spec["image_size"])}
        self.shape: tuple[int, ...] = (snn.spec["in_channels"], snn.spec["image_size"], snn.spec["image_size"])
        self.nodes = {"input": nir.Input(input_type={"input": np.array(self.shape)})}
        self.edges: list[tuple[str, str]] = []
        self.previous = "input"

    def add(self, name: str, node, *feeds: str) -> str:
        self.nodes[name] = node
        self.edges.extend((feed, name) for feed in feeds)
        return name

    def amplitude(self, synapse: str) -> float:
        """The amplitude of the spikes the synaptic layer ``synapse`` ("layers.<i>.<name>") reads (1: the image)."""
        source = self.sources[synapse]
        return self.amplitudes[source] if source else 1.0

    def conv(self, index: int, name: str, module: Any, feed: str, in_shape) -> tuple[str, tuple[int, ...]]:
        weight = _array(module.weight * self.amplitude(f"layers.{index}.{name}"))
        node = self.nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=weight, stride=module.stride,
                               padding=module.padding, dilation=1, groups=1, bias=_array(module.bias))
        side = conv_side(in_shape[1], module.kernel_size[0], module.stride[0], module.padding[0])
        return self.add(f"layer{index}_{name}", node, feed), (module.out_channels, side, side)

    def neuron(self, name: str, module: LIF, feeds: list[str], shape: tuple) -> str:
        return self.add(name, _neuron_node(self.nir, module, self.initial, shape), *feeds)


def _graph_conv(walk: _GraphWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    current, walk.shape = walk.conv(index, "conv", layer.conv, walk.previous, walk.shape)
    walk.previous = walk.neuron(f"layer{index}_neuron", layer.neuron, [current], walk.shape)


def _graph_block(walk: _GraphWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    prefix, shape = f"layer{index}", walk.shape
    hidden, hidden_shape = walk.conv(index, "conv1", layer.conv1, walk.previous, shape)
    spikes = walk.neuron(f"{prefix}_neuron1", layer.neuron1, [hidden], hidden_shape)
    current, out_shape = walk.conv(index, "conv2", layer.conv2, spikes, hidden_shape)
    if layer.shortcut is not None:
        skip, _ = walk.conv(index, "shortcut", layer.shortcut, walk.previous, shape)
    else:
        # the shortcut carries the block's input spikes: their amplitude, or the constant
        # scale that binary-spike conversion gave it
        factor = (float(layer.shortcut_scale) if layer.shortcut_scale is not None
                  else walk.amplitude(f"layers.{index}.conv1"))
        skip = walk.add(f"{prefix}_skip", walk.nir.Scale(scale=np.full(shape, factor, dtype=np.float32)), walk.previous)
    walk.previous, walk.shape = walk.neuron(f"{prefix}_neuron2", layer.neuron2, [current, skip], out_shape), out_shape


def _graph_pool(walk: _GraphWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    k, s, p = entry["kernel"], entry["stride"], entry["padding"]
    pool = walk.nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([s, s]), padding=np.array([p, p]))
    walk.previous = walk.add(f"layer{index}_pool", pool, walk.previous)
    side = output_side(entry, walk.shape[1])
    walk.shape = (walk.shape[0], side, side)


def _graph_global_pool(walk: _GraphWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    window, channels = np.array(walk.shape[1:]), walk.shape[0]
    pool = walk.add(f"layer{index}_pool", walk.nir.AvgPool2d(kernel_size=window, stride=window, padding=np.array([0, 0])),
                    walk.previous)
    flatten = walk.nir.Flatten(input_type={"input": np.array([channels, 1, 1])}, start_dim=0)
    walk.previous, walk.shape = walk.add(f"layer{index}_flatten", flatten, pool), (channels,)


def _graph_flatten(walk: _GraphWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    flatten = walk.nir.Flatten(input_type={"input": np.array(walk.shape)}, start_dim=0)
    walk.previous, walk.shape = walk.add(f"layer{index}_flatten", flatten, walk.previous), (int(np.prod(walk.shape)),)


def _graph_linear(walk: _GraphWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    weight = _array(layer.fc.weight * walk.amplitude(f"layers.{index}.fc"))
    affine = walk.nir.Affine(weight=weight, bias=_array(layer.fc.bias))
    walk.previous, walk.shape = walk.add(f"layer{index}_fc", affine, walk.previous), (entry["out"],)


def _graph_hidden_linear(walk: _GraphWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    _graph_linear(walk, index, entry, layer)
    walk.previous = walk.neuron(f"layer{index}_neuron", layer.neuron, [walk.previous], walk.shape)


# plan entry type -> what it adds to the stp-dialect graph, given the walk, its index, the entry and its SNN
# module (models.plan.LAYER_TYPES lists the types; a test checks the cover)
STP_GRAPH_LAYERS = {"conv": _graph_conv, "block": _graph_block, "pool": _graph_pool, "global_pool": _graph_global_pool,
                    "flatten": _graph_flatten, "fc": _graph_hidden_linear, "output": _graph_linear}


@torch.no_grad()
def stp_graph(snn: SNN):
    """The exact stp-dialect graph: stp's own layers, dt = 1, the initial membrane and the reset in
    metadata (``--nir-graph stp``; for a reader that honours them, such as the tests' interpreter)."""
    import nir

    snn = snn.eval()
    walk = _GraphWalk(nir, snn)
    for index, (entry, layer) in enumerate(zip(snn.plan, snn.layers)):
        STP_GRAPH_LAYERS[entry["type"]](walk, index, entry, layer)
    walk.add("output", nir.Output(output_type={"output": np.array(walk.shape)}), walk.previous)
    metadata = {"producer": "stp", "graph": "stp", "timesteps": snn.timesteps, "dt": 1.0,
                "encoding": "direct: the analog image is the input at every time step",
                "readout": "logits = output summed over the time steps", "reset": "subtract",
                "initial_membrane_fraction": walk.initial}
    return nir.NIRGraph(nodes=walk.nodes, edges=walk.edges, metadata=metadata)
