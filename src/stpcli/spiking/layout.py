"""What the LIF implementations share: per-step tensors laid out like the network's activations
(contiguous, or channels-last on CUDA), flat views of them, and the dot products of the scalar
gradients."""

from __future__ import annotations

import torch


def empty_steps(step: torch.Tensor, steps: int) -> torch.Tensor:
    """An empty [T, *step.shape] tensor whose every step has ``step``'s memory layout.

    On CUDA the network runs channels-last; spikes and input gradients written
    in that layout reach the next convolution without a transposing copy.
    """
    if step.dim() == 4 and not step.is_contiguous() and step.is_contiguous(memory_format=torch.channels_last):
        flat = torch.empty((steps * step.shape[0], *step.shape[1:]), dtype=step.dtype, device=step.device,
                           memory_format=torch.channels_last)
        return flat.view(steps, *step.shape)
    return torch.empty((steps, *step.shape), dtype=step.dtype, device=step.device)


def in_memory_order(x: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of a dense (contiguous or channels-last) tensor, or None."""
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)  # a view: this permutation is contiguous
    return None


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) in float32 (float64 for float64 inputs); without materialising the product when both
    are float32 in one layout."""
    if a.dtype == b.dtype == torch.float32 and a.stride() == b.stride():
        flat_a, flat_b = in_memory_order(a), in_memory_order(b)
        if flat_a is not None and flat_b is not None:
            return torch.dot(flat_a, flat_b)
    return torch.mul(a, b).sum(dtype=accumulator(a.dtype))


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """Scalar gradients are summed in float32, or in float64 for a float64 network."""
    return torch.float64 if dtype == torch.float64 else torch.float32
