"""The LIF neuron of DIET-SNN / TP (docs/method.md section 3), as one fused autograd function.

For a layer with threshold V and leak lambda, at t = 1..T:

    u(t)  = lambda * r(t-1) + I(t),        r(0) = f * V
    z(t)  = u(t) / V - 1
    s(t)  = V * H(z(t))  or  H(z(t))       (spike amplitude: the threshold, or 1)
    r(t)  = u(t) - V * H(z(t))             (soft reset; H carries no gradient here)

with the triangle surrogate dH/dz = gamma * max(0, 1 - |z|), gamma = 0.3.

``f`` is the initial membrane as a fraction of the threshold. DIET-SNN's and
TP's code start from r(0) = 0 (``f = 0``, the reference recipe); stp's recipe
uses ``f = 0.5``: a neuron then rounds instead of flooring its input, which
halves the expected quantisation error of a converted network (Bu et al.,
"Optimal ANN-SNN conversion", 2022); at T = 1 it fires when its input exceeds
V/2, not V. The value is recorded in every checkpoint.

Spike amplitude, recorded per checkpoint (``spike_amplitude``):

* ``binary`` (as in DIET-SNN's and TP's code; the default, chosen by measurement in
  docs/results.md): s(t) = H(z), and V acts only through the firing condition and
  the reset. The reference code feeds these spikes into the BN-folded ANN weights
  as they are; stp's recipe folds V into the weights that read the spikes at
  conversion (``--fold-thresholds``, spiking/convert.py), so that the SNN starts
  from the ANN's function.
* ``threshold`` (stp's default in earlier releases): s(t) = V * H(z). The forward pass equals
  binary spikes with V folded into the next layer's weights, but the backward
  does not: dL/dV gains sum(g * H) through the amplitude, and V and the next
  weights scale the same product.

Energy counts each spike as one event whatever its amplitude.

The whole recurrence runs inside one forward call (no state survives it) and
its backward is written out by hand: only the membranes u(t) are saved, one
tensor the size of the input current, and nothing is kept per time step by autograd.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from stpcli.defaults import DEFAULT_LIF_BACKEND, INITIAL_MEMBRANE, LIF_BACKENDS, SURROGATE_GAMMA
from stpcli.spiking.layout import accumulator, dot, empty_steps
from stpcli.spiking.settings import SpikingSettings

MIN_THRESHOLD = 1e-4


def surrogate(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """dH/dz = gamma * max(0, 1 - |z|), the triangle surrogate."""
    return _surrogate_(z.clone(), gamma)


def _surrogate_(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """The surrogate computed in place on ``z`` (the fused backward's temporary)."""
    return z.abs_().neg_().add_(1.0).clamp_(min=0.0).mul_(gamma)


class _LIFFunction(torch.autograd.Function):
    """Forward and backward over all T steps, written to touch each element as few times as eager
    PyTorch allows: outputs and input gradients are written in place into preallocated [T, ...]
    tensors, the scalar gradients are dot products, and only u(t) is saved."""

    @staticmethod
    def forward(ctx, current, threshold, leak, gamma, initial, binary):
        steps = current.shape[0]
        spikes = empty_steps(current[0], steps)
        zero = torch.zeros((), dtype=current.dtype, device=current.device)
        height = threshold.to(current.dtype)
        amplitude = torch.ones_like(height) if binary else height
        membranes = []
        residual = None
        for t in range(steps):
            if residual is not None:
                u = torch.addcmul(current[t], residual, leak.to(current.dtype))
            elif initial:
                u = current[t] + leak * (initial * threshold)
            else:
                u = current[t]
            fired = u > threshold  # H(u/V - 1) for V > 0
            torch.where(fired, amplitude, zero, out=spikes[t])
            membranes.append(u)
            if t + 1 < steps:
                residual = u - spikes[t] * height if binary else u - spikes[t]
        ctx.gamma, ctx.initial, ctx.binary = gamma, initial, binary
        ctx.save_for_backward(threshold, leak, *membranes)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        threshold, leak, *membranes = ctx.saved_tensors
        gamma = ctx.gamma
        steps = len(membranes)
        grad_current = empty_steps(membranes[0], steps)
        grad_threshold = torch.zeros((), dtype=accumulator(membranes[0].dtype), device=threshold.device)
        grad_leak = torch.zeros_like(grad_threshold)
        inverse = 1.0 / threshold
        grad_residual = None  # dL/dr(t), flowing back from u(t+1)
        for t in reversed(range(steps)):
            u = membranes[t]
            g = grad_spikes[t]
            fired = (u > threshold).to(u.dtype)
            slope = _surrogate_((u * inverse).sub_(1.0), gamma)  # on one temporary
            if ctx.binary:
                # s = H(z): ds/du = slope/V, ds/dV = -slope*u/V^2 ; r = u - V*H: dr/dV = -H
                direct = slope.mul_(g).mul_(inverse)  # dL/du through this step's spike
                grad_threshold -= dot(direct, u) * inverse
            else:
                # s = V*H(z): ds/du = slope, ds/dV = H - slope*u/V ; r = u - V*H: dr/dV = -H
                direct = slope.mul_(g)
                grad_threshold += dot(g, fired) - dot(direct, u) * inverse
            grad_u = grad_current[t]
            if grad_residual is None:
                grad_u.copy_(direct)
            else:
                torch.add(direct, grad_residual, out=grad_u)
                grad_threshold -= dot(grad_residual, fired)
            if t > 0:
                previous = membranes[t - 1]
                previous_residual = previous - threshold * (previous > threshold).to(u.dtype)
                grad_leak += dot(grad_u, previous_residual)
            elif ctx.initial:  # u(1) = I(1) + lambda * f * V
                total = grad_u.sum(dtype=grad_threshold.dtype)
                grad_leak += total * ctx.initial * threshold.to(total.dtype)
                grad_threshold += total * ctx.initial * leak.to(total.dtype)
            if t > 0:
                grad_residual = grad_u * leak
        return grad_current, grad_threshold.to(threshold.dtype), grad_leak.to(leak.dtype), None, None, None


_BACKEND = [DEFAULT_LIF_BACKEND]  # set once per process by ``use_lif_backend`` (engine.runtime.setup_runtime)


def use_lif_backend(name: str) -> None:
    """Run every LIF of this process with ``name`` (defaults.LIF_BACKENDS): ``torch``, the function above;
    ``inductor``, ``compiled_lif.CompiledLIF`` (the same results bit for bit, fused by torch.compile);
    ``triton``, the kernels of ``triton_lif.py`` (CUDA, or the CPU under ``TRITON_INTERPRET=1``; they
    pass the parity tests and become the CUDA default once a GPU run has measured them)."""
    if name not in LIF_BACKENDS:
        raise ValueError(f"unknown LIF backend {name!r}; choose one of {', '.join(LIF_BACKENDS)}")
    _BACKEND[0] = name


def lif_backend() -> str:
    return _BACKEND[0]


_TRACEABLE: list[bool] = []  # non-empty inside ``traceable()``


@contextlib.contextmanager
def traceable():
    """Neurons run as plain tensor operations, one step after another (forward only), so that a
    tracer (the ONNX exporter) records comparisons and membranes instead of an autograd function."""
    _TRACEABLE.append(True)
    try:
        yield
    finally:
        _TRACEABLE.pop()


def lif_plain(current: torch.Tensor, threshold: torch.Tensor, leak: torch.Tensor, initial: float,
              binary: bool) -> torch.Tensor:
    """The same spikes as the fused function (``u > V``, soft reset), written as the equations read."""
    spikes, residual = [], None
    for t in range(current.shape[0]):
        if residual is not None:
            u = current[t] + leak * residual
        elif initial:
            u = current[t] + leak * (initial * threshold)
        else:
            u = current[t]
        fired = (u > threshold).to(u.dtype)
        spikes.append(fired if binary else fired * threshold)
        residual = u - fired * threshold
    return torch.stack(spikes)


def _one_step(current: torch.Tensor, threshold: torch.Tensor, leak: torch.Tensor, initial: float,
              binary: bool) -> torch.Tensor:
    """Inference at T = 1: the same arithmetic as the first step of ``_LIFFunction`` (so the same
    spikes, bit for bit), done in place on the current (which nothing else reads) in two passes at
    most: the initial membrane added, then the comparison written as 0/1 over it. The current is
    the convolution's fresh output, or a view of it (direct encoding)."""
    u = current[0]
    if initial:
        u.add_(leak * (initial * threshold))
    spikes = u.gt_(threshold)  # H(u/V - 1) for V > 0, as 1.0 or 0.0
    if not binary:
        spikes.mul_(threshold.to(spikes.dtype))
    return spikes.unsqueeze(0)


def lif_multistep(current: torch.Tensor, threshold: torch.Tensor, leak: torch.Tensor,
                  gamma: float = SURROGATE_GAMMA, initial: float = INITIAL_MEMBRANE,
                  binary: bool = False) -> torch.Tensor:
    """Spikes [T, ...] for input currents [T, ...]: of amplitude ``threshold``, or 1 when ``binary``."""
    if _TRACEABLE:
        return lif_plain(current, threshold, leak, float(initial), bool(binary))
    if current.shape[0] == 1 and not (torch.is_grad_enabled() and any(
            t.requires_grad for t in (current, threshold, leak))):
        return _one_step(current, threshold, leak, float(initial), bool(binary))
    backend = lif_backend()
    if backend == "triton":
        from stpcli.spiking.triton_lif import TritonLIF, dense_steps

        if not dense_steps(current):  # the kernels walk dense steps: lay the current out so, never fall back
            current = current.contiguous()
        return TritonLIF.apply(current, threshold, leak, gamma, float(initial), bool(binary))
    if backend == "inductor":
        from stpcli.spiking.compiled_lif import CompiledLIF

        return CompiledLIF.apply(current, threshold, leak, gamma, float(initial), bool(binary))
    return _LIFFunction.apply(current, threshold, leak, gamma, float(initial), bool(binary))


class CurrentCaptured(Exception):
    """Raised by a neuron in capture mode to stop the forward pass (threshold balancing)."""


class LIF(nn.Module):
    """A layer of LIF neurons with one learnable threshold and leak (scalars)."""

    def __init__(self, threshold: float = 1.0, leak: float = 1.0, settings: SpikingSettings | None = None):
        super().__init__()
        settings = settings or SpikingSettings()  # the network's, whole: one home for every neuron setting
        self.initial_membrane = settings.initial_membrane  # fraction of the threshold
        self.binary = settings.binary
        self.gamma = settings.surrogate_gamma
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.leak = nn.Parameter(torch.tensor(float(leak)))
        self.capture: Callable[[torch.Tensor], None] | None = None  # receives the input current (balancing)
        self.counter: SpikeCounter | None = None

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if self.capture is not None:
            self.capture(current)
            raise CurrentCaptured
        spikes = lif_multistep(current, self.threshold, self.leak, self.gamma, self.initial_membrane, self.binary)
        if self.counter is not None:
            self.counter.add(spikes)
        return spikes

    def spike_amplitude(self) -> float:
        """What one spike of this layer carries to the layers that read it: 1 (binary spikes) or the threshold."""
        return 1.0 if self.binary else float(self.threshold)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.leak.clamp_(0.0, 1.0)
        self.threshold.clamp_(min=MIN_THRESHOLD)

    def extra_repr(self) -> str:
        return (f"threshold={float(self.threshold):.4g}, leak={float(self.leak):.4g}, gamma={self.gamma}, "
                f"initial_membrane={self.initial_membrane}, binary={self.binary}")


class SpikeCounter:
    """Spikes per neuron of one layer, summed over time steps, averaged over images."""

    def __init__(self):
        self.spikes = 0.0
        self.neuron_slots = 0  # neurons per image x images seen

    def add(self, spikes: torch.Tensor) -> None:
        self.spikes += float((spikes != 0).sum())
        self.neuron_slots += spikes[0].numel()

    @property
    def rate(self) -> float:
        return self.spikes / self.neuron_slots if self.neuron_slots else 0.0
