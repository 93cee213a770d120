"""The reference recipe against an independent implementation of what TP's and DIET-SNN's code
computes, written here from the equations (the shared docs/method.md sections 3, 4 and 9) and not
from stp's modules: a VGG simulated one time step at a time with explicit membranes, BN folded
by its formula, binary spikes into the folded (not threshold-scaled) weights, membranes from 0,
threshold balancing with the earlier layers at unscaled thresholds and the exact percentile
k = 1 + round(p/100 (n - 1)), and AMSGrad from its update rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_models import randomise_bn
from test_neuron import Heaviside

from stpcli.engine.recipe import TrainConfig, make_optimizer
from stpcli.models.ann import ANN
from stpcli.models.registry import make_spec
from stpcli.spiking import convert as conversion_module
from stpcli.spiking.convert import balance_thresholds, exact_step_percentiles, snn_from_ann
from stpcli.spiking.network import SNN
from stpcli.spiking.neuron import LIF
from stpcli.spiking.settings import Conversion, SpikingSettings


def folded(conv_weight, bn):
    """W' = W g / sqrt(var + eps), b' = beta - mean g / sqrt(var + eps) (the conv has no bias)."""
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv_weight * factor[:, None, None, None], bn.bias - bn.running_mean * factor


class ReferenceVGG:
    """The reference network's layers as (kind, parameters) from an stp VGG ANN: folded convs,
    average pooling, flatten, hidden linear layers, the output layer."""

    def __init__(self, ann: ANN, dtype=torch.float64):
        self.layers = []
        for entry, module in zip(ann.plan, ann.layers):
            kind = entry["type"]
            if kind == "conv":
                weight, bias = folded(module.conv.weight.detach(), module.bn)
                self.layers.append(("conv", weight.detach().to(dtype).clone().requires_grad_(),
                                    bias.detach().to(dtype).clone().requires_grad_()))
            elif kind in ("fc", "output"):
                self.layers.append((kind, module.fc.weight.detach().to(dtype).clone().requires_grad_(),
                                    module.fc.bias.detach().to(dtype).clone().requires_grad_()))
            else:
                self.layers.append((kind, None, None))
        neurons = sum(1 for kind, _, _ in self.layers if kind in ("conv", "fc"))
        self.thresholds = [torch.tensor(1.0, dtype=dtype, requires_grad=True) for _ in range(neurons)]
        self.leaks = [torch.tensor(1.0, dtype=dtype, requires_grad=True) for _ in range(neurons)]

    def run(self, x, steps: int, stop_at: int | None = None):
        """Logits summed over the steps; with ``stop_at`` = n, the input current of neuron layer n at
        every step instead (balancing)."""
        membranes: dict[int, torch.Tensor] = {}
        logits, currents = 0.0, []
        for _ in range(steps):
            out, neuron = x, 0
            for kind, weight, bias in self.layers:
                if kind == "conv":
                    current = F.conv2d(out, weight, bias, padding=1)
                elif kind in ("fc", "output"):
                    current = F.linear(out, weight, bias)
                elif kind == "pool":
                    out = F.avg_pool2d(out, 2)
                    continue
                else:
                    out = out.flatten(1)
                    continue
                if kind == "output":
                    logits = logits + current
                    break
                if neuron == stop_at:
                    currents.append(current)
                    break
                V, leak = self.thresholds[neuron], self.leaks[neuron]
                u = leak * membranes.get(neuron, torch.zeros_like(current)) + current
                spikes = Heaviside.apply(u / V - 1)
                membranes[neuron] = u - V * (u / V - 1 > 0).to(u.dtype)
                out, neuron = spikes, neuron + 1
        return currents if stop_at is not None else logits

    def balance(self, x, steps: int, percentile: float, scale: float) -> list[float]:
        """TP's balancing: layer by layer at unscaled thresholds, max over steps of the exact
        percentile (0 if none is positive, then 0.1), every threshold scaled at the end."""
        found = []
        with torch.no_grad():
            for layer in range(len(self.thresholds)):
                best = 0.0
                for current in self.run(x, steps, stop_at=layer):
                    values = current.reshape(-1)
                    k = 1 + round(percentile / 100 * (values.numel() - 1))
                    best = max(best, float(values.kthvalue(k).values))
                found.append(best or 0.1)
                self.thresholds[layer].fill_(found[-1])
            for threshold in self.thresholds:
                threshold.mul_(scale)
        return [scale * value for value in found]


def small_vgg(seed: int = 0) -> ANN:
    torch.manual_seed(seed)
    ann = ANN(make_spec("vgg11", num_classes=5, image_size=32, width=0.125, dropout=0.0)).eval()
    randomise_bn(ann)
    return ann


def reference_settings(**changes) -> SpikingSettings:
    return SpikingSettings.for_recipe("reference", dropout=0.0, conv_dropout=0.0, **changes)


def test_the_reference_recipe_is_what_tp_computes():
    """Each piece's default under --recipe reference (docs/method.md section 9)."""
    settings, conversion = SpikingSettings.for_recipe("reference"), Conversion.for_recipe("reference")
    assert (settings.initial_membrane, settings.conv_dropout, settings.conv_dropout_placement) == (0.0, 0.2, "unpooled")
    assert (conversion.balancing, conversion.percentile, conversion.scale, conversion.balance_steps,
            conversion.fold_thresholds) == ("reference", 90.0, 1.0, 500, False)
    assert TrainConfig(optimizer="adam").for_recipe("reference").amsgrad is True
    assert TrainConfig(optimizer="adam").for_recipe("stp").amsgrad is False
    assert TrainConfig(amsgrad=False).for_recipe("reference").amsgrad is False  # an explicit option wins


