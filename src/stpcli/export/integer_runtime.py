"""The integer network of a quantized checkpoint, run with numpy alone: int32 accumulators, integer
thresholds, nothing else. It is the executable specification of the integers stp exports: a chip
(or its simulator) that computes what this computes fires the same spikes.

Per layer, on integer inputs x (the stored image values for the first layer; spikes 0/1, or spike
counts after a sum pooling, after it): ``A = sum q x`` in int32, ``spike = A > theta`` per output
channel; a residual block adds its shortcut (a 1x1 convolution sharing conv2's steps, or the
input times an integer kappa) before its comparison; the output layer's logits are ``delta A + b``
in float64. Average pooling is a sum (its 1/k^2 is in the next layer's threshold); max pooling
keeps spikes 0/1.
"""

from __future__ import annotations

import numpy as np

from stpcli.checkpoint import CheckpointFile, read_checkpoint
from stpcli.errors import StpError
from stpcli.models.plan import PlanEntry, build_plan


def _conv(x: np.ndarray, weight: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """int32 convolution: x [N, C, H, W] int32, weight [O, C, k, k] int32 -> [N, O, H', W'] int32."""
    k = weight.shape[-1]
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, weight, dtype=np.int32, optimize=True)


def _pool(x: np.ndarray, entry: PlanEntry) -> np.ndarray:
    """Sum pooling (an average pooling's 1/k^2 is in the next threshold), or max pooling of spikes
    (0/1, so padding with 0 is padding with -inf)."""
    kernel, stride, padding = entry["kernel"], entry["stride"], entry["padding"]
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    if entry["mode"] == "max":
        return windows.max(axis=(-1, -2))
    return windows.sum(axis=(-1, -2), dtype=np.int32)


def _fire(accumulator: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    shape = (1, -1, *([1] * (accumulator.ndim - 2)))
    return (accumulator > threshold.reshape(shape)).astype(np.int32)


class _IntegerRun:
    """What the loop over the plan carries: the checkpoint's integers, the values reaching the next
    layer (``x``), every neuron layer's spikes so far, the logits."""

    def __init__(self, file: CheckpointFile, images: np.ndarray):
        self.file, self.x, self.logits = file, images.astype(np.int32), np.zeros(0)
        self.spikes: list[np.ndarray] = []

    def tensor(self, name: str, dtype=np.int32) -> np.ndarray:
        return np.asarray(self.file.array(name)).astype(dtype)

    def fire(self, accumulator: np.ndarray, at: str) -> np.ndarray:
        """The layer's spikes (recorded) for its accumulator, against its ``<at>.threshold_int``."""
        spikes = _fire(accumulator, self.tensor(f"{at}.threshold_int"))
        self.spikes.append(spikes)
        return spikes


def _conv_layer(run: _IntegerRun, at: str, entry: PlanEntry) -> None:
    run.x = run.fire(_conv(run.x, run.tensor(f"{at}.conv.weight_int"), entry["stride"], entry["padding"]), f"{at}.neuron")


def _block(run: _IntegerRun, at: str, entry: PlanEntry) -> None:
    hidden = run.fire(_conv(run.x, run.tensor(f"{at}.conv1.weight_int"), entry["stride"], 1), f"{at}.neuron1")
    accumulator = _conv(hidden, run.tensor(f"{at}.conv2.weight_int"), 1, 1)
    if f"{at}.shortcut.weight_int" in run.file.tensors:
        accumulator += _conv(run.x, run.tensor(f"{at}.shortcut.weight_int"), entry["stride"], 0)
    else:
        accumulator += run.x * run.tensor(f"{at}.shortcut_int").reshape(1, -1, 1, 1)
    run.x = run.fire(accumulator, f"{at}.neuron2")


def _pool_layer(run: _IntegerRun, at: str, entry: PlanEntry) -> None:
    run.x = _pool(run.x, entry)


def _global_pool(run: _IntegerRun, at: str, entry: PlanEntry) -> None:
    run.x = run.x.sum(axis=(2, 3), dtype=np.int32)


def _flatten(run: _IntegerRun, at: str, entry: PlanEntry) -> None:
    run.x = run.x.reshape(len(run.x), -1)


def _fc(run: _IntegerRun, at: str, entry: PlanEntry) -> None:
    run.x = run.fire(run.x @ run.tensor(f"{at}.fc.weight_int").T, f"{at}.neuron")


def _output(run: _IntegerRun, at: str, entry: PlanEntry) -> None:
    accumulator = run.x @ run.tensor(f"{at}.fc.weight_int").T
    run.logits = accumulator.astype(np.float64) * run.tensor(f"{at}.fc.weight_step", np.float64) \
        + run.tensor(f"{at}.fc.bias", np.float64)


# plan entry type -> what the integer network computes for it (models.plan.LAYER_TYPES lists the
# types; a test checks the cover)
INTEGER_RUNTIME_LAYERS = {"conv": _conv_layer, "block": _block, "pool": _pool_layer, "global_pool": _global_pool,
                          "flatten": _flatten, "fc": _fc, "output": _output}


def run_integer(checkpoint: CheckpointFile | str, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(logits [N, classes] float64, the spikes of every neuron layer as int32 arrays) for ``images``,
    stored values [N, C, S, S] of an integer type."""
    file = checkpoint if isinstance(checkpoint, CheckpointFile) else read_checkpoint(checkpoint)
    if not file.record.get("quantized"):
        raise StpError(f"{file.path} is not quantized (stp quantize makes its integer form)")
    if not np.issubdtype(images.dtype, np.integer):
        raise StpError("the integer network reads stored image values, which are integers")
    run = _IntegerRun(file, images)
    for index, entry in enumerate(build_plan(file.record["model"])):
        INTEGER_RUNTIME_LAYERS[entry["type"]](run, f"layers.{index}", entry)
    return run.logits, run.spikes
