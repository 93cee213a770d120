"""Registry, Units, Algorithm 2's mapping, BN folding and conversion, against independent computations."""

import pytest
import torch
from torch import nn

from stpcli.errors import StpError
from stpcli.models.ann import ANN, fold_batchnorm
from stpcli.models.plan import build_plan, tensor_shapes
from stpcli.models.registry import ARCHITECTURES, make_spec
from stpcli.models.surgery import first_layer_index, index_mapping, insert_units, remove_units, with_units, without_layers
from stpcli.spiking.convert import balance_thresholds, snn_from_ann
from stpcli.spiking.network import SNN
from stpcli.spiking.settings import SpikingSettings

ARCHS = sorted(ARCHITECTURES)


def small_spec(arch, size=32):
    return make_spec(arch, num_classes=5, image_size=size, width=0.125)


def randomise_bn(model):
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)


def test_registry_has_the_papers_architectures_and_counts():
    assert {"vgg11", "vgg14", "vgg16", "resnet18", "resnet34"} <= set(ARCHITECTURES)
    convs = {a: sum(1 for e in build_plan(make_spec(a, 10, 64)) if e["type"] == "conv") for a in ("vgg11", "vgg14", "vgg16")}
    assert convs == {"vgg11": 8, "vgg14": 13, "vgg16": 13}
    fcs = {a: sum(1 for e in build_plan(make_spec(a, 10, 64)) if e["type"] in ("fc", "output"))
           for a in ("vgg11", "vgg14", "vgg16")}
    assert fcs == {"vgg11": 3, "vgg14": 1, "vgg16": 3}
    blocks = sum(1 for e in build_plan(make_spec("resnet18", 10, 64)) if e["type"] == "block")
    assert blocks == 8
    with pytest.raises(StpError, match="unknown architecture"):
        make_spec("alexnet", 10, 64)
    with pytest.raises(StpError, match="multiple of 32"):
        make_spec("vgg11", 10, 48)


@pytest.mark.parametrize("arch,twin", [("vgg11", "vgg11_bn"), ("vgg16", "vgg16_bn"), ("resnet18", "resnet18"),
                                       ("resnet34", "resnet34")])
def test_each_registry_entry_has_the_layers_of_its_torchvision_twin(arch, twin):
    """At width 1 and 224 px, 1000 classes: every convolution and linear layer, in order, with the shapes
    torchvision's own definition gives (built on the meta device: no memory, no weights)."""
    torchvision = pytest.importorskip("torchvision")

    def shapes(model):
        return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    with torch.device("meta"):
        ours, theirs = ANN(make_spec(arch, 1000, 224)), getattr(torchvision.models, twin)()
    assert shapes(ours) == shapes(theirs)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_ann_and_snn(arch):
    spec = small_spec(arch)
    x = torch.randn(2, 3, 32, 32)
    assert ANN(spec)(x).shape == (2, 5)
    assert SNN(spec, timesteps=3)(x).shape == (2, 5)


@pytest.mark.parametrize("arch", ARCHS)
def test_add_unit_every_group_identity_init_and_shapes(arch):
    spec = small_spec(arch)
    torch.manual_seed(0)
    base = ANN(spec).eval()
    randomise_bn(base)
    x = torch.randn(3, 3, 32, 32)
    expected = base(x)
    for group in range(1, len(spec["depths"]) + 1):
        for count in (1, 2):
            big = insert_units(base, group, count).eval()
            first = first_layer_index(big.plan, group, count)
            units = [i for i, e in enumerate(big.plan) if e.get("unit")]
            assert units == list(range(first, first + count))
            assert big.spec["units"] == {"group": group, "count": count}
            assert all(big.plan[i]["group"] == group and big.plan[i]["in"] == big.plan[i]["out"] for i in units)
            torch.testing.assert_close(big(x), expected, rtol=1e-4, atol=1e-4)
            # and removing them again gives back Na's tensors exactly
            small, removed_at = remove_units(big, group, count)
            assert removed_at == first and small.spec["depths"] == spec["depths"]
            for key, tensor in base.state_dict().items():
                assert torch.equal(small.state_dict()[key], tensor), key


