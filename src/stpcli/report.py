"""Reading checkpoints: evaluate one, compare several, describe one, verify its lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stpcli.checkpoint import Checkpoint, load_checkpoint, read_record
from stpcli.data.source import SplitData
from stpcli.engine.evaluate import accuracy_report
from stpcli.errors import StpError
from stpcli.files import sha256_file
from stpcli.models.plan import build_plan, describe, has_neuron, has_weights, synaptic_layers
from stpcli.restore import check_tensors_match_model, check_timesteps, input_stats, model_from_checkpoint
from stpcli.run import DataOptions, Run, load_checkpoint_data
from stpcli.spec import ModelSpec
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
    mean, std = input_stats(ckpt.record)
    device = run.runtime.device
    args = (images.to(device), labels.to(device), ckpt.classes, mean.to(device), std.to(device), run.runtime,
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
    if len(parts) < 3 or parts[0] != "layers" or not parts[1].isdigit() or int(parts[1]) >= len(plan):
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


def layer_table(spec: ModelSpec, image_size: int, kind: str) -> list[dict]:
    plan = build_plan(spec)
    macs: dict[int, int] = {}
    for layer in synaptic_layers(plan, image_size):
        macs[layer.index] = macs.get(layer.index, 0) + layer.macs
    rows = []
    for index, entry in enumerate(plan):
        rows.append({
            "index": index,
            "group": entry.get("group"),
            "layer": describe(entry),
            "in": entry.get("in"),
            "out": entry.get("out"),
            "unit": bool(entry.get("unit", False)),
            "neuron": ("LIF" if kind == "snn" else "ReLU") if has_neuron(entry) else None,
            "macs": macs.get(index, 0),
        })
    return rows


def info(ckpt: Checkpoint) -> dict:
    check_tensors_match_model(ckpt)
    record = ckpt.record
    thresholds = {}
    if ckpt.kind == "snn":
        for key, tensor in ckpt.tensors.items():
            if key.endswith(".threshold") or key.endswith(".leak"):
                thresholds[key] = float(tensor)
    return {
        "path": str(ckpt.path),
        "sha256": ckpt.sha256,
        "record": {k: v for k, v in record.items() if k not in ("split", "history")},
        "split": {k: v for k, v in record["split"].items() if k != "files"}
        | {"counts": {p: len(f) for p, f in record["split"]["files"].items()}},
        "layers": layer_table(record["model"], record["input"]["image_size"], ckpt.kind),
        "neurons": thresholds,
        "history": record["history"],
        "parameters": int(sum(t.numel() for t in ckpt.tensors.values())),
    }


def verify_chain(path: Path) -> list[dict]:
    """Follow each checkpoint's parent (by name beside the child, else by its recorded path); compare sha256.

    A chain of files is usually moved as a folder, so a parent beside its child wins.
    """
    rows: list[dict] = []
    current: Path | None = Path(path)
    seen: set[str] = set()
    while current is not None and str(current) not in seen:
        seen.add(str(current))
        record = read_record(current)
        parent = record["history"][-1].get("parent") if record["history"] else None
        if not parent:
            break
        candidates = [current.parent / Path(parent["path"]).name, Path(parent["path"])]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            rows.append({"child": str(current), "parent": parent["path"], "status": "missing"})
            break
        status = "ok" if sha256_file(found) == parent["sha256"] else "changed"
        rows.append({"child": str(current), "parent": str(found), "status": status})
        current = found if status == "ok" else None
    return rows


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
            "timesteps": ckpt.timesteps,
            "layers": sum(1 for e in build_plan(ckpt.model_spec) if has_weights(e)),
            "accuracy": result["accuracy"],
            "average_accuracy": result["average_accuracy"],
            "kappa": result["kappa"],
            "spikes_per_neuron": result.get("mean_spikes_per_neuron"),
            "energy_uj": energy["energy_pj"] / 1e6,
            "ann_energy_ratio": energy.get("ann_to_snn_energy_ratio"),
        })
    return rows
