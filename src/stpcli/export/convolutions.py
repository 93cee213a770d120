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
    notes: list[str] = field(default_factory=list)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _diagonal(channels: int, kernel: tuple[int, int], value: float) -> np.ndarray:
    weight = np.zeros((channels, channels, *kernel))
    for c in range(channels):
        weight[c, c] = value
    return weight


def _pooling(kind: str, entry, shape: tuple[int, int, int]):
    """(kernel, stride, padding, output shape) of a pooling or global pooling entry on ``shape``."""
    if entry.get("mode") == "max":
        raise StpError("max pooling cannot be expressed as a convolution (a chain's pooling is an averaging synapse)")
    kernel = (entry["kernel"],) * 2 if kind == "pool" else (shape[1], shape[2])
    stride = (entry["stride"],) * 2 if kind == "pool" else (1, 1)
    padding = (entry["padding"],) * 2 if kind == "pool" else (0, 0)
    out = (shape[0], conv_side(shape[1], kernel[0], stride[0], padding[0]), conv_side(shape[2], kernel[1], stride[1], padding[1]))
    return kernel, stride, padding, out


@torch.no_grad()
def snn_chain(snn: SNN, fold_initial: bool) -> list[Synapse | Neurons]:
    """The chain of ``snn`` (in eval mode), see the module docstring."""
    snn = snn.eval()
    settings = snn.settings
    size = snn.spec["image_size"]
    shape: tuple[int, int, int] = (snn.spec["in_channels"], size, size)
    chain: list[Synapse | Neurons] = []
    amplitude = 1.0  # of the spikes (or analog input) the next synapse reads
    levels = (1, 1.0)  # the values the next synapse reads: 0, u, ..., L u (see _block)
    pending_flatten = False

    def neurons(name: str, module: LIF, synapse: Synapse, passthrough: int = 0) -> Neurons:
        """The neuron layer fed by ``synapse`` (whose trailing ``passthrough`` channels relay spikes)."""
        threshold, leak = float(module.threshold), float(module.leak)
        layer = Neurons(name, threshold, leak, settings.initial_membrane * threshold, synapse.out_shape, passthrough)
        if fold_initial:
            own = synapse.bias.shape[0] - passthrough
            synapse.bias[:own] += leak * layer.initial
            layer.initial = 0.0
        return layer

    def spike_amplitude(module: LIF) -> float:
        return 1.0 if settings.binary else float(module.threshold)

    layer: Any  # the SNN module of the plan entry (its type follows the entry's type)
    for index, (entry, layer) in enumerate(zip(snn.plan, snn.layers)):
        kind, prefix = entry["type"], f"layer{index}"
        if kind == "conv":
            conv = layer.conv
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            out = (conv.out_channels, conv_side(shape[1], k, s, p), conv_side(shape[2], k, s, p))
            synapse = Synapse(f"{prefix}_conv", _numpy(conv.weight) * amplitude, _numpy(conv.bias), (s, s), (p, p), out)
            chain += [synapse, neurons(f"{prefix}_lif", layer.neuron, synapse)]
            shape, amplitude, levels = out, spike_amplitude(layer.neuron), (1, 1.0)
        elif kind == "block":
            chain += _block(prefix, layer, shape, amplitude, levels, neurons, spike_amplitude)
            last = chain[-1]
            assert isinstance(last, Neurons)  # a block ends in its LIF2
            shape = last.shape
            amplitude, levels = spike_amplitude(layer.neuron2), (1, 1.0)
        elif kind in ("pool", "global_pool"):
            window, step, pad, out = _pooling(kind, entry, shape)
            area = window[0] * window[1]
            chain.append(Synapse(f"{prefix}_pool", _diagonal(shape[0], window, amplitude / area),
                                 np.zeros(shape[0]), step, pad, out))
            levels = (levels[0] * area, levels[1] * amplitude / area)
            shape, amplitude = out, 1.0  # the pooling synapse now carries the amplitude
        elif kind == "flatten":
            pending_flatten = True
        elif kind in ("fc", "output"):
            fc = layer.fc
            weight = _numpy(fc.weight) * amplitude
            if pending_flatten or shape[1:] != (1, 1):
                weight = weight.reshape(fc.out_features, *shape)
            else:
                weight = weight.reshape(fc.out_features, shape[0], 1, 1)
            pending_flatten = False
            out = (fc.out_features, 1, 1)
            synapse = Synapse(f"{prefix}_fc", weight, _numpy(fc.bias), (1, 1), (0, 0), out)
            chain.append(synapse)
            shape = out
            if kind == "fc":
                chain.append(neurons(f"{prefix}_lif", layer.neuron, synapse))
                amplitude, levels = spike_amplitude(layer.neuron), (1, 1.0)
        else:
            raise StpError(f"layer {index} ({kind}) cannot be expressed as a chain of convolutions")
    return chain