@pytest.mark.parametrize("arch", ARCHS)
def test_algorithm2_mapping_every_group(arch):
    """Each tensor of Sa equals the right tensor of Sb, and no Unit tensor survives."""
    spec = small_spec(arch)
    for group in range(1, len(spec["depths"]) + 1):
        count = 1
        big_spec = with_units(spec, group, count)
        torch.manual_seed(group)
        sb = SNN(big_spec, timesteps=2)
        for tensor in sb.state_dict().values():
            tensor.normal_()  # every tensor distinct, buffers (binary spikes' shortcut scales) included
        sa, first = remove_units(sb, group, count)
        assert sa.spec["depths"] == spec["depths"] and sa.spec["units"] is None
        assert sa.timesteps == sb.timesteps and sa.settings == sb.settings
        # independent computation: drop the Unit entries from Sb's layer list
        kept = [i for i, e in enumerate(sb.plan) if not e.get("unit")]
        assert kept == index_mapping(len(sa.plan), first, count)
        sb_state = sb.state_dict()
        unit_tensors = [v for k, v in sb_state.items() if int(k.split(".")[1]) in range(first, first + count)]
        for key, tensor in sa.state_dict().items():
            index = int(key.split(".")[1])
            source_key = f"layers.{kept[index]}." + key.split(".", 2)[2]
            assert torch.equal(tensor, sb_state[source_key])
            assert not any(tensor.shape == u.shape and torch.equal(tensor, u) for u in unit_tensors)
        # thresholds and leaks follow the same mapping
        names = [n for n, _ in sa.neurons()]
        assert len(names) == len([n for n, _ in sb.neurons()]) - (2 if arch.startswith("resnet") else 1)


def test_spatial_prune_refuses_layers_that_change_shape():
    spec = small_spec("vgg11")
    with pytest.raises(StpError, match="removable"):
        without_layers(spec, 1, 1)  # group 1 of VGG11 is a single 3->64 conv
    with pytest.raises(StpError, match="out of range"):
        without_layers(spec, 6, 1)
    assert without_layers(spec, 3, 1)[0]["depths"][2] == 1


def test_bn_folding_equals_conv_then_bn_in_eval_mode():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(6)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.3, 3)
    bn.eval()
    x = torch.randn(2, 4, 8, 8)
    weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
    folded = nn.functional.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(folded, bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg11", "resnet18"])
def test_converted_if_snn_approaches_the_ann_at_large_t(arch):
    """IF neurons (leak 1), thresholds at the (99th-percentile) maximum activation: logits/T -> ANN logits.

    Run with the DIET-SNN initial membrane (0) and with stp's default (half the threshold).
    """
    torch.manual_seed(0)
    spec = make_spec(arch, num_classes=4, image_size=32, width=0.125, dropout=0.0)
    ann = ANN(spec).eval()
    randomise_bn(ann)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        target = ann(x)
    for initial in (0.0, 0.5):
        errors = {}
        for steps in (4, 128):
            snn = snn_from_ann(ann, steps, SpikingSettings(dropout=0.0, initial_membrane=initial)).eval()
            balance_thresholds(snn, x, percentile=99.0, scale=1.0)
            with torch.no_grad():
                errors[steps] = float((snn(x) / steps - target).abs().mean() / target.abs().mean())
        assert errors[128] < errors[4]
        assert errors[128] < 0.4 * errors[4] and errors[128] < 0.35, (initial, errors)


def test_every_layer_type_has_its_modules_in_every_form_and_families_are_registered():
    from stpcli.export.convolutions import INTEGER_CHAIN_LAYERS, SNN_CHAIN_LAYERS
    from stpcli.export.integer_onnx import INTEGER_ONNX_LAYERS
    from stpcli.export.integer_runtime import INTEGER_RUNTIME_LAYERS
    from stpcli.export.nir_graph import STP_GRAPH_LAYERS
    from stpcli.export.one_step import ONE_STEP_LAYERS
    from stpcli.models.ann import ANN_LAYERS
    from stpcli.models.plan import LAYER_TYPES, PLAN_BUILDERS
    from stpcli.spiking.network import SNN_LAYERS
    from stpcli.spiking.quantize import INTEGER_LAYERS

    assert set(ANN_LAYERS) == set(SNN_LAYERS) == set(INTEGER_LAYERS) == set(ONE_STEP_LAYERS) == set(LAYER_TYPES)
    assert set(SNN_CHAIN_LAYERS) == set(INTEGER_CHAIN_LAYERS) == set(STP_GRAPH_LAYERS) == set(LAYER_TYPES)
    assert set(INTEGER_RUNTIME_LAYERS) == set(INTEGER_ONNX_LAYERS) == set(LAYER_TYPES)
    assert {spec()["family"] for spec in ARCHITECTURES.values()} <= set(PLAN_BUILDERS)
    with pytest.raises(ValueError, match="no layer plan"):
        build_plan({**small_spec("vgg11"), "family": "mlp"})


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_plans_tensor_shapes_are_the_modules_own(arch):
    """checkpoint.read_checkpoint checks a file against these shapes without building the model."""
    for units in (None, (2, 1)):
        spec = make_spec(arch, 5, 64, 0.25, 0.5)
        if units:
            spec = with_units(spec, *units)
        plan = build_plan(spec)
        with torch.device("meta"):
            assert tensor_shapes(plan, "ann") == {k: tuple(v.shape) for k, v in ANN(spec).state_dict().items()}
            for amplitude in ("binary", "threshold"):
                snn = SNN(spec, 2, SpikingSettings(spike_amplitude=amplitude))
                assert tensor_shapes(plan, "snn", amplitude == "binary") == {
                    k: tuple(v.shape) for k, v in snn.state_dict().items()}
