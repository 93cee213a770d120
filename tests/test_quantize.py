"""Chip-ready integers: the quantize stage, its integer form checked against the neuron's equation in
exact arithmetic, the three runtimes of the integer network (stp evaluate, the numpy reference, the
integer ONNX graph in onnxruntime) spike for spike, and the hardware check's verdicts."""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import run_cli
from test_deploy import TRAIN
from test_reliability import CPU, refused

from stpcli.checkpoint import load_checkpoint, read_checkpoint
from stpcli.engine.runtime import setup_runtime
from stpcli.export.integer_runtime import run_integer
from stpcli.export.onnx_model import normalised
from stpcli.hardware import check
from stpcli.models.plan import build_plan
from stpcli.models.registry import make_spec
from stpcli.options import DataOptions
from stpcli.restore import model_from_checkpoint
from stpcli.run import Run, load_checkpoint_data

COMMON = ["--batch-size", "16", "--lr", "5e-4", "--device", "cpu"]
# the deploy tests' VGG and ResNet, and the VGG with max pooling of spikes (train-ann --pool max; Akida 1.0 pools so)
NETWORKS = TRAIN | {"vgg_max": [*TRAIN["vgg"], "--pool", "max"]}


@pytest.fixture(scope="module")
def quantized(networks, tmp_path_factory):
    """The NETWORKS' SNNs at T = 1, quantized at 4 bits with one epoch of fine-tuning."""
    folder = tmp_path_factory.mktemp("quantized")
    files = {}
    for network in NETWORKS:
        files[network] = folder / f"{network}_w4.safetensors"
        run_cli(["quantize", networks[network][1], "--weight-bits", "4", "--epochs", "1", *COMMON, "--out", files[network]])
    return files


@pytest.fixture(scope="module")
def networks(dataset_dir, tmp_path_factory):
    files = {}
    for network, options in NETWORKS.items():
        folder = tmp_path_factory.mktemp(network)
        run_cli(["train-ann", *options, "--image-size", "32", "--epochs", "6", "--data", dataset_dir, "--device", "cpu",
                 "--out", folder / "na.safetensors"])
        files[network] = {1: folder / "s_t1.safetensors"}
        run_cli(["convert", folder / "na.safetensors", "--timesteps", "1", "--epochs", "2", "--lr", "1e-3",
                 "--batch-size", "8", "--calibration-images", "32", "--device", "cpu", "--out", files[network][1]])
    return files


def _test_images(path):
    ckpt = load_checkpoint(path)
    parts = load_checkpoint_data(Run("test", setup_runtime("cpu")), ckpt, DataOptions())
    return ckpt, *parts.part("test")