def _block(prefix: str, block, shape, amplitude: float, levels: tuple[int, float], neurons,
           spike_amplitude) -> list[Synapse | Neurons]:
    """A residual block as a chain. ``levels`` (L, u): the block's input takes the values
    0, u, ..., L u (spikes: L = 1, u = 1; after an average pooling of k x k spikes: L = k^2).
    Each input channel is relayed through LIF1 as L thermometer channels, channel m firing
    exactly when the input exceeds (m - 1/2) u; conv2 sums them back, u each."""
    conv1, conv2 = block.conv1, block.conv2
    cin, cout, stride = conv1.in_channels, conv1.out_channels, conv1.stride[0]
    count, unit = levels
    relays = cin * count
    out = (cout, conv_side(shape[1], 3, stride, 1), conv_side(shape[2], 3, stride, 1))
    v1 = float(block.neuron1.threshold)
    first = np.zeros((cout + relays, cin, 3, 3))
    first[:cout] = _numpy(conv1.weight) * amplitude
    for c in range(cin):
        for m in range(1, count + 1):
            first[cout + c * count + m - 1, c, 1, 1] = v1 / ((m - 0.5) * unit)
    bias = np.concatenate([_numpy(conv1.bias), np.zeros(relays)])
    relay = Synapse(f"{prefix}_conv1", first, bias, (stride, stride), (1, 1), (cout + relays, *out[1:]))
    chain: list[Synapse | Neurons] = [relay, neurons(f"{prefix}_lif1", block.neuron1, relay, passthrough=relays)]
    chain[-1].relay_levels = count  # type: ignore[union-attr]
    second = np.zeros((cout, cout + relays, 3, 3))
    second[:, :cout] = _numpy(conv2.weight) * spike_amplitude(block.neuron1)
    bias = _numpy(conv2.bias)
    if block.shortcut is not None:
        shortcut = _numpy(block.shortcut.weight)[:, :, 0, 0] * amplitude
        bias = bias + _numpy(block.shortcut.bias)
    else:  # identity: the input's amplitude, or the constant binary-spike conversion gave it
        shortcut = np.eye(cout) * (float(block.shortcut_scale) if block.shortcut_scale is not None else amplitude)
    for c in range(cin):
        second[:, cout + c * count:cout + (c + 1) * count, 1, 1] = shortcut[:, c:c + 1] * unit
    joined = Synapse(f"{prefix}_conv2", second, bias.copy(), (1, 1), (1, 1), out)
    return [*chain, joined, neurons(f"{prefix}_lif2", block.neuron2, joined)]


def passthrough_exact(layer: Neurons) -> bool:
    """Whether a relay layer also relays exactly at T > 1: a spike relay (current 2V) leaves a
    residue that stays below V only with leak <= 1/2; a thermometer relay is exact at T = 1 only."""
    return layer.passthrough == 0 or (layer.relay_levels == 1 and layer.leak <= 0.5)


