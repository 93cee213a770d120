"""The Triton LIF kernels against the PyTorch reference, on the CPU through Triton's interpreter:
spikes exactly, gradients to float tolerance, every layout the network uses."""

import importlib

import pytest
import torch

from stpcli.spiking import neuron


@pytest.fixture
def triton_lif():
    pytest.importorskip("triton")
    import os

    assert os.environ.get("TRITON_INTERPRET") == "1"  # set by conftest before triton is imported
    return importlib.import_module("stpcli.spiking.triton_lif")


def _both(kernels, current, threshold, leak, weights, **kwargs):
    """(reference, Triton) results: spikes and the gradients of current, threshold and leak."""
    results = []
    for function in ("torch", "triton"):
        c = current.detach().clone().requires_grad_()
        v = threshold.detach().clone().requires_grad_()
        lam = leak.detach().clone().requires_grad_()
        if function == "torch":
            spikes = neuron._LIFFunction.apply(c, v, lam, kwargs["gamma"], kwargs["initial"], kwargs["binary"])
        else:
            spikes = kernels.TritonLIF.apply(c, v, lam, kwargs["gamma"], kwargs["initial"], kwargs["binary"])
        (spikes * weights).sum().backward()
        results.append((spikes.detach(), c.grad, v.grad, lam.grad))
    return results



@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("initial", [0.0, 0.5])
def test_triton_kernels_match_the_reference(triton_lif, binary, initial):
    torch.manual_seed(0)
    for shape in ((4, 3, 1000), (3, 2, 4, 5, 6)):
        current = torch.randn(*shape) * 1.2 + 0.5
        weights = torch.randn(*shape)
        (ref, ours) = _both(triton_lif, current, torch.tensor(0.8), torch.tensor(0.9), weights, gamma=0.3, initial=initial,
                            binary=binary)
        assert torch.equal(ref[0], ours[0])
        for a, b in zip(ref[1:], ours[1:]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_triton_kernels_take_channels_last_and_broadcast_steps(triton_lif):
    torch.manual_seed(1)
    steps, batch = 3, 2
    folded = (torch.randn(steps * batch, 4, 5, 6) + 0.6).contiguous(memory_format=torch.channels_last)
    current = folded.view(steps, batch, 4, 5, 6)
    assert triton_lif.dense_steps(current)
    weights = torch.randn(steps, batch, 4, 5, 6)
    ref, ours = _both(triton_lif, current, torch.tensor(0.7), torch.tensor(1.0), weights, gamma=0.3, initial=0.5, binary=False)
    assert torch.equal(ref[0], ours[0]) and ours[0].flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ref[1:], ours[1:]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    static = torch.randn(batch, 4, 5, 6).unsqueeze(0).expand(steps, batch, 4, 5, 6)  # the first layer's current
    assert triton_lif.dense_steps(static) and static.stride(0) == 0
    ref, ours = _both(triton_lif, static, torch.tensor(0.5), torch.tensor(0.95), weights, gamma=0.3, initial=0.5, binary=True)
    assert torch.equal(ref[0], ours[0])
    for a, b in zip(ref[1:], ours[1:]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_the_backend_switch_routes_the_network_through_the_kernels(triton_lif, monkeypatch):
    from stpcli.models.registry import make_spec
    from stpcli.spiking.network import SNN

    torch.manual_seed(2)
    snn = SNN(make_spec("vgg11", 4, 32, width=0.125, dropout=0.0), 2).eval()
    for _, lif in snn.neurons():
        lif.threshold.data.fill_(0.3)
    x = torch.randn(2, 3, 32, 32)
    reference = snn(x)
    monkeypatch.setattr(neuron, "_BACKEND", ["triton"])
    calls = []
    original = triton_lif.TritonLIF.apply
    monkeypatch.setattr(triton_lif.TritonLIF, "apply", lambda *a: calls.append(1) or original(*a))
    torch.testing.assert_close(snn(x), reference, rtol=1e-5, atol=1e-5)
    assert len(calls) == len(snn.neurons())
