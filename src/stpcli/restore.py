"""A checkpoint's model rebuilt: the ANN or SNN its record describes, with its tensors loaded."""

from __future__ import annotations

import torch

from stpcli.checkpoint import Checkpoint, check_tensors_match_record
from stpcli.data.loader import InputStats
from stpcli.errors import StpError
from stpcli.files import first_line
from stpcli.models.ann import ANN
from stpcli.models.plan import build_plan
from stpcli.schema import recorded_input
from stpcli.spiking.network import SNN
from stpcli.spiking.quantize import IntegerSNN
from stpcli.spiking.settings import SpikingSettings


def model_from_checkpoint(ckpt: Checkpoint, timesteps: int | None = None):
    """Rebuild the ANN or SNN a checkpoint describes and load its tensors."""
    check_tensors_match_model(ckpt)
    model = _build(ckpt, timesteps)
    if isinstance(model, IntegerSNN):
        return model
    try:
        model.load_state_dict(ckpt.tensors)
    except Exception as exc:
        raise StpError(f"{ckpt.path}: tensors do not match the recorded model ({first_line(exc)})") from exc
    return model


def _build(ckpt: Checkpoint, timesteps: int | None = None):
    if ckpt.kind == "ann":
        return ANN(ckpt.model_spec)
    if ckpt.record.get("quantized"):  # its integer form, which reads the stored image values
        if timesteps not in (None, 1):
            raise StpError(f"{ckpt.path} is a quantized one-time-step network; it runs at T = 1 only")
        return IntegerSNN(ckpt.model_spec, build_plan(ckpt.model_spec), ckpt.tensors)
    steps = timesteps or ckpt.timesteps
    if steps is None:
        raise StpError(f"{ckpt.path} is an SNN checkpoint without time steps")
    return SNN(ckpt.model_spec, steps, SpikingSettings.from_record(ckpt.record.get("snn")))


def check_tensors_match_model(ckpt: Checkpoint) -> None:
    """A checkpoint built in memory (not read from a file, which ``read_checkpoint`` checks) against its record."""
    check_tensors_match_record(ckpt.record, {k: tuple(v.shape) for k, v in ckpt.tensors.items()}, ckpt.path or "the checkpoint")


def input_stats(record: dict) -> InputStats:
    """The normalisation a checkpoint was trained with, shaped for a batch of images."""
    spec = recorded_input(record)
    bands = len(spec["mean"])
    return InputStats(torch.tensor(spec["mean"]).view(1, bands, 1, 1), torch.tensor(spec["std"]).view(1, bands, 1, 1),
                      float(spec["divisor"]))


def require_kind(ckpt: Checkpoint, command: str, expected: str) -> None:
    if ckpt.kind != expected:
        found = ckpt.kind.upper() + (f" (T={ckpt.timesteps})" if ckpt.kind == "snn" else "")
        raise StpError(f"{command} needs an {expected.upper()} checkpoint; {ckpt.path} is an {found} checkpoint")
