"""LIF dynamics and the surrogate gradient against independent computations."""

import torch

from stpcli.spiking.neuron import LIF, lif_multistep, surrogate


class Heaviside(torch.autograd.Function):
    """s = H(z) with the triangle surrogate dH/dz = gamma * max(0, 1 - |z|), gamma = 0.3."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * 0.3 * torch.clamp(1 - z.abs(), min=0)


def reference_lif(current, threshold, leak, initial=0.5, binary=False):
    """Hand-rolled loop with autograd, straight from docs/method.md section 3: spikes of amplitude V,
    or binary spikes H(u/V - 1) (DIET-SNN/TP); reset by V, no gradient through H there."""
    residual = initial * threshold * torch.ones_like(current[0])
    outputs = []
    for t in range(current.shape[0]):
        u = leak * residual + current[t]
        fired = Heaviside.apply(u / threshold - 1)
        outputs.append(fired if binary else threshold * fired)
        residual = u - threshold * fired.detach()
    return torch.stack(outputs)


def lif_inputs(seed, shape, threshold, leak):
    """A current around the threshold, a learnable threshold and leak, and the weights of the loss."""
    torch.manual_seed(seed)
    current = (torch.randn(*shape) + 0.6).requires_grad_()
    return current, torch.tensor(threshold, requires_grad=True), torch.tensor(leak, requires_grad=True), \
        torch.randn(*shape)


def spikes_and_gradients(lif, current, threshold, leak, weights, **options):
    """``lif(current, threshold, leak, **options)``, and the gradients of sum(spikes * weights) with
    respect to the current, threshold and leak (cleared again, so calls compare side by side)."""
    spikes = lif(current, threshold, leak, **options)
    (spikes * weights).sum().backward()
    gradients = tuple(tensor.grad.clone() for tensor in (current, threshold, leak))
    for tensor in (current, threshold, leak):
        tensor.grad = None
    return spikes, gradients


def test_lif_forward_matches_hand_loop_over_several_steps():
    torch.manual_seed(0)
    current = torch.randn(6, 4, 50) * 1.5 + 0.5
    threshold, leak = torch.tensor(0.8), torch.tensor(0.9)
    for initial in (0.0, 0.5):
        ours = lif_multistep(current, threshold, leak, initial=initial)
        torch.testing.assert_close(ours, reference_lif(current, threshold, leak, initial=initial), rtol=0, atol=1e-6)
    assert set(torch.unique(ours / threshold).tolist()) <= {0.0, 1.0}


def test_lif_integrates_and_soft_resets_by_hand():
    # constant input 0.4, threshold 1, leak 1: u = .4, .8, 1.2 -> spike, residual .2, then .6, 1.0 (no spike), 1.4
    current = torch.full((6, 1), 0.4)
    spikes = lif_multistep(current, torch.tensor(1.0), torch.tensor(1.0), initial=0.0)
    assert spikes.flatten().tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    # leak 0.5 on the same input never reaches the threshold: u -> 0.8 at most
    leaky = lif_multistep(current, torch.tensor(1.0), torch.tensor(0.5), initial=0.0)
    assert leaky.sum() == 0
    # starting at half the threshold: u = .9 (no), 1.3 -> spike, residual .3, .7, 1.1 -> spike, .5
    half = lif_multistep(current, torch.tensor(1.0), torch.tensor(1.0), initial=0.5)
    assert half.flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_lif_gradients_match_autograd_reference():
    current, threshold, leak, weights = lif_inputs(1, (5, 3, 20), 0.7, 0.85)
    for initial in (0.0, 0.5):
        _, ours = spikes_and_gradients(lif_multistep, current, threshold, leak, weights, initial=initial)
        _, expected = spikes_and_gradients(reference_lif, current, threshold, leak, weights, initial=initial)
        for got, want in zip(ours, expected):
            torch.testing.assert_close(got, want)


def test_channels_last_currents_give_channels_last_spikes_and_the_same_gradients():
    """The CUDA path runs channels-last: same numbers as the reference, and no layout change."""
    torch.manual_seed(2)
    steps, batch = 3, 2
    folded = (torch.randn(steps * batch, 4, 5, 6) + 0.6).contiguous(memory_format=torch.channels_last)
    folded.requires_grad_()
    threshold = torch.tensor(0.7, requires_grad=True)
    leak = torch.tensor(0.9, requires_grad=True)
    weights = torch.randn(steps, batch, 4, 5, 6)
    spikes = lif_multistep(folded.view(steps, batch, 4, 5, 6), threshold, leak)
    assert spikes.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    (spikes * weights).sum().backward()
    ours = (folded.grad.clone(), threshold.grad.clone(), leak.grad.clone())
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    plain = folded.detach().contiguous().requires_grad_()
    threshold.grad = leak.grad = None
    expected = reference_lif(plain.view(steps, batch, 4, 5, 6), threshold, leak)
    torch.testing.assert_close(spikes, expected)
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours[0], plain.grad)
    torch.testing.assert_close(ours[1], threshold.grad)
    torch.testing.assert_close(ours[2], leak.grad)


def test_surrogate_gradient_is_the_triangle_formula():
    z = torch.linspace(-2, 2, 41)
    expected = torch.tensor([0.3 * max(0.0, 1 - abs(v)) for v in z.tolist()])
    torch.testing.assert_close(surrogate(z, 0.3), expected)
    torch.testing.assert_close(z, torch.linspace(-2, 2, 41))  # the input is left alone
    # one step, threshold 1: d spike / d current = gamma * max(0, 1 - |I - 1|)
    current = torch.linspace(-0.5, 2.5, 31).reshape(1, -1).requires_grad_()
    lif_multistep(current, torch.tensor(1.0), torch.tensor(1.0), initial=0.0).sum().backward()
    torch.testing.assert_close(current.grad[0], surrogate(current.detach()[0] - 1, 0.3))


def test_leak_is_clamped_to_at_most_one_and_threshold_kept_positive():
    neuron = LIF(threshold=0.5, leak=1.0)
    with torch.no_grad():
        neuron.leak.fill_(1.7)
        neuron.threshold.fill_(-2.0)
    neuron.clamp_()
    assert neuron.leak.item() == 1.0
    assert neuron.threshold.item() > 0


def test_no_state_survives_between_calls():
    neuron = LIF(threshold=1.0)
    current = torch.full((2, 1), 0.6)
    first = neuron(current)
    second = neuron(current)
    assert torch.equal(first, second)


def test_the_inductor_backend_gives_the_eager_results_bit_for_bit():
    """The fused kernels evaluate the same expressions in the same order, so spikes and every
    gradient are identical to the eager function's (T = 1, 2, 3; both amplitudes; both initial membranes)."""
    from stpcli.spiking.compiled_lif import CompiledLIF
    from stpcli.spiking.neuron import _LIFFunction

    for steps in (1, 2, 3):
        for binary in (True, False):
            for initial in (0.0, 0.5):
                current, threshold, leak, weights = lif_inputs(steps, (steps, 3, 8, 8), 0.7, 0.9)
                eager, fused = (spikes_and_gradients(lambda *a, f=function, i=initial, b=binary: f.apply(*a, 0.3, i, b),
                                                     current, threshold, leak, weights)
                                for function in (_LIFFunction, CompiledLIF))
                assert torch.equal(eager[0], fused[0])
                for a, b in zip(eager[1], fused[1], strict=True):
                    assert torch.equal(a, b), (steps, binary, initial)
