"""Reading checkpoints with their data: evaluate one, compare several (``describe`` reads one
without torch: its metadata, layers and lineage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stpcli.checkpoint import Checkpoint, load_checkpoint
from stpcli.data.source import SplitData
from stpcli.engine.evaluate import accuracy_report
from stpcli.errors import StpError
from stpcli.models.plan import build_plan, describe, has_weights
from stpcli.options import DataOptions
from stpcli.restore import input_stats, model_from_checkpoint
from stpcli.run import Run, load_checkpoint_data
from stpcli.schema import check_timesteps
from stpcli.spiking.energy import ann_energy, counting_spikes, mean_spikes_per_neuron, snn_energy


def evaluate(run: Run, ckpt: Checkpoint, data: DataOptions, timesteps: int | None = None,
             part: str = "test", batch_size: int = 256, parts: SplitData | None = None) -> dict:
    """``parts``: the checkpoint's data and split when the caller has already loaded them."""
    if timesteps is not None and ckpt.kind != "snn":
        raise StpError("--timesteps applies to SNN checkpoints only")
    if timesteps is not None:
        check_timesteps(timesteps)
    if batch_size <= 0:
        raise StpError(f"--batch-size must be positive, got {batch_size}")
    if parts is None:
        parts = load_checkpoint_data(run, ckpt, data)
    model = model_from_checkpoint(ckpt, timesteps=timesteps).to(run.runtime.device)
    images, labels = parts.part(part)
    if len(labels) == 0:
        raise StpError(f"the {part} split of {ckpt.path} has no images; there is nothing to evaluate")
    device = run.runtime.device
    args = (images.to(device), labels.to(device), ckpt.classes, input_stats(ckpt.record).to(device), run.runtime,
            batch_size)
    plan, size = build_plan(ckpt.model_spec), ckpt.record["input"]["image_size"]
    result: dict[str, Any] = {"checkpoint": str(ckpt.path), "kind": ckpt.kind, "method": method_of(ckpt.record),
                              "part": part}
    if ckpt.kind == "ann":
        result.update(accuracy_report(model, *args))
        result["energy"] = ann_energy(plan, size)
        result["macs"] = result["energy"]["macs"]
        return result
    steps = model.timesteps
    with counting_spikes(model) as counters:
        result.update(accuracy_report(model, *args))
    rates = {name: counter.rate for name, counter in counters.items()}
    result["timesteps"] = steps
    result["spike_rates"] = [
        {"layer": name, "label": neuron_label(plan, name), "spikes_per_neuron": rate, "rate_per_step": rate / steps}
        for name, rate in rates.items()]
    result["mean_spikes_per_neuron"] = mean_spikes_per_neuron(counters)
    result["energy"] = snn_energy(plan, size, rates, steps)
    result["macs"] = result["energy"]["macs"]
    return result


def neuron_label(plan, module_name: str) -> str:
    """A neuron layer by what it follows: ``layers.3.neuron`` -> ``3: conv3-128``, a residual block's
    second neuron -> ``5: block-64 (2)``."""
    parts = module_name.split(".")
    if len(parts) < 3 or parts[0] != "layers" or not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) >= len(plan):
        return module_name
    index, neuron = int(parts[1]), parts[2]
    suffix = f" ({neuron.removeprefix('neuron')})" if neuron.removeprefix("neuron") else ""
    return f"{index}: {describe(plan[index])}{suffix}"


METHODS = ("ANN", "ANN with Units", "TP", "STP (Units kept)", "STP")


def method_of(record: dict) -> str:
    """Which method made a checkpoint, read from its lineage: the base ANN, the ANN with Units
    (Nb), TP (converted without Units), STP with its Units still in (Sb) or pruned away (Sa)."""
    stages = [entry.get("stage") for entry in record.get("history", [])]
    has_units = bool(record["model"].get("units"))
    if record["kind"] == "ann":
        return "ANN with Units" if has_units else "ANN"
    if "add-unit" in stages:
        return "STP (Units kept)" if has_units else "STP"
    return "TP"


def compare(run: Run, paths: list[Path], data: DataOptions) -> list[dict]:
    """Evaluate each checkpoint; checkpoints of one chain share their data, which is loaded once."""
    rows, loaded = [], {}
    for path in paths:
        ckpt = load_checkpoint(path)
        key = (ckpt.record["data"]["fingerprint"], ckpt.record["input"]["image_size"], ckpt.record["split"]["sha256"])
        if key not in loaded:
            loaded[key] = load_checkpoint_data(run, ckpt, data)
        result = evaluate(run, ckpt, data, parts=loaded[key])
        energy = result["energy"]
        rows.append({
            "checkpoint": str(path),
            "data": ckpt.record["data"]["path"],
            "data_fingerprint": ckpt.record["data"]["fingerprint"],
            "image_size": ckpt.record["input"]["image_size"],
            "kind": ckpt.kind,
            "method": result["method"],
            "weight_bits": (ckpt.record.get("quantized") or {}).get("weight_bits"),
            "timesteps": ckpt.timesteps,
            "layers": sum(1 for e in build_plan(ckpt.model_spec) if has_weights(e)),
            "accuracy": result["overall_accuracy"],
            "average_accuracy": result["average_accuracy"],
            "kappa": result["kappa"],
            "spikes_per_neuron": result.get("mean_spikes_per_neuron"),
            "energy_uj": energy["energy_pj"] / 1e6,
            "ann_energy_ratio": energy.get("ann_to_snn_energy_ratio"),
        })
    return rows
