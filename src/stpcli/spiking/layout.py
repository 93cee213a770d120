"""Memory layouts the LIF implementations share: per-step tensors laid out like the network's
activations (contiguous, or channels-last on CUDA), and flat views of them."""

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