@pytest.mark.parametrize("timesteps", [5, 2, 1])
def test_reference_recipe_logits_and_gradients_equal_the_reference_equations(timesteps):
    ann = small_vgg()
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    labels = torch.randint(0, 5, (6,))
    snn = snn_from_ann(ann, timesteps, reference_settings()).double()
    balance_thresholds(snn, x[:4], 90.0, 1.0, method="reference", steps=3, fold=False)
    reference = ReferenceVGG(ann)
    torch.manual_seed(2)
    with torch.no_grad():  # leaks below 1, as training leaves them
        for (_, neuron), threshold, leak in zip(snn.neurons(), reference.thresholds, reference.leaks):
            neuron.leak.uniform_(0.8, 1.0)
            threshold.copy_(neuron.threshold)
            leak.copy_(neuron.leak)
    snn.train()
    ours = snn(x)
    theirs = reference.run(x, timesteps)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-9)
    F.cross_entropy(ours, labels).backward()
    F.cross_entropy(theirs, labels).backward()
    weights = [m for m in snn.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    ref_weights = [(w, b) for kind, w, b in reference.layers if w is not None]
    for module, (weight, bias) in zip(weights, ref_weights, strict=True):
        for got, want in ((module.weight.grad, weight.grad), (module.bias.grad, bias.grad)):
            assert float((got - want).norm() / want.norm().clamp(min=1e-30)) < 1e-5
    for (_, neuron), threshold, leak in zip(snn.neurons(), reference.thresholds, reference.leaks, strict=True):
        torch.testing.assert_close(neuron.threshold.grad, threshold.grad, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(neuron.leak.grad, leak.grad, rtol=1e-5, atol=1e-12)


def test_stp_recipe_departs_from_the_reference_computation():
    """stp's defaults (membranes from V/2, thresholds folded into the next weights) do not compute
    what the reference computes from the same ANN and thresholds: the departure is real."""
    ann = small_vgg()
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    reference = ReferenceVGG(ann)
    thresholds = reference.balance(x, 2, 90.0, 1.0)
    for settings in (SpikingSettings(dropout=0.0), reference_settings(initial_membrane=0.5)):
        snn = snn_from_ann(ann, 2, settings).double().eval()
        with torch.no_grad():
            for (_, neuron), threshold in zip(snn.neurons(), thresholds):
                neuron.threshold.fill_(threshold)
            if settings.binary and settings.recipe == "stp":  # stp folds V into the next weights
                balance_thresholds(snn, x, 90.0, 1.0, method="reference", steps=2)
            assert not torch.allclose(snn(x), reference.run(x, 2), rtol=1e-3)


def test_reference_recipe_feeds_binary_spikes_into_the_unfolded_weights():
    ann = small_vgg()
    x = torch.randn(8, 3, 32, 32)
    unfolded = snn_from_ann(ann, 2, reference_settings())
    folding = snn_from_ann(ann, 2, reference_settings())
    balance_thresholds(unfolded, x, 90.0, 1.0, method="reference", steps=2, fold=False)
    thresholds = balance_thresholds(folding, x, 90.0, 1.0, method="reference", steps=2, fold=True)
    expected = [w for kind, w, _ in ReferenceVGG(ann, torch.float32).layers if kind == "conv"]
    convs = [m.conv.weight for m in unfolded.layers if hasattr(m, "conv")]
    for got, want in zip(convs, expected, strict=True):
        torch.testing.assert_close(got, want.detach())
    # folding multiplies the second conv's weights by the first layer's threshold
    second = [m.conv.weight for m in folding.layers if hasattr(m, "conv")][1]
    torch.testing.assert_close(second, expected[1].detach() * thresholds[0])


@pytest.mark.parametrize(("percentile", "scale", "steps"), [(90.0, 1.0, 6), (99.7, 0.3, 4)])
def test_reference_balancing_equals_the_reference_procedure(percentile, scale, steps):
    """IIR-SNN's defaults (p90, x1.0) and DIET-SNN's (p99.7, x0.3), fewer steps to stay fast."""
    ann = small_vgg(seed=3)
    torch.manual_seed(4)
    x = torch.randn(12, 3, 32, 32, dtype=torch.float64)
    snn = snn_from_ann(ann, 5, reference_settings()).double()
    ours = balance_thresholds(snn, x, percentile, scale, chunk=5, method="reference", steps=steps, fold=False)
    theirs = ReferenceVGG(ann).balance(x, steps, percentile, scale)
    assert ours == pytest.approx(theirs, rel=1e-6)  # the issue asks 1 %; the percentile is exact
    assert [float(n.threshold.detach()) for _, n in snn.neurons()] == pytest.approx(theirs, rel=1e-6)
    if scale != 1.0:  # stp's balancing scales as it goes, so later layers differ
        stp_way = balance_thresholds(snn_from_ann(ann, 5, reference_settings()).double(), x, percentile, scale,
                                     method="stp", steps=steps, fold=False)
        assert max(abs(a - b) / b for a, b in zip(stp_way[1:], theirs[1:])) > 0.01


@pytest.mark.parametrize("bracket", [conversion_module.BRACKET_SAMPLES, 3])
def test_exact_step_percentiles_are_exact_even_when_the_sample_misses(monkeypatch, bracket):
    """A 3-value sample brackets nothing: the widening passes must still find the exact k-th value."""
    monkeypatch.setattr(conversion_module, "BRACKET_SAMPLES", bracket)
    torch.manual_seed(5)
    values = torch.cat([torch.randn(3, 7, 50), torch.zeros(3, 5, 50), torch.full((3, 2, 50), 2.5)], dim=1)
    chunks = [values[:, i:i + 4] for i in range(0, values.shape[1], 4)]
    for percentile in (0.0, 37.3, 90.0, 99.7, 100.0):
        got = exact_step_percentiles(lambda: iter(chunks), 3, percentile, len(chunks),
                                     torch.Generator().manual_seed(0))
        for t in range(3):
            flat = values[t].reshape(-1)
            want = float(flat.kthvalue(1 + round(percentile / 100 * (flat.numel() - 1))).values)
            assert got[t] == want


def unpooled_convolutions(plan) -> list[int]:
    """Where the reference code puts convolutional dropout: after every conv whose next layer is
    not a pooling ('A' in its configuration lists)."""
    return [i for i, e in enumerate(plan) if e["type"] == "conv" and plan[i + 1]["type"] != "pool"]


def test_reference_dropout_follows_every_unpooled_convolution():
    spec = make_spec("vgg11", num_classes=4, image_size=32, width=0.125)
    snn = SNN(spec, 2, SpikingSettings.for_recipe("reference"))
    with_dropout = [i for i, layer in enumerate(snn.layers) if getattr(layer, "dropout", 0) and hasattr(layer, "conv")]
    assert with_dropout == unpooled_convolutions(snn.plan) and len(with_dropout) == 3  # groups 3, 4, 5 of VGG11
    assert all(snn.layers[i].dropout == 0.2 for i in with_dropout)
    everywhere = SNN(spec, 2, SpikingSettings(conv_dropout=0.2))
    assert all(layer.dropout == 0.2 for layer in everywhere.layers if hasattr(layer, "conv"))
    # in a ResNet, inside each block after its first convolution, not on the block's output
    blocks = [m for m in SNN(make_spec("resnet18", 4, 32, width=0.125), 2, SpikingSettings.for_recipe("reference")).layers
              if hasattr(m, "conv1")]
    assert blocks and all((b.dropout, b.output_dropout) == (0.2, 0.0) for b in blocks)
    # and it acts: in training, the spikes after an unpooled convolution lose about a fifth
    torch.manual_seed(0)
    snn.train()
    layer = snn.layers[with_dropout[0]]
    for neuron in (m for m in snn.modules() if isinstance(m, LIF)):
        neuron.threshold.data.fill_(-1e6)  # every neuron fires: the dropped ones are the zeros
    out = layer(torch.randn(2 * 3, layer.conv.in_channels, 8, 8), 2)
    assert 0.1 < float((out == 0).float().mean()) < 0.3


def amsgrad_by_hand(gradients, lr, betas=(0.9, 0.999), eps=1e-8):
    """Reddi et al. (2018), with Adam's bias corrections as PyTorch applies them: the step uses the
    running maximum of the second-moment estimate."""
    theta, m, v, v_max = 1.0, 0.0, 0.0, 0.0
    for t, g in enumerate(gradients, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        v_max = max(v_max, v)
        theta -= lr * (m / (1 - betas[0] ** t)) / (math.sqrt(v_max / (1 - betas[1] ** t)) + eps)
    return theta


def test_reference_recipe_trains_with_amsgrad():
    gradients = [1.0, 0.01, 0.01, 0.5]  # a large first gradient: AMSGrad keeps its second moment
    for recipe, expect_amsgrad in (("reference", True), ("stp", False)):
        parameter = torch.nn.Parameter(torch.tensor(1.0))
        model = torch.nn.Module()
        model.weight = parameter
        config = TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.0).for_recipe(recipe)
        optimizer = make_optimizer(model, config)
        for g in gradients:
            parameter.grad = torch.tensor(g)
            optimizer.step()
        matches = abs(float(parameter.detach()) - amsgrad_by_hand(gradients, 0.1)) < 1e-6
        assert matches == expect_amsgrad


def test_the_recipe_is_one_setting_recorded_and_inherited_as_a_user_runs_it(pipeline, tmp_path):
    """convert --recipe reference sets every piece, records it (info, lineage, info --config), and the
    next stage trains with its AMSGrad; an option given explicitly wins over the recipe."""
    import yaml
    from conftest import run_cli

    from stpcli.checkpoint import load_checkpoint

    common = ["--batch-size", "16", "--device", "cpu", "--lr", "1e-3"]
    sb = tmp_path / "r_t2.safetensors"
    run_cli(["convert", pipeline["nb"], "--recipe", "reference", "--timesteps", "2", "--epochs", "1",
             "--balance-steps", "4", "--calibration-images", "16", "--threshold-scale", "0.9", *common, "--out", sb])
    record = load_checkpoint(sb).record
    assert {k: record["snn"][k] for k in ("recipe", "initial_membrane", "conv_dropout", "conv_dropout_placement")} == {
        "recipe": "reference", "initial_membrane": 0.0, "conv_dropout": 0.2, "conv_dropout_placement": "unpooled"}
    conversion = record["snn"]["conversion"]
    assert (conversion["balancing"], conversion["percentile"], conversion["scale"], conversion["balance_steps"],
            conversion["fold_thresholds"]) == ("reference", 90.0, 0.9, 4, False)
    options = record["history"][-1]["options"]
    assert (options["recipe"], options["amsgrad"], options["threshold-scale"]) == ("reference", True, 0.9)
    info = run_cli(["info", sb]).stdout
    assert "SNN: reference recipe; binary spikes into the unfolded weights; initial membrane 0 V" in info
    assert "reference balancing p90 x0.9 over 4 steps" in info
    preset = yaml.safe_load(run_cli(["info", sb, "--config"]).stdout)["convert"]
    assert (preset["recipe"], preset["fold-thresholds"], preset["amsgrad"], preset["balance-steps"]) == (
        "reference", False, True, 4)
    # the preset reruns the stage to the same record
    again = tmp_path / "again.safetensors"
    (tmp_path / "preset.yaml").write_text(run_cli(["info", sb, "--config"]).stdout)
    run_cli(["convert", pipeline["nb"], "--config", tmp_path / "preset.yaml", "--out", again])
    assert load_checkpoint(again).record["snn"] == record["snn"]
    # temporal pruning inherits AMSGrad from the recorded recipe, unless told otherwise
    t1 = tmp_path / "r_t1.safetensors"
    run_cli(["temporal-prune", sb, "--schedule", "1", "--epochs-per-stage", "1", *common, "--out", t1])
    assert load_checkpoint(t1).history[-1]["options"]["amsgrad"] is True
    run_cli(["temporal-prune", sb, "--schedule", "1", "--epochs-per-stage", "1", "--no-amsgrad", *common,
             "--out", t1, "--force"])
    assert load_checkpoint(t1).history[-1]["options"]["amsgrad"] is False
    lineage = run_cli(["info", t1]).stdout
    assert lineage.count("reference") >= 2  # the convert and temporal-prune rows of the lineage
    # and the stp recipe is the default, as before
    assert load_checkpoint(pipeline["sb_t3"]).record["snn"]["recipe"] == "stp"
    refused = run_cli(["convert", pipeline["nb"], "--spike-amplitude", "threshold", "--no-fold-thresholds",
                       *common, "--out", tmp_path / "x.safetensors"], expect=2)
    assert "--no-fold-thresholds needs --spike-amplitude binary" in refused.output
