"""The multi-step LIF of ``neuron.py`` as two Triton kernels: forward and backward, each one pass
over all T steps.

Each program owns a block of neurons and walks the time steps in registers: the
forward reads each step's current once and writes its spikes and membrane; the
backward reads the membranes and spike gradients once, writes the current
gradients, and reduces the threshold and leak gradients per block (summed on
the host). The math is exactly ``neuron._LIFFunction``'s, which stays the
reference and the CPU path; parity tests run both on the CPU through Triton's
interpreter (``TRITON_INTERPRET=1``) and on a GPU in benchmarks/gpu_kernels.py.

Layout: every step of the current, spikes, membranes and gradients is one
dense block in memory order (contiguous or channels-last), so element i of
step t lives at ``t * step_stride + i``; a step stride of 0 is the first
layer's current broadcast over T.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from stpcli.spiking.layout import empty_steps

BLOCK = 1024


@triton.jit
def _lif_forward(current, spikes, membranes, threshold, leak, n, current_step_stride, steps, initial,
                 BINARY: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    v = tl.load(threshold).to(tl.float32)
    lam = tl.load(leak).to(tl.float32)
    residual = tl.zeros([BLOCK], dtype=tl.float32) + initial * v
    for t in range(steps):
        i = tl.load(current + t * current_step_stride + offsets, mask=mask, other=0.0).to(tl.float32)
        u = lam * residual + i
        fired = u > v
        if BINARY:
            s = tl.where(fired, 1.0, 0.0)
        else:
            s = tl.where(fired, v, 0.0)
        tl.store(spikes + t * n + offsets, s.to(spikes.dtype.element_ty), mask=mask)
        tl.store(membranes + t * n + offsets, u.to(membranes.dtype.element_ty), mask=mask)
        residual = u - tl.where(fired, v, 0.0)


@triton.jit
def _lif_backward(grad_spikes, membranes, grad_current, partial_threshold, partial_leak, threshold, leak, n,
                  steps, gamma, initial, BINARY: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    v = tl.load(threshold).to(tl.float32)
    lam = tl.load(leak).to(tl.float32)
    inverse = 1.0 / v
    grad_residual = tl.zeros([BLOCK], dtype=tl.float32)  # dL/dr(t), from u(t+1); zero after the last step
    sum_threshold = tl.zeros([BLOCK], dtype=tl.float32)
    sum_leak = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(steps):
        t = steps - 1 - k
        u = tl.load(membranes + t * n + offsets, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(grad_spikes + t * n + offsets, mask=mask, other=0.0).to(tl.float32)
        fired = tl.where(u > v, 1.0, 0.0)
        slope = gamma * tl.maximum(1.0 - tl.abs(u * inverse - 1.0), 0.0)
        if BINARY:  # s = H(z): ds/du = slope/V, ds/dV = -slope u / V^2
            direct = slope * g * inverse
            sum_threshold -= direct * u * inverse
        else:  # s = V H(z): ds/du = slope, ds/dV = H - slope u / V
            direct = slope * g
            sum_threshold += g * fired - direct * u * inverse
        grad_u = direct + grad_residual
        sum_threshold -= grad_residual * fired  # r(t) = u(t) - V H(t)
        tl.store(grad_current + t * n + offsets, grad_u.to(grad_current.dtype.element_ty), mask=mask)
        if t > 0:
            previous = tl.load(membranes + (t - 1) * n + offsets, mask=mask, other=0.0).to(tl.float32)
            sum_leak += grad_u * (previous - tl.where(previous > v, v, 0.0))
        else:  # u(1) = I(1) + lambda f V
            sum_leak += grad_u * initial * v
            sum_threshold += grad_u * initial * lam
        grad_residual = grad_u * lam
    sum_threshold = tl.where(mask, sum_threshold, 0.0)
    sum_leak = tl.where(mask, sum_leak, 0.0)
    tl.store(partial_threshold + pid, tl.sum(sum_threshold, axis=0))
    tl.store(partial_leak + pid, tl.sum(sum_leak, axis=0))


def dense_steps(current: torch.Tensor) -> bool:
    """Whether every step of ``current`` [T, ...] is one dense block the kernels can walk."""
    step = current[0]
    dense = step.is_contiguous() or (step.dim() == 4 and step.is_contiguous(memory_format=torch.channels_last))
    return dense and current.stride(0) in (0, step.numel())


class TritonLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, threshold, leak, gamma, initial, binary):
        steps, n = current.shape[0], current[0].numel()
        spikes = empty_steps(current[0], steps)
        membranes = empty_steps(current[0], steps)
        grid = (triton.cdiv(n, BLOCK),)
        _lif_forward[grid](current, spikes, membranes, threshold.detach(), leak.detach(), n, current.stride(0), steps,
                           float(initial), BINARY=bool(binary), BLOCK=BLOCK)
        ctx.gamma, ctx.initial, ctx.binary = gamma, initial, binary
        ctx.save_for_backward(threshold, leak, membranes)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        threshold, leak, membranes = ctx.saved_tensors
        if grad_spikes.stride() != membranes.stride():  # walk both in the same memory order
            aligned = empty_steps(membranes[0], membranes.shape[0])
            aligned.copy_(grad_spikes)
            grad_spikes = aligned
        steps, n = membranes.shape[0], membranes[0].numel()
        grid = (triton.cdiv(n, BLOCK),)
        grad_current = empty_steps(membranes[0], steps)
        partial_threshold = torch.empty(grid[0], dtype=torch.float32, device=membranes.device)
        partial_leak = torch.empty_like(partial_threshold)
        _lif_backward[grid](grad_spikes, membranes, grad_current, partial_threshold, partial_leak, threshold.detach(),
                            leak.detach(), n, steps, float(ctx.gamma), float(ctx.initial), BINARY=bool(ctx.binary),
                            BLOCK=BLOCK)
        return (grad_current, partial_threshold.sum().to(threshold.dtype), partial_leak.sum().to(leak.dtype),
                None, None, None)
