"""How stp names files: a checkpoint's companions, temporal pruning's T files, figures, logs.

Every module that writes or looks for one of these files asks here, so a name is spelt once.
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT_SUFFIX = ".safetensors"
LOCK_SUFFIX = ".lock"


def checkpoint_path(folder: Path, name: str) -> Path:
    """The checkpoint a chain step names (``sa_t1``) in ``folder``."""
    return folder / (name + CHECKPOINT_SUFFIX)


def stem(checkpoint: str | Path) -> str:
    """``runs/sa_t1.safetensors`` -> ``sa_t1``."""
    return Path(checkpoint).name.removesuffix(CHECKPOINT_SUFFIX)


def _beside(out: Path, suffix: str) -> Path:
    return out.with_name(stem(out) + suffix)


def state_path(out: Path) -> Path:
    """The training state an interrupted run resumes from."""
    return _beside(out, ".state.safetensors")


def metrics_path(out: Path) -> Path:
    """The per-epoch metrics CSV of a training command."""
    return _beside(out, ".metrics.csv")


def curves_path(out: Path) -> Path:
    """The training curves of a training command."""
    return _beside(out, ".png")


def log_path(out: Path) -> Path:
    """The output of a stage that stp pipeline or stp study ran."""
    return _beside(out, ".log")


def lock_path(path: Path) -> Path:
    """The lock of an output being written."""
    return path.with_name(path.name + LOCK_SUFFIX)


def at_timesteps(base: str, timesteps: int) -> str:
    """The name of an SNN file at T time steps, without its suffix: sb -> sb_t3."""
    return f"{base}_t{timesteps}"


def timestep_path(out: Path, timesteps: int) -> Path:
    """A temporal-pruning T file: sb_t1.safetensors -> sb_t3.safetensors; other names get a _t3 suffix."""
    base = re.sub(r"_t\d+$", "", stem(out))
    return out.with_name(at_timesteps(base, timesteps) + CHECKPOINT_SUFFIX)


def figure_path(folder: Path, checkpoint: str | Path, figure: str, fmt: str) -> Path:
    """``evaluate --plots``: ``<folder>/<checkpoint stem>.<figure>.<fmt>``."""
    return folder / f"{stem(checkpoint)}.{figure}.{fmt}"
