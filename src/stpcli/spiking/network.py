"""The SNN built from the same plan as the ANN, with time folded into the batch.

Activations between layers are ``[T*N, ...]``: convolutions, pooling and linear
layers run once on the folded batch; only the neurons look at ``[T, N, ...]``
and iterate over time. With direct encoding the first layer's input is the
same image at every step, so its convolution runs once and its current is
broadcast over T. The output layer has no neuron: logits = sum over t of W s(t) + b.

Dropout (hidden FC layers: ``dropout``; after convolutional neuron layers: ``conv_dropout``)
draws one mask per image, shared by all time steps, as DIET-SNN does. ``conv_dropout_placement``
says which convolutional neuron layers: ``all``, or ``unpooled`` as TP's and DIET-SNN's code places
it: after every convolution whose spikes are not pooled next (VGG), and inside each residual
block after its first convolution (ResNet; not on a block's output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stpcli.models.ann import ANN_LAYERS
from stpcli.models.plan import PlanEntry, build_plan, projects
from stpcli.spec import ModelSpec
from stpcli.spiking.neuron import LIF
from stpcli.spiking.settings import SpikingSettings


def _unfold(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    return x.view(timesteps, x.shape[0] // timesteps, *x.shape[1:])


def drop_per_image(spikes: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Dropout on [T, N, ...] spikes with one mask per image, shared by every time step."""
    if not training or rate <= 0:
        return spikes
    keep = torch.rand(spikes.shape[1:], device=spikes.device) >= rate
    return spikes * (keep.to(spikes.dtype) / (1.0 - rate))


class SpikingConv(nn.Module):
    def __init__(self, entry: PlanEntry, make_neuron, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(entry["in"], entry["out"], entry["kernel"], entry["stride"], entry["padding"])
        self.neuron = make_neuron()
        self.dropout = dropout

    def forward(self, x, timesteps: int, static: bool = False):
        current = self.conv(x)
        if static:  # direct encoding: one convolution, the same current at every step
            current = current.unsqueeze(0).expand(timesteps, *current.shape)
        else:
            current = _unfold(current, timesteps)
        return drop_per_image(self.neuron(current), self.dropout, self.training).flatten(0, 1)


class SpikingBlock(nn.Module):
    """BasicBlock: LIF1 on conv1; LIF2 on conv2 + shortcut (identity or 1x1 conv).

    With binary spikes an identity shortcut has no weight to carry the feeding
    layer's threshold, so it carries a constant ``shortcut_scale`` (set at conversion).
    """

    def __init__(self, entry: PlanEntry, make_neuron, dropout: float = 0.0, binary: bool = False,
                 output_dropout: float | None = None):
        super().__init__()
        cin, cout, stride = entry["in"], entry["out"], entry["stride"]
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.neuron1 = make_neuron()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0) if projects(entry) else None
        self.neuron2 = make_neuron()
        self.dropout = dropout  # on the first neurons' spikes
        self.output_dropout = dropout if output_dropout is None else output_dropout
        if binary and self.shortcut is None:
            self.register_buffer("shortcut_scale", torch.tensor(1.0))
        else:
            self.shortcut_scale = None

    def forward(self, x, timesteps: int, static: bool = False):
        hidden = drop_per_image(self.neuron1(_unfold(self.conv1(x), timesteps)), self.dropout, self.training)
        if self.shortcut is not None:
            skip = self.shortcut(x)
        else:
            skip = x if self.shortcut_scale is None else x * self.shortcut_scale
        current = self.conv2(hidden.flatten(0, 1)) + skip
        return drop_per_image(self.neuron2(_unfold(current, timesteps)), self.output_dropout, self.training).flatten(0, 1)


