"""Threshold balancing (sampling, O(L) walk), binary spikes and convolutional dropout, against
independent computations."""

import pytest
import torch
from test_models import randomise_bn
from test_neuron import lif_inputs, reference_lif, spikes_and_gradients
from torch import nn

from stpcli.models.ann import ANN
from stpcli.models.registry import make_spec
from stpcli.spiking.convert import balance_thresholds, snn_from_ann
from stpcli.spiking.network import SNN, drop_per_image
from stpcli.spiking.neuron import LIF, lif_multistep
from stpcli.spiking.settings import SpikingSettings


def probe_spec(size=128, channels=16):
    return {"family": "vgg", "arch": "probe", "depths": [1], "channels": [channels], "hidden": [],
            "num_classes": 8, "image_size": size, "in_channels": 3, "dropout": 0.5, "units": None}


def test_first_threshold_is_the_percentile_over_every_pixel_at_128px():
    """The estimate samples all pixel positions alike (a strided sample hit column 0 only)."""
    torch.manual_seed(0)
    snn = SNN(probe_spec(), 1)
    x = torch.randn(128, 3, 128, 128)
    estimate = balance_thresholds(snn, x, 99.7, 1.0)[0]
    with torch.no_grad():
        current = snn.layers[0].conv(x).reshape(-1)
    k = round(0.997 * current.numel())
    exact = float(current.kthvalue(k).values)
    assert abs(estimate - exact) / exact < 0.01, (estimate, exact)
    with torch.no_grad():
        column0 = float(snn.layers[0].conv(x)[..., 0].reshape(-1).kthvalue(round(0.997 * 128 * 16 * 128)).values)
    assert abs(column0 - exact) / exact > 0.05  # the border column really is different


def naive_balance(snn: SNN, x: torch.Tensor, percentile: float, scale: float) -> list[float]:
    """Rerun the whole network from the input for every neuron layer (O(L^2)), all values, no sampling."""
    thresholds = []
    for _, neuron in snn.neurons():
        captured: list[torch.Tensor] = []

        def hook(module, args, captured=captured):
            captured.append(args[0].detach().clone())

        handle = neuron.register_forward_pre_hook(hook)
        with torch.no_grad():
            snn.eval()(x)
        handle.remove()
        current = captured[0]
        value = max(float(c.reshape(-1).kthvalue(max(1, round(percentile / 100 * c.numel()))).values)
                    for c in current)
        threshold = max(scale * value, 1e-3)
        with torch.no_grad():
            neuron.threshold.fill_(threshold)
        thresholds.append(threshold)
    return thresholds


def ann_and_images(arch: str, seed: int, images: int):
    """A small ANN with non-trivial BatchNorm statistics and a batch of random images."""
    torch.manual_seed(seed)
    ann = ANN(make_spec(arch, num_classes=4, image_size=32, width=0.125, dropout=0.0)).eval()
    randomise_bn(ann)
    return ann, torch.randn(images, 3, 32, 32)


@pytest.mark.parametrize("arch", ["vgg11", "resnet18"])
def test_layer_by_layer_balancing_equals_rerunning_the_network_per_neuron(arch):
    ann, x = ann_and_images(arch, seed=0, images=10)
    # spikes of amplitude V: the rerun has no folding step (binary spikes: the test after the next)
    ours, reference = (snn_from_ann(ann, 3, SpikingSettings(dropout=0.0, spike_amplitude="threshold")) for _ in range(2))
    calls = {"n": 0}

    def count(module, args):
        calls["n"] += 1

    handles = [m.register_forward_pre_hook(count) for m in ours.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    fast = balance_thresholds(ours, x, 99.0, 0.8, chunk=4)
    for handle in handles:
        handle.remove()
    slow = naive_balance(reference, x, 99.0, 0.8)
    assert fast == pytest.approx(slow, rel=1e-5)
    weights = sum(1 for m in ours.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    neurons = len(ours.neurons())
    chunks = 3  # 10 images in chunks of 4
    # each weight layer runs once per pass over its own module: (neurons in the module + 1) passes
    assert calls["n"] <= chunks * (weights + 2 * neurons + weights), calls["n"]
    assert calls["n"] < chunks * weights * neurons / 2  # far from re-running the network per neuron


def test_binary_spikes_match_the_diet_snn_formulation_forward_and_backward():
    current, threshold, leak, weights = lif_inputs(4, (4, 3, 30), 0.8, 0.9)
    for initial in (0.0, 0.5):
        ours, got = spikes_and_gradients(lif_multistep, current, threshold, leak, weights, initial=initial, binary=True)
        assert set(torch.unique(ours).tolist()) <= {0.0, 1.0}
        expected, want = spikes_and_gradients(reference_lif, current, threshold, leak, weights, initial=initial,
                                              binary=True)
        torch.testing.assert_close(ours, expected)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        # the amplitude formulation's threshold gradient has the extra sum(g * H) term
        _, amplitude = spikes_and_gradients(reference_lif, current, threshold, leak, weights, initial=initial)
        assert not torch.allclose(amplitude[1], got[1])


@pytest.mark.parametrize("arch", ["vgg11", "resnet18"])
def test_binary_conversion_folds_thresholds_into_the_readers_and_keeps_the_function(arch):
    """Same ANN, same calibration: binary spikes with V folded downstream give the amplitude network's logits."""
    ann, x = ann_and_images(arch, seed=1, images=8)
    amplitude = snn_from_ann(ann, 3, SpikingSettings(dropout=0.0, spike_amplitude="threshold")).eval()
    binary = snn_from_ann(ann, 3, SpikingSettings(dropout=0.0, spike_amplitude="binary")).eval()
    a = balance_thresholds(amplitude, x, 99.0, 0.7)
    b = balance_thresholds(binary, x, 99.0, 0.7)
    assert a == pytest.approx(b, rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(binary(x), amplitude(x), rtol=1e-4, atol=1e-4)
    if arch == "resnet18":  # identity shortcuts carry the feeding layer's threshold
        scales = [float(m.shortcut_scale) for m in binary.layers if getattr(m, "shortcut_scale", None) is not None]
        assert scales and all(s > 1e-3 and s != 1.0 for s in scales)


def test_dropout_draws_one_mask_per_image_shared_by_all_steps():
    torch.manual_seed(0)
    spikes = torch.ones(4, 3, 5, 6, 6)
    dropped = drop_per_image(spikes, 0.5, training=True)
    assert all(torch.equal(dropped[0], dropped[t]) for t in range(4))
    assert 0 < float((dropped[0] == 0).float().mean()) < 1
    assert set(torch.unique(dropped).tolist()) == {0.0, 2.0}
    assert torch.equal(drop_per_image(spikes, 0.5, training=False), spikes)


def test_conv_dropout_acts_in_networks_without_hidden_fc_layers():
    """VGG14 has no hidden FC layer: --dropout alone leaves it deterministic, --conv-dropout does not."""
    spec = make_spec("vgg14", num_classes=4, image_size=32, width=0.125)
    x = torch.randn(3, 3, 32, 32)
    for conv_dropout, changes in ((0.0, False), (0.3, True)):
        torch.manual_seed(0)
        snn = SNN(spec, 2, SpikingSettings(dropout=0.5, conv_dropout=conv_dropout, initial_membrane=0.5))
        for neuron in (m for m in snn.modules() if isinstance(m, LIF)):
            neuron.threshold.data.fill_(0.05)
        snn.train()
        with torch.no_grad():
            first, second = snn(x), snn(x)
        assert (not torch.equal(first, second)) == changes
        snn.eval()
        with torch.no_grad():
            assert torch.equal(snn(x), snn(x))
