"""Spike statistics and the energy model of docs/method.md section 6 (Horowitz, 45 nm).

E_ANN = 4.6 pJ x sum_l MACs_l
E_SNN = 4.6 pJ x MACs_1 x T + 0.9 pJ x sum_{l>=2} MACs_l x r_{l-1}

with r_{l-1} the spikes per neuron of the layer feeding l, summed over the T
steps and averaged over the test images. SOPs_l = MACs_l x r_{l-1}.
"""

from __future__ import annotations

from contextlib import contextmanager

from stpcli.models.plan import PlanEntry, synaptic_layers
from stpcli.spiking.network import SNN
from stpcli.spiking.neuron import SpikeCounter

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


@contextmanager
def counting_spikes(snn: SNN):
    counters = {}
    for name, neuron in snn.neurons():
        neuron.counter = counters[name] = SpikeCounter()
    try:
        yield counters
    finally:
        for _, neuron in snn.neurons():
            neuron.counter = None


def mean_spikes_per_neuron(counters: dict[str, SpikeCounter]) -> float:
    """Spikes per neuron over the T steps, averaged over every neuron of every layer and image."""
    slots = sum(c.neuron_slots for c in counters.values())
    return sum(c.spikes for c in counters.values()) / slots if slots else 0.0


def ann_energy(spec_plan: list[PlanEntry], image_size: int) -> dict:
    layers = synaptic_layers(spec_plan, image_size)
    macs = sum(layer.macs for layer in layers)
    return {"macs": macs, "energy_pj": E_MAC_PJ * macs}


def snn_energy(spec_plan: list[PlanEntry], image_size: int, rates: dict[str, float], timesteps: int) -> dict:
    rows, total_pj, total_sops = [], 0.0, 0.0
    for layer in synaptic_layers(spec_plan, image_size):
        if layer.source is None:  # direct encoding: real MACs on the analog image at every step
            energy, rate, sops = E_MAC_PJ * layer.macs * timesteps, None, 0.0
        else:
            rate = rates[layer.source]
            sops = layer.macs * rate
            energy = E_AC_PJ * sops
        total_pj += energy
        total_sops += sops
        rows.append({"layer": layer.name, "macs": layer.macs, "input_rate": rate, "sops": sops, "energy_pj": energy})
    ann = ann_energy(spec_plan, image_size)
    return {
        "layers": rows,
        "sops": total_sops,
        "energy_pj": total_pj,
        "ann_energy_pj": ann["energy_pj"],
        "macs": ann["macs"],
        "ann_to_snn_energy_ratio": ann["energy_pj"] / total_pj if total_pj else None,
    }
