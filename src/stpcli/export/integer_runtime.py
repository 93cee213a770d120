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


def run_integer(checkpoint: CheckpointFile | str, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(logits [N, classes] float64, the spikes of every neuron layer as int32 arrays) for ``images``,
    stored values [N, C, S, S] of an integer type."""
    file = checkpoint if isinstance(checkpoint, CheckpointFile) else read_checkpoint(checkpoint)
    if not file.record.get("quantized"):
        raise StpError(f"{file.path} is not quantized (stp quantize makes its integer form)")
    if not np.issubdtype(images.dtype, np.integer):
        raise StpError("the integer network reads stored image values, which are integers")

    def tensor(name: str) -> np.ndarray:
        return np.asarray(file.array(name))

    x = images.astype(np.int32)
    spikes: list[np.ndarray] = []
    logits = np.zeros(0)
    for index, entry in enumerate(build_plan(file.record["model"])):
        at, kind = f"layers.{index}", entry["type"]
        if kind == "conv":
            x = _fire(_conv(x, tensor(f"{at}.conv.weight_int").astype(np.int32), entry["stride"], entry["padding"]),
                      tensor(f"{at}.neuron.threshold_int"))
            spikes.append(x)
        elif kind == "block":
            hidden = _fire(_conv(x, tensor(f"{at}.conv1.weight_int").astype(np.int32), entry["stride"], 1),
                           tensor(f"{at}.neuron1.threshold_int"))
            accumulator = _conv(hidden, tensor(f"{at}.conv2.weight_int").astype(np.int32), 1, 1)
            if f"{at}.shortcut.weight_int" in file.tensors:
                accumulator += _conv(x, tensor(f"{at}.shortcut.weight_int").astype(np.int32), entry["stride"], 0)
            else:
                accumulator += x * tensor(f"{at}.shortcut_int").reshape(1, -1, 1, 1)
            spikes.append(hidden)
            x = _fire(accumulator, tensor(f"{at}.neuron2.threshold_int"))
            spikes.append(x)
        elif kind == "pool":
            x = _pool(x, entry)
        elif kind == "global_pool":
            x = x.sum(axis=(2, 3), dtype=np.int32)
        elif kind == "flatten":
            x = x.reshape(len(x), -1)
        elif kind == "fc":
            x = _fire(x @ tensor(f"{at}.fc.weight_int").astype(np.int32).T, tensor(f"{at}.neuron.threshold_int"))
            spikes.append(x)
        elif kind == "output":
            accumulator = x @ tensor(f"{at}.fc.weight_int").astype(np.int32).T
            logits = accumulator.astype(np.float64) * tensor(f"{at}.fc.weight_step").astype(np.float64) \
                + tensor(f"{at}.fc.bias").astype(np.float64)
    return logits, spikes
