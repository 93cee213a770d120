"""An SNN rewritten as a plain chain of convolutions and neuron layers, the form every exporter
target can run.

Whatever the architecture, the chain alternates ``Synapse`` (one convolution with bias) and
``Neurons`` (one layer of neurons with one threshold and one leak), ending in the output
``Synapse``:

* convolutions keep their BN-folded weights; a spike of amplitude V (``--spike-amplitude
  threshold``) has V folded into the weights that read it, so every spike is 0 or 1;
* average pooling (and global average pooling) becomes a convolution whose kernel holds
  1/k² on the channel diagonal; flattening disappears into the next linear layer, which
  becomes a convolution over the whole map (its weight reshaped C x H x W); later linear
  layers are 1 x 1 convolutions. Shapes stay C x H x W, so no consumer's Flatten can fold
  the batch dimension;
* a residual block (conv1, LIF1, conv2 + shortcut, LIF2) becomes a chain: conv1 also relays
  its input through LIF1 (extra channels at the kernel's centre: for spikes one channel of
  weight 2V1, which fires exactly when the spike is 1; after an average pooling, whose values
  are multiples of 1/k^2, a thermometer of k^2 channels), and conv2 reads both: its own
  weights on the LIF1 spikes and the shortcut (1 x 1 convolution or scaled identity, at the
  centre tap) on the relays. Exact at one time step; at T > 1 a relay keeps a residue after a
  spike, so the chain is exact only where ``passthrough_exact`` says so.
* ``fold_initial``: the first step's leak x initial membrane (lambda f V) is added to the bias of
  the synapse feeding each neuron layer, so a consumer that starts every neuron at rest
  computes stp's first step exactly (at T = 1, everything).

``integer_chain`` is the same chain for a quantized checkpoint's integer network (``stp quantize``):
integer weights, the stored image values as input, sum pooling (kernels of ones); each channel's
integer threshold theta as the integer bias -theta of the synapse that feeds it, every neuron's
threshold 1/2 (A > theta iff A - theta > 1/2 for integers: the half makes "> v" and ">= v" the same
test, whichever a consumer applies, and one threshold per layer is what snnTorch's importer takes);
relays of weight 1 with bias 1 - m, fired when the input is at least m; only the output synapse is
float, its weights the integers times their step, its bias the float bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stpcli.errors import StpError
from stpcli.models.plan import PlanEntry, conv_side
from stpcli.spec import ModelSpec
from stpcli.spiking.network import SNN
from stpcli.spiking.neuron import LIF


@dataclass
class Synapse:
    name: str
    weight: np.ndarray  # [out, in, kh, kw], float64 until written
    bias: np.ndarray  # [out]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_shape: tuple[int, int, int]


@dataclass
class Neurons:
    name: str
    threshold: float
    leak: float
    initial: float  # membrane before the first step (f x V); 0 once folded into the bias
    shape: tuple[int, int, int]
    passthrough: int = 0  # trailing channels that only relay a block's input
    relay_levels: int = 1  # relay channels per input channel (thermometer code of an averaged input)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _diagonal(channels: int, kernel: tuple[int, int], value: float) -> np.ndarray:
    weight = np.zeros((channels, channels, *kernel))
    for c in range(channels):
        weight[c, c] = value
    return weight


@dataclass
class _Walk:
    """What a chain carries from one plan entry to the next."""
    shape: tuple[int, int, int]  # C x H x W of the values the next synapse reads
    chain: list[Synapse | Neurons] = field(default_factory=list)

    def linear_weight(self, weight: np.ndarray) -> np.ndarray:
        """A linear layer's [out, in] weight as a convolution over the whole map it reads (flattening
        disappears into it; after a global pooling the map is C x 1 x 1, a 1 x 1 convolution)."""
        return weight.reshape(weight.shape[0], *self.shape)


def _pooling(entry: PlanEntry, shape: tuple[int, int, int]):
    """(kernel, stride, padding, output shape) of a pooling or global pooling entry on ``shape``."""
    if entry.get("mode") == "max":
        raise StpError("max pooling cannot be expressed as a convolution (a chain's pooling is an averaging synapse)")
    local = entry["type"] == "pool"
    kernel = (entry["kernel"],) * 2 if local else (shape[1], shape[2])
    stride = (entry["stride"],) * 2 if local else (1, 1)
    padding = (entry["padding"],) * 2 if local else (0, 0)
    out = (shape[0], conv_side(shape[1], kernel[0], stride[0], padding[0]), conv_side(shape[2], kernel[1], stride[1], padding[1]))
    return kernel, stride, padding, out


def _flatten(walk: _Walk, index: int, entry: PlanEntry, layer: Any = None) -> None:
    """Nothing: the next linear layer reads the map as it is (``_Walk.linear_weight``)."""


def _conv_shape(shape: tuple[int, int, int], channels: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int]:
    return (channels, conv_side(shape[1], kernel, stride, padding), conv_side(shape[2], kernel, stride, padding))


@dataclass
class _SnnWalk(_Walk):
    settings: Any = None  # the SNN's SpikingSettings
    fold_initial: bool = False
    amplitude: float = 1.0  # of the spikes (or analog input) the next synapse reads
    levels: tuple[int, float] = (1, 1.0)  # the values the next synapse reads: 0, u, ..., L u (see _snn_block)

    def neurons(self, name: str, module: LIF, synapse: Synapse, passthrough: int = 0) -> Neurons:
        """The neuron layer fed by ``synapse`` (whose trailing ``passthrough`` channels relay spikes)."""
        threshold, leak = float(module.threshold), float(module.leak)
        layer = Neurons(name, threshold, leak, self.settings.initial_membrane * threshold, synapse.out_shape, passthrough)
        if self.fold_initial:
            own = synapse.bias.shape[0] - passthrough
            synapse.bias[:own] += leak * layer.initial
            layer.initial = 0.0
        return layer

    def fired(self, module: LIF, shape: tuple[int, int, int]) -> None:
        """The next synapse reads ``module``'s spikes, of shape ``shape``."""
        self.shape, self.amplitude, self.levels = shape, module.spike_amplitude(), (1, 1.0)


