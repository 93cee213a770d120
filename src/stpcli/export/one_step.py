"""A one-time-step SNN as a feed-forward network whose every neuron layer is its synapse followed by
one clip, the form edge runtimes fuse into a single kernel (onnxruntime's FusedConv, as for an
ANN's Conv + ReLU).

At T = 1 a neuron fires iff ``W s + b + lambda f V > V``, that is iff ``W s + b' > 0`` with
``b' = b + lambda f V - V``: the threshold and the initial membrane move into the bias. The
Heaviside step is then ``Clip(y, 0, eps)`` with ``eps = 2^-100``: a binary spike is stored as eps,
silence as 0, and every layer that reads spikes has its weights multiplied by ``1 / eps``, a power
of two, so each product equals stp's exactly. A spike of amplitude V (``--spike-amplitude
threshold``) is multiplied back to V after the clip (an exact power-of-two scaling), so the next
layer reads what stp's reads. Where ``0 < y < eps`` the
clip would pass a fraction of a spike; a synapse sum landing within 1e-30 of zero without being
zero does not occur in practice, and the tests compare every spike with stp's. Pooling is linear,
so it acts on the stored values unchanged. In int8, the stored spikes are exactly two levels.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import nn

from stpcli.spiking.network import SNN
from stpcli.spiking.neuron import LIF

EPSILON = 2.0 ** -100  # a stored spike


def _step(y: torch.Tensor, amplitude: float) -> torch.Tensor:
    spikes = torch.clamp(y, 0.0, EPSILON)
    return spikes if amplitude == 1.0 else spikes * (amplitude / EPSILON)


class _Fire(nn.Module):
    """A synapse (a convolution or linear layer with its shifted bias), then the step as a clip."""

    def __init__(self, synapse: nn.Module, amplitude: float):
        super().__init__()
        self.synapse, self.amplitude = synapse, amplitude

    def forward(self, x):
        return _step(self.synapse(x), self.amplitude)


class _Block(nn.Module):
    """A residual block: conv1 fires; conv2 plus the shortcut (a convolution, or the block's input
    times a constant) fires."""

    def __init__(self, first: _Fire, conv2: nn.Module, shortcut: nn.Module | None, identity: float, amplitude: float):
        super().__init__()
        self.first, self.conv2, self.shortcut, self.identity, self.amplitude = first, conv2, shortcut, identity, amplitude

    def forward(self, x):
        skip = self.shortcut(x) if self.shortcut is not None else x * self.identity
        return _step(self.conv2(self.first(x)) + skip, self.amplitude)


def _shift(neuron: Any) -> torch.Tensor:
    """lambda f V - V, computed as the neuron computes its first step's terms."""
    shift = neuron.leak * (neuron.initial_membrane * neuron.threshold) if neuron.initial_membrane else 0.0
    return shift - neuron.threshold


def _reading(neuron: Any) -> float:
    """The weight factor of a layer that reads this neuron layer's stored spikes."""
    return 1.0 / EPSILON if neuron.binary else 1.0


def _scaled(module: Any, factor: float, neuron: LIF | None) -> nn.Module:
    """A copy of a convolution or linear layer reading values ``factor`` times smaller than stp's,
    with the bias shift of the neuron it feeds (none for the output layer)."""
    copy = deepcopy(module).requires_grad_(False)
    copy.weight.mul_(factor)
    if neuron is not None:
        copy.bias.add_(_shift(neuron))
    return copy


def _conv(layer: Any, factor: float) -> tuple[list[nn.Module], float]:
    return [_Fire(_scaled(layer.conv, factor, layer.neuron), layer.neuron.spike_amplitude())], _reading(layer.neuron)


def _block(layer: Any, factor: float) -> tuple[list[nn.Module], float]:
    shortcut = _scaled(layer.shortcut, factor, None) if layer.shortcut is not None else None
    identity = factor * (float(layer.shortcut_scale) if layer.shortcut_scale is not None else 1.0)
    first = _Fire(_scaled(layer.conv1, factor, layer.neuron1), layer.neuron1.spike_amplitude())
    conv2 = _scaled(layer.conv2, _reading(layer.neuron1), layer.neuron2)
    return [_Block(first, conv2, shortcut, identity, layer.neuron2.spike_amplitude())], _reading(layer.neuron2)


def _hidden_linear(layer: Any, factor: float) -> tuple[list[nn.Module], float]:
    return [_Fire(_scaled(layer.fc, factor, layer.neuron), layer.neuron.spike_amplitude())], _reading(layer.neuron)


def _output(layer: Any, factor: float) -> tuple[list[nn.Module], float]:
    return [_scaled(layer.fc, factor, None)], 1.0


def _pool(layer: Any, factor: float) -> tuple[list[nn.Module], float]:
    return [layer.op], factor  # linear: it acts on the stored values unchanged


def _global_pool(layer: Any, factor: float) -> tuple[list[nn.Module], float]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()], factor  # onnxruntime's GlobalAveragePool


def _flatten(layer: Any, factor: float) -> tuple[list[nn.Module], float]:
    return [nn.Flatten()], factor


# plan entry type -> its one-step modules, given the SNN layer and the factor of the values it reads;
# with the factor of the values it stores (models.plan.LAYER_TYPES lists the types; a test checks the cover)
ONE_STEP_LAYERS = {"conv": _conv, "block": _block, "fc": _hidden_linear, "output": _output, "pool": _pool,
                   "global_pool": _global_pool, "flatten": _flatten}


@torch.no_grad()
def one_step_network(snn: SNN) -> nn.Sequential:
    """``snn`` at T = 1 as Synapse-Clip layers (see the module docstring); its logits are stp's."""
    if snn.timesteps != 1:
        raise ValueError("the one-step form is for T = 1")
    layers: list[nn.Module] = []
    factor = 1.0  # stp's activation = stored activation x factor (1 for the analog input image)
    for entry, layer in zip(snn.plan, snn.layers):
        modules, factor = ONE_STEP_LAYERS[entry["type"]](layer, factor)
        layers += modules
    return nn.Sequential(*layers).eval()
