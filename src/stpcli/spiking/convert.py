"""ANN -> SNN conversion (docs/method.md section 4): BN folding and threshold balancing.

Threshold balancing walks the network once, layer by layer (O(L) layer
evaluations): the calibration batch's activations at the current depth are kept
(spike maps bit-packed, a bit per neuron and step), each spiking layer's input
current is sampled to set its threshold, then the layer is run at its new
threshold to give the next depth's activations.
"""

from __future__ import annotations

import math
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
    for index, module in enumerate(snn.layers):
        if getattr(module, "shortcut_scale", None) is not None:  # an identity shortcut reads what its block's conv1 reads
            source = sources[f"layers.{index}.conv1"]
            if source is not None:
                readers[source].append(("identity", f"layers.{index}"))
    return readers


@torch.no_grad()
def fold_threshold_into_readers(snn: SNN, neuron: str, threshold: float,
                                readers: dict[str, list[tuple[str, str]]]) -> None:
    """Binary spikes: the layers reading ``neuron`` take over the amplitude V it no longer emits
    (their weights, or an identity shortcut's scale, are multiplied by ``threshold``)."""
    for kind, path in readers.get(neuron, []):
        module: Any = snn.get_submodule(path)
        (module.weight if kind == "weight" else module.shortcut_scale).mul_(threshold)


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
        amplitude = float(x.max()) if x.numel() else 0.0
        if amplitude <= 0 or not bool(torch.logical_or(~nonzero, x == amplitude).all()):
            if bool(nonzero.any()):  # an analog tensor (or a negative amplitude): kept as it is
                self.chunks.append(("dense", x))
                return
            amplitude = 0.0
        self.chunks.append(("bits", _pack_bits(nonzero), x.shape, x.dtype, amplitude))

    def __iter__(self):
        for chunk in self.chunks:
            if chunk[0] == "dense":
                yield chunk[1]
            else:
                _, packed, shape, dtype, amplitude = chunk
                bits = _unpack_bits(packed, shape).to(dtype)
                yield bits if amplitude == 1.0 else bits * amplitude


_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[: torch.Size(shape).numel()].view(shape)


def _layer_currents(layer: nn.Module, neuron: LIF, inputs, steps: int):
    """The input current [T, images, ...] of ``neuron`` (inside ``layer``), chunk by chunk."""
    for x, static in inputs():
        captured: list[torch.Tensor] = []
        neuron.capture = captured.append
        try:
            layer(x, steps, static=static)
        except CurrentCaptured:
            pass
        finally:
            neuron.capture = None
        yield captured[0]


def _sampled_percentile(currents, steps: int, percentile: float, budget: int, generator: torch.Generator) -> float:
    """stp's estimate: per step, the percentile of a seeded uniform sample of at most ``budget``
    currents per chunk; the maximum over steps."""
    samples: list[list[torch.Tensor]] = [[] for _ in range(steps)]
    for current in currents:
        for t in range(current.shape[0]):
            flat = current[t].reshape(-1)
            if flat.numel() > budget:
                flat = flat[torch.randint(flat.numel(), (budget,), generator=generator, device=flat.device)]
            samples[t].append(flat.float().cpu())
    return max(_percentile(torch.cat(per_step), percentile) for per_step in samples)


BRACKET_SAMPLES = 1 << 16  # values per step that locate the exact percentile (then counted exactly)