def _snn_conv(walk: _SnnWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    conv = layer.conv
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    out = _conv_shape(walk.shape, conv.out_channels, k, s, p)
    synapse = Synapse(f"layer{index}_conv", _numpy(conv.weight) * walk.amplitude, _numpy(conv.bias), (s, s), (p, p), out)
    walk.chain += [synapse, walk.neurons(f"layer{index}_lif", layer.neuron, synapse)]
    walk.fired(layer.neuron, out)


def _snn_block(walk: _SnnWalk, index: int, entry: PlanEntry, block: Any) -> None:
    """A residual block as a chain. ``walk.levels`` (L, u): the block's input takes the values
    0, u, ..., L u (spikes: L = 1, u = 1; after an average pooling of k x k spikes: L = k^2).
    Each input channel is relayed through LIF1 as L thermometer channels, channel m firing
    exactly when the input exceeds (m - 1/2) u; conv2 sums them back, u each."""
    prefix, conv1, conv2 = f"layer{index}", block.conv1, block.conv2
    cin, cout, stride = conv1.in_channels, conv1.out_channels, conv1.stride[0]
    (count, unit), amplitude = walk.levels, walk.amplitude
    relays = cin * count
    out = _conv_shape(walk.shape, cout, 3, stride, 1)
    v1 = float(block.neuron1.threshold)
    first = np.zeros((cout + relays, cin, 3, 3))
    first[:cout] = _numpy(conv1.weight) * amplitude
    for c in range(cin):
        for m in range(1, count + 1):
            first[cout + c * count + m - 1, c, 1, 1] = v1 / ((m - 0.5) * unit)
    bias = np.concatenate([_numpy(conv1.bias), np.zeros(relays)])
    relay = Synapse(f"{prefix}_conv1", first, bias, (stride, stride), (1, 1), (cout + relays, *out[1:]))
    relayed = walk.neurons(f"{prefix}_lif1", block.neuron1, relay, passthrough=relays)
    relayed.relay_levels = count
    second = np.zeros((cout, cout + relays, 3, 3))
    second[:, :cout] = _numpy(conv2.weight) * block.neuron1.spike_amplitude()
    bias = _numpy(conv2.bias)
    if block.shortcut is not None:
        shortcut = _numpy(block.shortcut.weight)[:, :, 0, 0] * amplitude
        bias = bias + _numpy(block.shortcut.bias)
    else:  # identity: the input's amplitude, or the constant binary-spike conversion gave it
        shortcut = np.eye(cout) * (float(block.shortcut_scale) if block.shortcut_scale is not None else amplitude)
    for c in range(cin):
        second[:, cout + c * count:cout + (c + 1) * count, 1, 1] = shortcut[:, c:c + 1] * unit
    joined = Synapse(f"{prefix}_conv2", second, bias.copy(), (1, 1), (1, 1), out)
    walk.chain += [relay, relayed, joined, walk.neurons(f"{prefix}_lif2", block.neuron2, joined)]
    walk.fired(block.neuron2, out)


def _snn_pool(walk: _SnnWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    window, step, pad, out = _pooling(entry, walk.shape)
    area = window[0] * window[1]
    walk.chain.append(Synapse(f"layer{index}_pool", _diagonal(walk.shape[0], window, walk.amplitude / area),
                              np.zeros(walk.shape[0]), step, pad, out))
    walk.levels = (walk.levels[0] * area, walk.levels[1] * walk.amplitude / area)
    walk.shape, walk.amplitude = out, 1.0  # the pooling synapse now carries the amplitude


def _snn_linear(walk: _SnnWalk, index: int, entry: PlanEntry, layer: Any) -> Synapse:
    fc = layer.fc
    synapse = Synapse(f"layer{index}_fc", walk.linear_weight(_numpy(fc.weight) * walk.amplitude), _numpy(fc.bias),
                      (1, 1), (0, 0), (fc.out_features, 1, 1))
    walk.chain.append(synapse)
    walk.shape = synapse.out_shape
    return synapse


def _snn_hidden_linear(walk: _SnnWalk, index: int, entry: PlanEntry, layer: Any) -> None:
    synapse = _snn_linear(walk, index, entry, layer)
    walk.chain.append(walk.neurons(f"layer{index}_lif", layer.neuron, synapse))
    walk.fired(layer.neuron, synapse.out_shape)


# plan entry type -> what it adds to an SNN's chain, given the walk, its index, the entry and its SNN module
# (models.plan.LAYER_TYPES lists the types; a test checks the cover)
SNN_CHAIN_LAYERS = {"conv": _snn_conv, "block": _snn_block, "pool": _snn_pool, "global_pool": _snn_pool,
                    "flatten": _flatten, "fc": _snn_hidden_linear, "output": _snn_linear}


@torch.no_grad()
def snn_chain(snn: SNN, fold_initial: bool) -> list[Synapse | Neurons]:
    """The chain of ``snn`` (in eval mode), see the module docstring."""
    snn = snn.eval()
    size = snn.spec["image_size"]
    walk = _SnnWalk((snn.spec["in_channels"], size, size), settings=snn.settings, fold_initial=fold_initial)
    for index, (entry, layer) in enumerate(zip(snn.plan, snn.layers)):
        SNN_CHAIN_LAYERS[entry["type"]](walk, index, entry, layer)
    return walk.chain


def passthrough_exact(layer: Neurons) -> bool:
    """Whether a relay layer also relays exactly at T > 1: a spike relay (current 2V) leaves a
    residue that stays below V only with leak <= 1/2; a thermometer relay is exact at T = 1 only."""
    return layer.passthrough == 0 or (layer.relay_levels == 1 and layer.leak <= 0.5)


@dataclass
class _IntegerWalk(_Walk):
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # the quantized checkpoint's
    levels: int = 1  # the largest value the next synapse reads (255 for pixels does not matter: no relay reads them)

    def integers(self, name: str) -> np.ndarray:
        return _numpy(self.tensors[name])

    def fire(self, name: str, synapse: Synapse, threshold: str, relays: int = 0, relay_levels: int = 1) -> Neurons:
        """The neurons fed by ``synapse``: its bias becomes -theta (and 1 - m on relay m)."""
        synapse.bias = -self.integers(threshold)
        if relays:
            synapse.bias = np.concatenate([synapse.bias, np.tile(1.0 - np.arange(1, relay_levels + 1), relays // relay_levels)])
        return Neurons(name, 0.5, 0.0, 0.0, synapse.out_shape, relays, relay_levels)


def _integer_conv(walk: _IntegerWalk, index: int, entry: PlanEntry) -> None:
    at = f"layers.{index}"
    weight = walk.integers(f"{at}.conv.weight_int")
    s, p = entry["stride"], entry["padding"]
    out = _conv_shape(walk.shape, weight.shape[0], weight.shape[-1], s, p)
    synapse = Synapse(f"layer{index}_conv", weight, np.zeros(out[0]), (s, s), (p, p), out)
    walk.chain += [synapse, walk.fire(f"layer{index}_lif", synapse, f"{at}.neuron.threshold_int")]
    walk.shape, walk.levels = out, 1


def _integer_block(walk: _IntegerWalk, index: int, entry: PlanEntry) -> None:
    at, prefix, levels = f"layers.{index}", f"layer{index}", walk.levels
    first, second = walk.integers(f"{at}.conv1.weight_int"), walk.integers(f"{at}.conv2.weight_int")
    cout, cin, stride = first.shape[0], first.shape[1], entry["stride"]
    out = _conv_shape(walk.shape, cout, 3, stride, 1)
    relays = cin * levels
    widened = np.zeros((cout + relays, cin, 3, 3))
    widened[:cout] = first
    for c in range(cin):  # relay m of channel c fires when the input is at least m
        widened[cout + c * levels:cout + (c + 1) * levels, c, 1, 1] = 1.0
    relay = Synapse(f"{prefix}_conv1", widened, np.zeros(cout + relays), (stride, stride), (1, 1), (cout + relays, *out[1:]))
    if f"{at}.shortcut.weight_int" in walk.tensors:
        shortcut = walk.integers(f"{at}.shortcut.weight_int")[:, :, 0, 0]
    else:
        shortcut = np.diag(walk.integers(f"{at}.shortcut_int").reshape(-1))
    joined = np.zeros((cout, cout + relays, 3, 3))
    joined[:, :cout] = second
    for c in range(cin):
        joined[:, cout + c * levels:cout + (c + 1) * levels, 1, 1] = shortcut[:, c:c + 1]
    summed = Synapse(f"{prefix}_conv2", joined, np.zeros(cout), (1, 1), (1, 1), out)
    walk.chain += [relay, walk.fire(f"{prefix}_lif1", relay, f"{at}.neuron1.threshold_int", relays, levels),
                   summed, walk.fire(f"{prefix}_lif2", summed, f"{at}.neuron2.threshold_int")]
    walk.shape, walk.levels = out, 1


def _integer_pool(walk: _IntegerWalk, index: int, entry: PlanEntry) -> None:
    window, step, pad, out = _pooling(entry, walk.shape)
    walk.chain.append(Synapse(f"layer{index}_pool", _diagonal(walk.shape[0], window, 1.0), np.zeros(walk.shape[0]),
                              step, pad, out))
    walk.shape, walk.levels = out, walk.levels * window[0] * window[1]


def _integer_linear(walk: _IntegerWalk, index: int, weight: np.ndarray, bias: np.ndarray) -> Synapse:
    synapse = Synapse(f"layer{index}_fc", walk.linear_weight(weight), bias, (1, 1), (0, 0), (weight.shape[0], 1, 1))
    walk.chain.append(synapse)
    walk.shape = synapse.out_shape
    return synapse


def _integer_hidden_linear(walk: _IntegerWalk, index: int, entry: PlanEntry) -> None:
    weight = walk.integers(f"layers.{index}.fc.weight_int")
    synapse = _integer_linear(walk, index, weight, np.zeros(weight.shape[0]))
    walk.chain.append(walk.fire(f"layer{index}_lif", synapse, f"layers.{index}.neuron.threshold_int"))
    walk.levels = 1


def _integer_output(walk: _IntegerWalk, index: int, entry: PlanEntry) -> None:
    """The readout: the integer sums times their step, plus the float bias."""
    at = f"layers.{index}"
    step = _numpy(walk.tensors[f"{at}.fc.weight_step"]).reshape(-1, 1)
    _integer_linear(walk, index, walk.integers(f"{at}.fc.weight_int") * step, _numpy(walk.tensors[f"{at}.fc.bias"]))


# plan entry type -> what it adds to a quantized checkpoint's chain, given the walk, its index and the entry
# (models.plan.LAYER_TYPES lists the types; a test checks the cover)
INTEGER_CHAIN_LAYERS = {"conv": _integer_conv, "block": _integer_block, "pool": _integer_pool,
                        "global_pool": _integer_pool, "flatten": _flatten, "fc": _integer_hidden_linear,
                        "output": _integer_output}


def integer_chain(spec: ModelSpec, plan: list[PlanEntry], tensors: dict[str, torch.Tensor]) -> list[Synapse | Neurons]:
    """The chain of a quantized checkpoint's integer network (see the module docstring): what
    ``export.integer_runtime`` computes, as convolutions and one-step neuron layers."""
    size = spec["image_size"]
    walk = _IntegerWalk((spec["in_channels"], size, size), tensors=tensors)
    for index, entry in enumerate(plan):
        INTEGER_CHAIN_LAYERS[entry["type"]](walk, index, entry)
    return walk.chain
