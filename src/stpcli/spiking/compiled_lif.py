"""The LIF of ``neuron.py`` with its elementwise work fused by ``torch.compile`` (Inductor's C++ code
on the CPU): each time step is one pass that writes the step's spikes, membrane and residual, and
each backward step one pass that writes the current's gradient and the operands of the scalar
gradients, instead of the ten to twenty passes eager PyTorch makes.

Bit for bit the eager function's results: every elementwise expression below is the one
``_LIFFunction`` evaluates, in the same order (Inductor contracts no multiply-add, checked by the
tests); the scalar gradients are the same dot products on the same operands, taken by eager
PyTorch; and ``u = I + lambda r`` stays eager ``addcmul``, which rounds once (a fused multiply-add),
as before. So switching backends changes speed, never a result. It needs a C++ compiler; the
kernels are compiled once per shape family and cached on disk by PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stpcli.spiking.layout import accumulator, dot, empty_steps


def _first(current, shift, threshold, amplitude, height, binary: bool, need_residual: bool):
    u = current if shift is None else current + shift
    spikes = torch.where(u > threshold, amplitude, torch.zeros((), dtype=u.dtype, device=u.device))
    residual = (u - spikes * height if binary else u - spikes) if need_residual else None
    return u, spikes, residual


def _fire(u, threshold, amplitude, height, binary: bool, need_residual: bool):
    spikes = torch.where(u > threshold, amplitude, torch.zeros((), dtype=u.dtype, device=u.device))
    residual = (u - spikes * height if binary else u - spikes) if need_residual else None
    return spikes, residual


def _grad(u, g, grad_residual, previous, threshold, inverse, leak, gamma: float, binary: bool):
    fired = (u > threshold).to(u.dtype)
    slope = ((u * inverse - 1.0).abs().neg() + 1.0).clamp(min=0.0) * gamma
    direct = slope * g * inverse if binary else slope * g
    grad_u = direct if grad_residual is None else direct + grad_residual
    if previous is None:
        return direct, fired, grad_u, None, None
    previous_residual = previous - threshold * (previous > threshold).to(u.dtype)
    return direct, fired, grad_u, previous_residual, grad_u * leak


_SOURCES: dict[str, Callable[..., Any]] = {"first": _first, "fire": _fire, "grad": _grad}
_KERNELS: dict[str, Callable[..., Any]] = {}


def _kernel(name: str) -> Callable[..., Any]:
    """The compiled kernel (compiled on first use, shapes symbolic)."""
    if name not in _KERNELS:
        _KERNELS[name] = torch.compile(_SOURCES[name], dynamic=True)
    return _KERNELS[name]


class CompiledLIF(torch.autograd.Function):
    """``neuron._LIFFunction`` with fused elementwise steps (see the module docstring)."""

    @staticmethod
    def forward(ctx, current, threshold, leak, gamma, initial, binary):
        steps = current.shape[0]
        height = threshold.to(current.dtype)
        amplitude = torch.ones_like(height) if binary else height
        shift = leak * (initial * threshold) if initial else None
        u, spike, residual = _kernel("first")(current[0], shift, threshold, amplitude, height, binary, steps > 1)
        membranes, spikes = [u], [spike]
        for t in range(1, steps):
            u = torch.addcmul(current[t], residual, leak.to(current.dtype))
            spike, residual = _kernel("fire")(u, threshold, amplitude, height, binary, t + 1 < steps)
            membranes.append(u)
            spikes.append(spike)
        ctx.gamma, ctx.initial, ctx.binary, ctx.accumulator = gamma, initial, binary, accumulator(current.dtype)
        ctx.save_for_backward(threshold, leak, *membranes)
        return spikes[0].unsqueeze(0) if steps == 1 else torch.stack(spikes)

    @staticmethod
    def backward(ctx, grad_spikes):
        threshold, leak, *membranes = ctx.saved_tensors
        steps = len(membranes)
        grad_current = empty_steps(membranes[0], steps) if steps > 1 else None
        grad_threshold = torch.zeros((), dtype=ctx.accumulator, device=threshold.device)
        grad_leak = torch.zeros_like(grad_threshold)
        inverse = 1.0 / threshold
        grad_residual = None
        grad_u = membranes[0]  # replaced by every step's gradient
        for t in reversed(range(steps)):
            u, g = membranes[t], grad_spikes[t]
            previous = membranes[t - 1] if t > 0 else None
            direct, fired, grad_u, previous_residual, next_residual = _kernel("grad")(
                u, g, grad_residual, previous, threshold, inverse, leak, ctx.gamma, ctx.binary)
            if ctx.binary:
                grad_threshold -= dot(direct, u) * inverse
            else:
                grad_threshold += dot(g, fired) - dot(direct, u) * inverse
            if grad_residual is not None:
                grad_threshold -= dot(grad_residual, fired)
            if grad_current is not None:
                grad_current[t].copy_(grad_u)
            if previous_residual is not None:
                grad_leak += dot(grad_u, previous_residual)
            elif ctx.initial:  # u(1) = I(1) + lambda * f * V
                total = grad_u.sum(dtype=grad_threshold.dtype)
                grad_leak += total * ctx.initial * threshold.to(total.dtype)
                grad_threshold += total * ctx.initial * leak.to(total.dtype)
            grad_residual = next_residual
        grad_current = grad_u.unsqueeze(0) if grad_current is None else grad_current
        return grad_current, grad_threshold.to(threshold.dtype), grad_leak.to(leak.dtype), None, None, None