def integer_chain(spec: ModelSpec, plan: list[PlanEntry], tensors: dict[str, torch.Tensor]) -> list[Synapse | Neurons]:
    """The chain of a quantized checkpoint's integer network (see the module docstring): what
    ``export.integer_runtime`` computes, as convolutions and one-step neuron layers."""
    size = spec["image_size"]
    shape: tuple[int, int, int] = (spec["in_channels"], size, size)
    chain: list[Synapse | Neurons] = []
    levels = 1  # the largest value the next synapse reads (255 for pixels does not matter: no relay reads them)
    pending_flatten = False

    def integers(name: str) -> np.ndarray:
        return tensors[name].detach().cpu().numpy().astype(np.float64)

    def fire(name: str, synapse: Synapse, threshold: str, relays: int = 0, relay_levels: int = 1) -> Neurons:
        """The neurons fed by ``synapse``: its bias becomes -theta (and 1 - m on relay m)."""
        synapse.bias = -integers(threshold)
        if relays:
            synapse.bias = np.concatenate([synapse.bias, np.tile(1.0 - np.arange(1, relay_levels + 1), relays // relay_levels)])
        return Neurons(name, 0.5, 0.0, 0.0, synapse.out_shape, relays, relay_levels)

    for index, entry in enumerate(plan):
        kind, at, prefix = entry["type"], f"layers.{index}", f"layer{index}"
        if kind == "conv":
            weight = integers(f"{at}.conv.weight_int")
            k, s, p = weight.shape[-1], entry["stride"], entry["padding"]
            out = (weight.shape[0], conv_side(shape[1], k, s, p), conv_side(shape[2], k, s, p))
            synapse = Synapse(f"{prefix}_conv", weight, np.zeros(out[0]), (s, s), (p, p), out)
            chain += [synapse, fire(f"{prefix}_lif", synapse, f"{at}.neuron.threshold_int")]
            shape, levels = out, 1
        elif kind == "block":
            first, second = integers(f"{at}.conv1.weight_int"), integers(f"{at}.conv2.weight_int")
            cout, cin, stride = first.shape[0], first.shape[1], entry["stride"]
            out = (cout, conv_side(shape[1], 3, stride, 1), conv_side(shape[2], 3, stride, 1))
            relays = cin * levels
            widened = np.zeros((cout + relays, cin, 3, 3))
            widened[:cout] = first
            for c in range(cin):  # relay m of channel c fires when the input is at least m
                widened[cout + c * levels:cout + (c + 1) * levels, c, 1, 1] = 1.0
            relay = Synapse(f"{prefix}_conv1", widened, np.zeros(cout + relays), (stride, stride), (1, 1),
                            (cout + relays, *out[1:]))
            if f"{at}.shortcut.weight_int" in tensors:
                shortcut = integers(f"{at}.shortcut.weight_int")[:, :, 0, 0]
            else:
                shortcut = np.diag(integers(f"{at}.shortcut_int").reshape(-1))
            joined = np.zeros((cout, cout + relays, 3, 3))
            joined[:, :cout] = second
            for c in range(cin):
                joined[:, cout + c * levels:cout + (c + 1) * levels, 1, 1] = shortcut[:, c:c + 1]
            summed = Synapse(f"{prefix}_conv2", joined, np.zeros(cout), (1, 1), (1, 1), out)
            chain += [relay, fire(f"{prefix}_lif1", relay, f"{at}.neuron1.threshold_int", relays, levels),
                      summed, fire(f"{prefix}_lif2", summed, f"{at}.neuron2.threshold_int")]
            shape, levels = out, 1
        elif kind in ("pool", "global_pool"):
            window, step, pad, out = _pooling(kind, entry, shape)
            chain.append(Synapse(f"{prefix}_pool", _diagonal(shape[0], window, 1.0), np.zeros(shape[0]), step, pad, out))
            shape, levels = out, levels * window[0] * window[1]
        elif kind == "flatten":
            pending_flatten = True
        elif kind in ("fc", "output"):
            weight = integers(f"{at}.fc.weight_int")
            bias = np.zeros(weight.shape[0])
            if kind == "output":  # the readout: the integer sums times their step, plus the bias
                step = tensors[f"{at}.fc.weight_step"].detach().cpu().double().numpy().reshape(-1, 1)
                weight, bias = weight * step, tensors[f"{at}.fc.bias"].detach().cpu().double().numpy()
            weight = weight.reshape(weight.shape[0], *(shape if pending_flatten or shape[1:] != (1, 1) else (shape[0], 1, 1)))
            pending_flatten = False
            out = (weight.shape[0], 1, 1)
            synapse = Synapse(f"{prefix}_fc", weight, bias, (1, 1), (0, 0), out)
            chain.append(synapse)
            shape = out
            if kind == "fc":
                chain.append(fire(f"{prefix}_lif", synapse, f"{at}.neuron.threshold_int"))
                levels = 1
        else:
            raise StpError(f"layer {index} ({kind}) cannot be expressed as a chain of convolutions")
    return chain
