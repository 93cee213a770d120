"""ANN -> SNN conversion (docs/method.md section 4): BN folding and threshold balancing.

Threshold balancing walks the network once, layer by layer (O(L) layer
evaluations): the calibration batch's activations at the current depth are kept
(spike maps bit-packed, a bit per neuron and step), each spiking layer's input
current is sampled to set its threshold, then the layer is run at its new
threshold to give the next depth's activations.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from stpcli.models.ann import ANN
from stpcli.models.plan import synaptic_layers
from stpcli.spiking.network import SNN
from stpcli.spiking.neuron import LIF, CurrentCaptured
from stpcli.spiking.settings import SpikingSettings

SAMPLES_PER_STEP = 1 << 20  # input-current values kept per time step for the percentile estimate


def snn_from_ann(ann: ANN, timesteps: int, settings: SpikingSettings) -> SNN:
    """An SNN whose weights and biases are the ANN's with BatchNorm folded in."""
    snn = SNN(ann.spec, timesteps, settings)
    state = {}
    layer: Any
    for i, layer in enumerate(ann.layers):
        if hasattr(layer, "folded"):
            for key, tensor in layer.folded().items():
                state[f"layers.{i}.{key}"] = tensor
    missing, unexpected = snn.load_state_dict(state, strict=False)
    not_neuron = [k for k in missing if not k.endswith((".threshold", ".leak", ".shortcut_scale"))]
    if not_neuron or unexpected:
        raise RuntimeError(f"conversion mapping is incomplete: missing {not_neuron}, unexpected {unexpected}")
    return snn


def spike_readers(snn: SNN) -> dict[str, list[tuple[str, str]]]:
    """For each neuron layer, what reads its spikes: ("weight", conv/linear path) or ("identity", block path)."""
    readers: dict[str, list[tuple[str, str]]] = defaultdict(list)
    sources = {}
    for layer in synaptic_layers(snn.plan, snn.spec["image_size"]):
        sources[layer.name] = layer.source
        if layer.source is not None:
            readers[layer.source].append(("weight", layer.name))
    for index, entry in enumerate(snn.plan):
        block = snn.layers[index]
        if entry["type"] == "block" and getattr(block, "shortcut_scale", None) is not None:
            source = sources[f"layers.{index}.conv1"]
            if source is not None:
                readers[source].append(("identity", f"layers.{index}"))
    return readers


@torch.no_grad()
def fold_threshold_into_readers(snn: SNN, neuron: str, threshold: float,
                                readers: dict[str, list[tuple[str, str]]]) -> None:
    """Binary spikes: the layers reading ``neuron`` take over the amplitude V it no longer emits."""
    for kind, path in readers.get(neuron, []):
        module: Any = snn.get_submodule(path)
        if kind == "weight":
            module.weight.mul_(threshold)
        else:
            module.shortcut_scale.fill_(threshold)


def _percentile(values: torch.Tensor, percentile: float) -> float:
    k = max(1, min(values.numel(), int(round(percentile / 100.0 * values.numel()))))
    return float(values.float().kthvalue(k).values)


class _Activations:
    """The calibration batch at one depth, chunk by chunk; spike maps stored as bits.

    A neuron layer's output holds two values, 0 and the spike amplitude, so it
    is kept as one bit per element plus that amplitude (32x less than float32).
    Anything else (the analog input) is kept as it is.
    """

    def __init__(self):
        self.chunks: list[tuple] = []

    def add(self, x: torch.Tensor) -> None:
        nonzero = x != 0
        values = x[nonzero]
        if values.numel() and not bool((values == values[0]).all()):
            self.chunks.append(("dense", x))
            return
        amplitude = float(values[0]) if values.numel() else 0.0
        self.chunks.append(("bits", _pack_bits(nonzero), x.shape, x.dtype, amplitude))

    def __iter__(self):
        for chunk in self.chunks:
            if chunk[0] == "dense":
                yield chunk[1]
            else:
                _, packed, shape, dtype, amplitude = chunk
                yield _unpack_bits(packed, shape).to(dtype) * amplitude


_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[: torch.Size(shape).numel()].view(shape)


@torch.no_grad()
def balance_thresholds(snn: SNN, images: torch.Tensor, percentile: float, scale: float,
                       chunk: int = 64, seed: int = 0) -> list[float]:
    """Layer by layer, V_l = scale x the p-th percentile of layer l's input current.

    Earlier layers already spike at their new thresholds. The percentile is
    taken per time step (over the calibration images) and the maximum over
    steps is kept. Each step's currents are subsampled uniformly at random
    (seeded) to at most ``SAMPLES_PER_STEP`` values, so memory stays bounded and
    every pixel position is equally likely to be drawn. With binary spikes each
    threshold is folded into the weights that read the layer's spikes as soon as
    it is set. Returns the thresholds in neuron order.
    """
    was_training = snn.training
    snn.eval()
    steps = snn.timesteps
    readers = spike_readers(snn) if snn.settings.binary else {}
    generator = torch.Generator(device=images.device).manual_seed(seed)
    budget = max(1, SAMPLES_PER_STEP * chunk // max(1, images.shape[0]))
    current_depth = _Activations()
    for start in range(0, images.shape[0], chunk):
        current_depth.add(images[start:start + chunk])
    pending: list[nn.Module] = []  # stateless layers (pooling, flattening) not yet applied
    thresholds = []
    for index, layer in enumerate(snn.layers):
        neurons = [(f"layers.{index}.{name}", m) for name, m in layer.named_modules() if isinstance(m, LIF)]
        if not neurons:
            pending.append(layer)
            continue

        def inputs(layer_index=index, depth=current_depth, stateless_layers=tuple(pending)):
            for x in depth:
                for stateless in stateless_layers:
                    x = stateless(x, steps)
                yield x, layer_index == 0

        for name, neuron in neurons:
            samples: list[list[torch.Tensor]] = [[] for _ in range(steps)]

            def keep(current, samples=samples):
                for t in range(current.shape[0]):
                    flat = current[t].reshape(-1)
                    if flat.numel() > budget:
                        flat = flat[torch.randint(flat.numel(), (budget,), generator=generator, device=flat.device)]
                    samples[t].append(flat.float().cpu())

            neuron.capture = keep
            try:
                for x, static in inputs():
                    try:
                        layer(x, steps, static=static)
                    except CurrentCaptured:
                        pass
            finally:
                neuron.capture = None
            value = max(_percentile(torch.cat(per_step), percentile) for per_step in samples)
            threshold = max(scale * value, 1e-3)
            neuron.threshold.fill_(threshold)
            thresholds.append(threshold)
            fold_threshold_into_readers(snn, name, threshold, readers)
        next_depth = _Activations()
        for x, static in inputs():
            next_depth.add(layer(x, steps, static=static))
        current_depth, pending = next_depth, []
    snn.train(was_training)
    return thresholds