class SpikingLinear(nn.Module):
    """Hidden FC layer; dropout draws one mask per image, shared by all time steps."""

    def __init__(self, entry: PlanEntry, make_neuron, dropout: float):
        super().__init__()
        self.fc = nn.Linear(entry["in"], entry["out"])
        self.neuron = make_neuron()
        self.dropout = dropout

    def forward(self, x, timesteps: int, static: bool = False):
        spikes = self.neuron(_unfold(self.fc(x), timesteps))
        return drop_per_image(spikes, self.dropout, self.training).flatten(0, 1)


class OutputLayer(nn.Module):
    """Non-spiking accumulator: logits = sum_t (W s(t) + b) = W (sum_t s(t)) + T b."""

    def __init__(self, entry: PlanEntry):
        super().__init__()
        self.fc = nn.Linear(entry["in"], entry["out"])

    def forward(self, x, timesteps: int, static: bool = False):
        total = _unfold(x, timesteps).sum(0)
        return F.linear(total, self.fc.weight) + timesteps * self.fc.bias


class Stateless(nn.Module):
    """A layer without weights or neurons (pooling, flattening): the ANN's module for it
    (``models.ann.ANN_LAYERS``), applied to the time-folded batch, so it ignores time."""

    def __init__(self, entry: PlanEntry):
        super().__init__()
        self.op = ANN_LAYERS[entry["type"]](entry)

    def forward(self, x, timesteps: int, static: bool = False):
        return self.op(x)


def conv_dropout_rates(plan: list[PlanEntry], settings: SpikingSettings) -> list[float]:
    """Per plan entry, the dropout on its convolutional neurons' output spikes (0 where none)."""
    rate, every = settings.conv_dropout, settings.conv_dropout_placement == "all"
    rates = []
    for i, entry in enumerate(plan):
        pooled_next = i + 1 < len(plan) and plan[i + 1]["type"] in ("pool", "global_pool")
        rates.append(rate if entry["type"] == "conv" and (every or not pooled_next)
                     or entry["type"] == "block" and every else 0.0)
    return rates


# plan entry type -> the SNN module built for it (models.plan.LAYER_TYPES lists the types), given its
# output's convolutional dropout rate
SNN_LAYERS = {
    "conv": lambda entry, make_neuron, settings, rate: SpikingConv(entry, make_neuron, rate),
    "block": lambda entry, make_neuron, settings, rate: SpikingBlock(entry, make_neuron, settings.conv_dropout,
                                                                     settings.binary, output_dropout=rate),
    "fc": lambda entry, make_neuron, settings, rate: SpikingLinear(entry, make_neuron, settings.dropout),
    "output": lambda entry, make_neuron, settings, rate: OutputLayer(entry),
    "pool": lambda entry, make_neuron, settings, rate: Stateless(entry),
    "global_pool": lambda entry, make_neuron, settings, rate: Stateless(entry),
    "flatten": lambda entry, make_neuron, settings, rate: Stateless(entry),
}


class SNN(nn.Module):
    """``layers.<i>`` is plan entry i, as in the ANN; thresholds and leaks live in the neurons."""

    def __init__(self, spec: ModelSpec, timesteps: int, settings: SpikingSettings | None = None):
        super().__init__()
        settings = settings or SpikingSettings()

        def make_neuron():
            return LIF(settings=settings)

        self.spec = spec
        self.settings = settings
        self.timesteps = timesteps
        self.plan = build_plan(spec)
        self.layers = nn.ModuleList(SNN_LAYERS[entry["type"]](entry, make_neuron, settings, rate)
                                    for entry, rate in zip(self.plan, conv_dropout_rates(self.plan, settings)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, self.timesteps, static=(i == 0))
        return x

    def rebuilt(self, spec: ModelSpec) -> SNN:
        """A fresh SNN of another spec with this one's T and neuron settings (Unit surgery)."""
        return SNN(spec, self.timesteps, self.settings)

    def neurons(self) -> list[tuple[str, LIF]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, LIF)]

    def after_step(self) -> None:
        for _, neuron in self.neurons():
            neuron.clamp_()
