"""Describing a checkpoint without torch: its metadata, layer table and lineage (``stp info``),
and the sha256 check of every parent file (``--verify``)."""

from __future__ import annotations

import math
from pathlib import Path

from stpcli.checkpoint import CheckpointFile, read_record
from stpcli.files import sha256_file
from stpcli.models.plan import build_plan, describe, has_neuron, synaptic_layers
from stpcli.spec import ModelSpec


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


def info(ckpt: CheckpointFile) -> dict:
    """What ``stp info`` shows: the record, the split's counts, the layers, each neuron layer's
    threshold and leak, the lineage (the tensors were checked against the record when read)."""
    record = ckpt.record
    thresholds = {}
    if ckpt.kind == "snn":
        for key in ckpt.tensors:
            if key.endswith(".threshold") or key.endswith(".leak"):
                thresholds[key] = ckpt.scalar(key)
    return {
        "path": str(ckpt.path),
        "sha256": ckpt.sha256,
        "record": {k: v for k, v in record.items() if k not in ("split", "history")},
        "split": {k: v for k, v in record["split"].items() if k != "files"}
        | {"counts": {p: len(f) for p, f in record["split"]["files"].items()}},
        "layers": layer_table(record["model"], record["input"]["image_size"], ckpt.kind),
        "neurons": thresholds,
        "history": record["history"],
        "parameters": int(sum(math.prod(shape) for _, shape, _, _ in ckpt.tensors.values())),
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