@pytest.mark.parametrize("network", ["vgg", "resnet", "vgg_max"])
def test_the_integer_network_runs_spike_for_spike_in_stp_numpy_and_onnxruntime(network, quantized, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    ckpt, images, labels = _test_images(quantized[network])
    stp = model_from_checkpoint(ckpt)
    ours = stp.spikes(images)
    with torch.no_grad():
        stp_logits = stp(images).numpy()
    logits, spikes = run_integer(quantized[network], images.numpy())
    assert len(spikes) == len(ours) > 5
    for a, b in zip(spikes, ours, strict=True):
        assert np.array_equal(a, b.numpy().astype(np.int32))  # every spike of every layer
    assert np.array_equal(logits, stp_logits)
    onnx_file = tmp_path / "int.onnx"
    run_cli(["export", quantized[network], "--format", "onnx", "--out", onnx_file])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert {"ConvInteger", "Greater"} <= {n.op_type for n in __import__("onnx").load(str(onnx_file)).graph.node}
    (exported,) = session.run(None, {"image": images.numpy().astype(np.float32)})
    assert np.array_equal(exported, logits.astype(np.float32))  # the float64 logits, returned as float32
    evaluated = json.loads(run_cli(["evaluate", quantized[network], "--json", *CPU]).stdout)
    assert evaluated["overall_accuracy"] == pytest.approx(100 * float((logits.argmax(1) == labels.numpy()).mean()))


@pytest.mark.parametrize("network", ["vgg", "resnet"])
def test_the_integer_nir_graph_runs_in_snntorch_and_norse_as_the_integer_network(network, quantized, tmp_path):
    """The NIR export of a quantized checkpoint holds its integers (weights, per-channel thresholds)
    and runs, unpatched, in the consumers a user installs, giving the integer network's logits."""
    nir = pytest.importorskip("nir")
    from test_deploy import run_in_norse, run_in_snntorch

    ckpt, images, _ = _test_images(quantized[network])
    logits, _ = run_integer(quantized[network], images.numpy())
    out = tmp_path / "int.nir"
    run_cli(["export", quantized[network], "--format", "nir", "--out", out])
    graph = nir.read(str(out))
    readout = next(source for source, target in graph.edges if target == "output")
    convolutions = [name for name, node in graph.nodes.items() if isinstance(node, nir.Conv2d) and name != readout]
    assert len(convolutions) > 5
    for name in convolutions:  # every synapse but the readout holds integers
        for values in (graph.nodes[name].weight, graph.nodes[name].bias):
            assert np.array_equal(values, np.round(values)), name
    theta = ckpt.tensors["layers.0.neuron.threshold_int"].numpy()
    assert np.array_equal(graph.nodes["layer0_conv"].bias, -theta)  # each channel's threshold, as its bias
    assert all(np.all(node.v_threshold == 0.5) for node in graph.nodes.values() if isinstance(node, nir.LIF))
    exact = re.search(r"input values up to ([\d,]+)", graph.metadata["exact_in_consumers"])
    assert exact and int(exact.group(1).replace(",", "")) >= 255  # 8-bit images: every sum exact in float32
    x = images.float()
    for consumer in (run_in_snntorch, run_in_norse):
        with torch.no_grad():
            theirs = consumer(graph, x, 1).reshape(logits.shape).double().numpy()
        assert np.array_equal(theirs.argmax(1), logits.argmax(1)), consumer.__name__
        assert np.abs(theirs - logits).max() <= 1e-4 * max(1.0, np.abs(logits).max()), consumer.__name__
    refused(["export", quantized[network], "--format", "nir", "--nir-graph", "stp", "--out", tmp_path / "x.nir"],
            "exports as --nir-graph portable", tmp_path / "x.nir")


def test_each_integer_threshold_is_the_neurons_firing_condition_in_exact_arithmetic(quantized):
    """theta from the stored numbers, by the equation: a neuron fires iff delta A + b + lambda f V > V,
    so A > theta must hold exactly when that does, for A at and around theta."""
    file = read_checkpoint(quantized["vgg"])
    snn = file.record["snn"]
    plan = build_plan(file.record["model"])
    rng = random.Random(0)
    checked = 0
    for index, entry in enumerate(plan):  # a stored step includes the 1/k^2 of a sum pooling before it
        if entry["type"] not in ("conv", "fc"):
            continue
        name = f"layers.{index}.{entry['type']}"
        theta = file.array(f"layers.{index}.neuron.threshold_int")
        step = file.array(f"{name}.weight_step")
        bias = file.array(f"{name}.bias")
        v, leak = Fraction(file.scalar(f"layers.{index}.neuron.threshold")), Fraction(file.scalar(f"layers.{index}.neuron.leak"))
        initial = Fraction(snn["initial_membrane"])
        for channel in rng.sample(range(len(theta)), min(8, len(theta))):
            for a in (int(theta[channel]) - 1, int(theta[channel]), int(theta[channel]) + 1):
                fires = Fraction(float(step[channel])) * a + Fraction(float(bias[channel])) + leak * initial * v > v
                assert fires == (a > int(theta[channel])), (name, channel, a)
                checked += 1
    assert checked > 40


def test_the_quantized_checkpoint_says_what_it_is(quantized, networks):
    text = run_cli(["info", quantized["vgg"]]).stdout
    assert "quantized: 4-bit weights (first layer 8-bit)" in text
    table = run_cli(["compare", networks["vgg"][1], quantized["vgg"], *CPU]).stdout
    assert "4-bit" in table
    record = read_checkpoint(quantized["vgg"]).record
    assert record["quantized"]["weight_bits"] == 4 and record["input"]["divisor"] == 1.0
    assert record["history"][-1]["stage"] == "quantize" and record["history"][-1]["options"]["weight-bits"] == 4
    file = read_checkpoint(quantized["vgg"])
    weights = file.array("layers.0.conv.weight_int")
    assert weights.dtype == np.int8 and np.abs(weights).max() <= 127
    assert np.abs(file.array("layers.2.conv.weight_int")).max() <= 7  # 4 bits: -7..7


def test_quantize_refuses_what_has_no_integer_form(networks, quantized, pipeline, tmp_path):
    out = tmp_path / "q.safetensors"
    refused(["quantize", pipeline["sb_t3"], "--out", out, *CPU], "temporal-prune it to T = 1 first", out)
    refused(["quantize", quantized["vgg"], "--out", out, *CPU], "is quantized already", out)
    refused(["quantize", networks["vgg"][1], "--weight-bits", "3", "--out", out, *CPU], "--weight-bits must be one of", out)
    refused(["quantize", pipeline["na"], "--out", out, *CPU], "needs an SNN checkpoint", out)


def _record(arch="vgg11", width=0.25, size=32, bands=3, bits=4, first=8, pool="avg"):
    spec = make_spec(arch, 10, size, width, in_channels=bands, pool=pool)
    return {"kind": "snn", "timesteps": 1, "model": spec,
            "quantized": {"weight_bits": bits, "input_layer_bits": first} if bits else None}


def test_the_hardware_check_names_what_does_not_fit_and_why():
    akida = {f.problem for f in check(_record(), "akida1")}
    assert any("averages 2x2 windows" in p for p in akida)  # average pooling does not fit Akida 1.0
    bands = check(_record(bands=13), "akida1")
    assert any(f.where == "input" and "13 bands" in f.problem for f in bands)
    assert any("8-bit weights" in f.problem or "hold 8-bit" in f.problem for f in check(_record(bits=8), "akida1"))
    resnet = check(_record("resnet18", 0.125), "akida1")
    assert any("adds its shortcut" in f.problem for f in resnet)
    full = check(_record(width=1.0, size=224), "speck")
    assert any("Speck core" in f.problem or "no free Speck core" in f.problem for f in full)
    assert not check(_record(), "loihi2")
    assert [f.problem for f in check(_record(bits=None), "loihi2")] == ["holds float weights"]
    with pytest.raises(Exception, match="--target"):
        check(_record(), "truenorth")


def test_a_vgg_with_max_pooling_fits_akida_1_and_not_speck():
    """VGG11 x0.25 at 32 px, 4-bit hidden and 8-bit input weights: with average pooling Akida 1.0 refuses
    only its poolings; with max pooling (2x2 by 2, after each group's convolution) nothing; Speck sum-pools."""
    average = check(_record(), "akida1")
    assert average and all("averages 2x2 windows" in f.problem and "--pool max" in f.fix for f in average)
    assert check(_record(pool="max"), "akida1") == []
    speck = [f for f in check(_record(pool="max"), "speck") if "pools" in f.problem]
    assert len(speck) == 5 and all(f.fix == "train-ann --pool avg" for f in speck)
    stem = check(_record("resnet18", 0.125, pool="max"), "akida1")
    assert any("max-pools 3x3 windows by stride 2" in f.problem for f in stem)


def test_max_pooling_is_carried_through_every_stage_and_both_float_exports(networks, quantized, tmp_path):
    """The max-pooling network's record, its modules in the ANN and the SNN, its description, and its
    float ONNX export (spikes pooled by MaxPool) against stp; NIR, which has no max pooling, refuses it."""
    ort = pytest.importorskip("onnxruntime")
    ckpt, images, _ = _test_images(networks["vgg_max"][1])
    assert ckpt.model_spec["pool"] == "max" and load_checkpoint(quantized["vgg_max"]).model_spec["pool"] == "max"
    snn = model_from_checkpoint(ckpt)
    pools = [layer.op for entry, layer in zip(snn.plan, snn.layers) if entry["type"] == "pool"]
    assert len(pools) == 5 and all(isinstance(pool, torch.nn.MaxPool2d) for pool in pools)
    assert "max pooling" in run_cli(["info", networks["vgg_max"][1]]).stdout
    onnx_file = tmp_path / "float.onnx"
    run_cli(["export", networks["vgg_max"][1], "--format", "onnx", "--out", onnx_file])
    assert "MaxPool" in {n.op_type for n in __import__("onnx").load(str(onnx_file)).graph.node}
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = normalised(ckpt, images)
    (exported,) = session.run(None, {"image": x})
    with torch.no_grad():
        ours = snn.eval()(torch.from_numpy(x)).numpy()
    assert np.array_equal(exported.argmax(1), ours.argmax(1)) and np.abs(exported - ours).max() <= 1e-4
    for source in (networks["vgg_max"][1], quantized["vgg_max"]):
        refused(["export", source, "--format", "nir", "--out", tmp_path / "x.nir"], "NIR has no max pooling",
                tmp_path / "x.nir")


def test_the_hardware_command_reports_each_target(quantized):
    report = json.loads(run_cli(["hardware", quantized["vgg"], "--json"]).stdout)
    assert set(report["targets"]) == {"akida1", "speck", "loihi2"} and report["targets"]["loihi2"] == []
    text = run_cli(["hardware", quantized["vgg"], "--target", "akida1"]).stdout
    assert "does not fit" in text and "fix:" in text
