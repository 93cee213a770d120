"""ANN -> SNN conversion (method.md section 4): BN folding and threshold balancing."""

from __future__ import annotations

import torch

from stpcli.models.ann import ANN
from stpcli.spiking.network import SNN
from stpcli.spiking.neuron import CurrentCaptured

SAMPLES_PER_STEP = 1 << 20  # elements kept per time step for the percentile estimate


def snn_from_ann(ann: ANN, timesteps: int, gamma: float, dropout: float, initial: float) -> SNN:
    """An SNN whose weights and biases are the ANN's with BatchNorm folded in."""
    snn = SNN(ann.spec, timesteps, gamma=gamma, dropout=dropout, initial=initial)
    state = {}
    for i, layer in enumerate(ann.layers):
        if hasattr(layer, "folded"):
            for key, tensor in layer.folded().items():
                state[f"layers.{i}.{key}"] = tensor
    missing, unexpected = snn.load_state_dict(state, strict=False)
    not_neuron = [k for k in missing if not k.endswith((".threshold", ".leak"))]
    if not_neuron or unexpected:
        raise RuntimeError(f"conversion mapping is incomplete: missing {not_neuron}, unexpected {unexpected}")
    return snn


def _percentile(values: torch.Tensor, percentile: float) -> float:
    k = max(1, min(values.numel(), int(round(percentile / 100.0 * values.numel()))))
    return float(values.float().kthvalue(k).values)


@torch.no_grad()
def balance_thresholds(snn: SNN, images: torch.Tensor, percentile: float, scale: float,
                       chunk: int = 64) -> list[float]:
    """Layer by layer, V_l = scale x the p-th percentile of layer l's input current.

    Earlier layers already spike at their new thresholds. The percentile is
    taken per time step (over the calibration images) and the maximum over
    steps is kept. Large currents are subsampled with a fixed stride to at most
    ``SAMPLES_PER_STEP`` values per step, so memory stays bounded.
    """
    was_training = snn.training
    snn.eval()
    thresholds = []
    for _, neuron in snn.neurons():
        samples: list[list[torch.Tensor]] = [[] for _ in range(snn.timesteps)]
        budget = max(1, SAMPLES_PER_STEP * chunk // max(1, images.shape[0]))

        def keep(current, samples=samples, budget=budget):
            for t in range(current.shape[0]):
                flat = current[t].reshape(-1)
                stride = max(1, flat.numel() // budget)
                samples[t].append(flat[::stride].float().cpu())

        neuron.capture = keep
        try:
            for start in range(0, images.shape[0], chunk):
                try:
                    snn(images[start:start + chunk])
                except CurrentCaptured:
                    pass
        finally:
            neuron.capture = None
        value = max(_percentile(torch.cat(per_step), percentile) for per_step in samples)
        threshold = max(scale * value, 1e-3)
        neuron.threshold.fill_(threshold)
        thresholds.append(threshold)
    snn.train(was_training)
    return thresholds
