"""The periodic training-state file that ``--resume`` continues from.

Written atomically at the end of every epoch, as safetensors (no pickle):
model, optimiser buffers, the best-so-far model, the CPU RNG state, and a JSON
record with the epoch, the metric history and the options the run was started
with. A run killed at any moment (even ``kill -9``) resumes from the last
complete epoch and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from stpcli.errors import StpError
from stpcli.files import atomic_save_tensors, first_line

STATE_FORMAT = "stp-training-state"


def save_state(path: Path, model, optimizer, record: dict, best_state: dict | None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    optim = optimizer.state_dict()
    scalars = {}
    for index, values in optim["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    meta = dict(record)
    meta["format"] = STATE_FORMAT
    meta["optimizer"] = {"param_groups": optim["param_groups"], "scalars": scalars}
    atomic_save_tensors(tensors, {"stp-state": json.dumps(meta)}, path)


def load_state(path: Path, model, optimizer) -> tuple[dict, dict | None]:
    """Restore model, optimiser and RNG; returns (record, best_state)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["stp-state"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:
        raise StpError(f"training state {path} is unreadable ({first_line(exc, 160)}); "
                       "delete it or pass --force to start over") from exc
    if meta.get("format") != STATE_FORMAT:
        raise StpError(f"{path} is not an stp training state")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    return meta, best


def read_state_record(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads(handle.metadata()["stp-state"])
    except Exception as exc:
        raise StpError(f"training state {path} is unreadable; delete it or pass --force to start over") from exc