def exact_step_percentiles(currents, steps: int, percentile: float, chunks: int,
                           generator: torch.Generator) -> list[float]:
    """Each step's percentile over every current value, as the reference code takes it: the k-th
    smallest of n values with k = 1 + round(p / 100 * (n - 1)).

    ``currents()`` yields the values [T, chunk, ...] in ``chunks`` chunks and is called more than
    once: a seeded sample of each step's values brackets its k-th value, a second pass counts the values
    below the bracket and keeps those inside it, and the k-th value is selected among those. A
    bracket that missed (which the sample makes rare) is widened to everything on that side and
    the pass repeated, so the result is exact whatever the sample, in memory of about 1 % of the values.
    """
    total, samples = 0, []
    per_chunk = -(-BRACKET_SAMPLES // chunks)
    for current in currents():
        flat = current.reshape(steps, -1)
        total += flat.shape[1]
        index = torch.randint(flat.shape[1], (steps, per_chunk), generator=generator, device=flat.device)
        samples.append(torch.gather(flat, 1, index).to(_exact(flat.dtype)).cpu())
    k = 1 + round(percentile / 100.0 * (total - 1))
    fraction = (k - 1) / max(1, total - 1)
    sample = torch.cat(samples, dim=1)
    m = sample.shape[1]
    centre = fraction * (m - 1)
    margin = 4.0 * math.sqrt(m * fraction * (1 - fraction)) + 8  # four standard errors of the sample's rank
    lo, hi = math.floor(centre - margin), math.ceil(centre + margin)
    low = sample.kthvalue(lo + 1, dim=1).values.tolist() if lo >= 0 else [-math.inf] * steps
    high = sample.kthvalue(hi + 1, dim=1).values.tolist() if hi < m else [math.inf] * steps
    result: list[float | None] = [None] * steps
    while True:
        pending = [t for t in range(steps) if result[t] is None]
        if not pending:
            return [float(v) for v in result]  # type: ignore[arg-type]
        rows = torch.tensor(pending)
        low_bound, high_bound = torch.tensor(low)[rows, None], torch.tensor(high)[rows, None]
        below = torch.zeros(len(pending), dtype=torch.long)
        inside: list[list[torch.Tensor]] = [[] for _ in pending]
        for current in currents():
            flat = current.reshape(steps, -1)[rows.to(current.device)].to(_exact(current.dtype)).cpu()
            below += torch.count_nonzero(flat < low_bound, dim=1)
            keep = (flat >= low_bound) & (flat <= high_bound)
            for row, values in enumerate(flat[keep].split(torch.count_nonzero(keep, dim=1).tolist())):
                inside[row].append(values)
        for row, t in enumerate(pending):
            kept, below_t = torch.cat(inside[row]), int(below[row])
            if k <= below_t:
                high[t], low[t] = low[t], -math.inf
            elif k > below_t + kept.numel():
                low[t], high[t] = high[t], math.inf
            else:
                result[t] = float(kept.kthvalue(k - below_t).values)


def _exact(dtype: torch.dtype) -> torch.dtype:
    """Currents are compared in their own precision (float32 at least)."""
    return torch.promote_types(dtype, torch.float32)


MAX_IMAGE_STEPS = 2560  # images x time steps run at once while balancing (64 images at T <= 40)


@torch.no_grad()
def balance_thresholds(snn: SNN, images: torch.Tensor, percentile: float, scale: float,
                       chunk: int = 64, seed: int = 0, *, method: str = "stp", steps: int | None = None,
                       fold: bool | None = None) -> list[float]:
    """Layer by layer, V_l = scale x the p-th percentile of layer l's input current.

    Earlier layers already spike at their new thresholds. The percentile is
    taken per time step (over the calibration images) and the maximum over
    steps is kept, over ``steps`` time steps (default: the SNN's T).

    ``method="stp"``: each step's currents are subsampled uniformly at random
    (seeded) to at most ``SAMPLES_PER_STEP`` values, so memory stays bounded and
    every pixel position is equally likely to be drawn; each threshold is scaled
    as soon as it is set, so later layers are balanced against scaled thresholds.

    ``method="reference"``: as TP's and DIET-SNN's code: earlier layers spike at
    their unscaled thresholds, the percentile is exact (``exact_step_percentiles``),
    a layer whose maximum is not positive gets 0.1, and every threshold is scaled
    at the end.

    With binary spikes and ``fold`` (the default), each threshold is folded into
    the weights that read the layer's spikes as soon as it is set. Returns the
    thresholds in neuron order.
    """
    was_training = snn.training
    snn.eval()
    steps = steps or snn.timesteps
    chunk = max(1, min(chunk, MAX_IMAGE_STEPS // steps))
    fold = snn.settings.binary if fold is None else fold
    readers = spike_readers(snn) if fold and snn.settings.binary else {}
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
            def currents(layer=layer, neuron=neuron, inputs=inputs):
                return _layer_currents(layer, neuron, inputs, steps)

            if method == "reference":
                threshold = max(0.0, *exact_step_percentiles(currents, steps, percentile, len(current_depth.chunks),
                                                               generator)) or 0.1
            else:
                threshold = max(scale * _sampled_percentile(currents(), steps, percentile, budget, generator), 1e-3)
            neuron.threshold.fill_(threshold)
            thresholds.append(threshold)
            fold_threshold_into_readers(snn, name, threshold, readers)
        next_depth = _Activations()
        for x, static in inputs():
            next_depth.add(layer(x, steps, static=static))
        current_depth, pending = next_depth, []
    if method == "reference":  # scaled at the end: the readers' folded weights scale with their thresholds
        for (name, neuron), threshold in zip(snn.neurons(), thresholds):
            neuron.threshold.fill_(scale * threshold)
            fold_threshold_into_readers(snn, name, scale, readers)
        thresholds = [scale * t for t in thresholds]
    snn.train(was_training)
    return thresholds
