"""Deploying a one-time-step SNN: the portable NIR graph run by real consumers (snnTorch, Norse),
unpatched, against stp's own logits; the SNN as ONNX in onnxruntime; int8 quantization.

The consumers are test-only dependencies, installed as a user installs them (``[test]`` extra).
"""

import contextlib
import io
import json
import logging
import warnings

import numpy as np
import pytest
import torch
from conftest import run_cli

from stpcli.checkpoint import load_checkpoint
from stpcli.data.imagefolder import decode_image
from stpcli.data.loader import normalise
from stpcli.restore import input_stats, model_from_checkpoint

nir = pytest.importorskip("nir")
snntorch_import = pytest.importorskip("snntorch.import_nir")
norse = pytest.importorskip("norse.torch")


TRAIN = {"vgg": ["--arch", "vgg11", "--width", "0.25", "--dropout", "0.2", "--lr", "0.01", "--batch-size", "8"],
         "resnet": ["--arch", "resnet18", "--width", "0.125", "--lr", "0.05", "--batch-size", "16"]}


@pytest.fixture(scope="module")
def networks(dataset_dir, tmp_path_factory):
    """{"vgg": {1: file, 2: file}, "resnet": {...}}: VGG11 x0.25 and ResNet18 x0.125, trained until
    their SNNs at T = 1 and T = 2 give logits that differ from image to image (what an agreement
    test needs: a barely trained one-time-step SNN can fall silent)."""
    files = {}
    for network, options in TRAIN.items():
        folder = tmp_path_factory.mktemp(network)
        run_cli(["train-ann", *options, "--image-size", "32", "--epochs", "12", "--data", dataset_dir, "--device", "cpu",
                 "--out", folder / "na.safetensors"])
        files[network] = {t: folder / f"s_t{t}.safetensors" for t in (1, 2)}
        for t, path in files[network].items():
            run_cli(["convert", folder / "na.safetensors", "--timesteps", str(t), "--epochs", "4", "--lr", "1e-3",
                     "--batch-size", "8", "--calibration-images", "32", "--device", "cpu", "--out", path])
    return files


def _images(ckpt, dataset_dir, count=32):
    files = sorted(p for p in dataset_dir.rglob("*") if p.is_file())[:count]
    size = ckpt.record["input"]["image_size"]
    return normalise(torch.stack([decode_image(f, size)[0] for f in files]), input_stats(ckpt.record))


def _exported(path, tmp_path, graph="portable"):
    out = tmp_path / (path.stem + f".{graph}.nir")
    run_cli(["export", path, "--format", "nir", "--nir-graph", graph, "--out", out])
    return nir.read(str(out))


def run_in_snntorch(graph, x, steps):
    """snnTorch's own importer, as its documentation shows; it keeps the membranes between calls."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = snntorch_import.import_from_nir(graph)
    total = 0
    for _ in range(steps):
        out = net(x)
        total = total + (out[0] if isinstance(out, tuple) else out)  # some snnTorch versions return (output, state)
    return total


def run_in_norse(graph, x, steps, initial_state=False):
    """Norse's importer with dt = 1e-4 (the step the portable graph declares). ``initial_state``:
    each LIF state starts at the node's metadata['initial_membrane'], the closest Norse comes to
    stp at T > 1 (its LIF importer always resets to v_reset, not by subtraction)."""
    from nirtorch.graph_executor import GraphExecutorState
    from norse.torch.functional.lif_box import LIFBoxFeedForwardState

    logging.disable(logging.WARNING)  # Norse warns that r is not 1 where it is; nothing else
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = norse.from_nir(graph, dt=1e-4)
    finally:
        logging.disable(logging.NOTSET)
    state = GraphExecutorState()
    if initial_state:
        for name, node in graph.nodes.items():
            if isinstance(node, nir.LIF):
                v0 = torch.full((x.shape[0], *node.v_threshold.shape), float(node.metadata["initial_membrane"]))
                state.state[name] = (LIFBoxFeedForwardState(v=v0),)
    total = 0
    for _ in range(steps):
        out, state = net(x, state)
        total = total + out
    return total


def _agreement(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    theirs = theirs.reshape(ours.shape)
    return float((ours.argmax(1) == theirs.argmax(1)).float().mean()) * 100, float((ours - theirs).abs().max())


def _stp_and_graph(path, dataset_dir, tmp_path):
    """32 images, stp's logits for them, and the checkpoint's portable NIR graph as read back."""
    ckpt = load_checkpoint(path)
    x = _images(ckpt, dataset_dir)
    with torch.no_grad():
        ours = model_from_checkpoint(ckpt).eval()(x)
    return x, ours, _exported(path, tmp_path)


@pytest.mark.parametrize("network", ["vgg", "resnet"])
def test_a_one_time_step_snn_runs_identically_in_snntorch_and_norse(network, networks, dataset_dir, tmp_path):
    x, ours, graph = _stp_and_graph(networks[network][1], dataset_dir, tmp_path)
    assert float(ours.std(0).mean()) > 0.1  # the logits vary between images
    with torch.no_grad():
        assert not any("." in name for name in graph.nodes)
        assert {type(n).__name__ for n in graph.nodes.values()} == {"Input", "Conv2d", "LIF", "Output"}
        for consumer in (run_in_snntorch, run_in_norse):
            agreement, difference = _agreement(ours, consumer(graph, x, 1))
            assert agreement == 100.0 and difference <= 1e-4, (consumer.__name__, agreement, difference)


# T = 2: the documented figures (README, "Deploying"), measured on these tests' checkpoints (32 images):
# Norse's LIF importer resets to v_reset (stp subtracts the threshold) and its IF has no leak, so at
# T > 1 it agrees only this far, even with each neuron's initial membrane set; snnTorch's importer
# cannot run an IF node (a layer whose leak is 1) at all. ONNX is the exact route at T > 1.
T2_NORSE_WITH_INITIAL_STATE = {"vgg": 53.1, "resnet": 65.6}  # argmax agreement, %, measured


@pytest.mark.parametrize("network", ["vgg", "resnet"])
def test_at_two_time_steps_the_consumers_reach_the_documented_agreement(network, networks, dataset_dir, tmp_path):
    x, ours, graph = _stp_and_graph(networks[network][2], dataset_dir, tmp_path)
    with torch.no_grad():
        norse_initial, _ = _agreement(ours, run_in_norse(graph, x, 2, initial_state=True))
        assert norse_initial >= T2_NORSE_WITH_INITIAL_STATE[network] - 0.05, norse_initial
    metadata = graph.metadata
    assert metadata["timesteps"] == 2 and "initial_membrane" in metadata
    assert all(float(n.metadata["initial_membrane"]) > 0 for n in graph.nodes.values() if isinstance(n, nir.LIF))


def test_the_graph_says_what_it_was_verified_with(pipeline, tmp_path):
    graph = _exported(pipeline["sa_t1"], tmp_path)
    assert graph.metadata["graph"] == "portable" and graph.metadata["dt"] == pytest.approx(1e-4)
    assert any(k.startswith("snntorch") for k in graph.metadata["verified_consumers"])
    assert any(k.startswith("norse") for k in graph.metadata["verified_consumers"])


# ONNX -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("network,steps", [("vgg", 1), ("vgg", 2), ("resnet", 1), ("resnet", 2)])
def test_an_snn_as_onnx_runs_in_onnxruntime_as_in_stp(network, steps, networks, dataset_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = networks[network][steps]
    ckpt = load_checkpoint(path)
    out = tmp_path / f"{network}_t{steps}.onnx"
    run_cli(["export", path, "--format", "onnx", "--out", out])
    onnx.checker.check_model(onnx.load(str(out)))
    x = _images(ckpt, dataset_dir)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ours = model_from_checkpoint(ckpt).eval()(x).numpy()
    assert (logits.argmax(1) == ours.argmax(1)).all()
    np.testing.assert_allclose(logits, ours, atol=1e-4, rtol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["stp.kind"] == "snn" and meta["stp.timesteps"] == str(ckpt.timesteps)


def test_int8_quantization_reports_the_accuracy_it_costs(pipeline, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "sa_t1.int8.onnx"
    report = json.loads(run_cli(["export", pipeline["sa_t1"], "--format", "onnx", "--quantize", "int8", "--out", out,
                                 "--device", "cpu", "--json"]).stdout)
    assert report["quantize"] == "int8" and report["bytes"] < report["fp32_bytes"]
    assert 0 <= report["int8_test_accuracy"] <= 100 and report["test_images"] > 0
    text = run_cli(["export", pipeline["sa_t1"], "--format", "onnx", "--quantize", "int8", "--out", out, "--force",
                    "--device", "cpu"]).stdout
    assert "test split" in text and "int8" in text and "points" in text


def test_bad_export_requests_are_one_line_and_leave_nothing(pipeline, tmp_path):
    from test_reliability import refused

    out = tmp_path / "x.nir"
    refused(["export", pipeline["na"], "--format", "nir", "--out", out], "exports SNN checkpoints", out)
    refused(["export", pipeline["sa_t1"], "--format", "nir", "--quantize", "int8", "--out", out], "applies to --format onnx", out)
    refused(["export", pipeline["sa_t1"], "--nir-graph", "sinabs", "--out", out], "--nir-graph must be one of", out)
    refused(["export", pipeline["sa_t1"], "--format", "onnx", "--quantize", "int4", "--out", out], "--quantize must be", out)
    assert list(tmp_path.iterdir()) == []


def _layer_spikes(snn, x) -> list[torch.Tensor]:
    """stp's spikes at every neuron layer (its LIF modules' outputs) for the images ``x``."""
    from stpcli.spiking.neuron import LIF

    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
               for m in snn.modules() if isinstance(m, LIF)]
    with torch.no_grad():
        snn(x)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("network", ["vgg", "resnet"])
@pytest.mark.parametrize("amplitude,initial", [("binary", 0.5), ("binary", 0.0), ("threshold", 0.5)])
def test_the_one_step_form_fires_every_spike_stp_fires(network, amplitude, initial, networks, dataset_dir):
    """Thresholds and initial membranes moved into the biases, the step as Clip(0, eps): the same
    spikes at every layer and the same logits as stp's SNN, for both amplitudes and initial membranes."""
    from stpcli.export.one_step import _Block, _Fire, one_step_network
    from stpcli.spiking.settings import SpikingSettings

    ckpt = load_checkpoint(networks[network][1])
    snn = model_from_checkpoint(ckpt).eval()
    settings = SpikingSettings(**{**snn.settings.as_record(), "spike_amplitude": amplitude, "initial_membrane": initial})
    variant = type(snn)(snn.spec, 1, settings)
    variant.load_state_dict(snn.state_dict(), strict=False)
    variant.eval()
    x = _images(ckpt, dataset_dir)
    network_form = one_step_network(variant)
    fired: list[torch.Tensor] = []

    def keep(module, args, out):
        fired.append(out.clone())

    hooks = []
    for layer in network_form:
        if isinstance(layer, _Block):
            hooks += [layer.first.register_forward_hook(keep), layer.register_forward_hook(keep)]
        elif isinstance(layer, _Fire):
            hooks.append(layer.register_forward_hook(keep))
    with torch.no_grad():
        logits = network_form(x)
    for hook in hooks:
        hook.remove()
    ours = _layer_spikes(variant, x)
    assert len(fired) == len(ours) > 5
    for stored, spikes in zip(fired, ours, strict=True):
        assert len(set(torch.unique(stored).tolist()) - {0.0}) <= 1  # 0 and one stored level (eps, or V)
        assert torch.equal(stored != 0, spikes.reshape(stored.shape) != 0)
    with torch.no_grad():
        torch.testing.assert_close(logits, variant(x), rtol=1e-6, atol=1e-6)


def test_a_one_step_snn_in_onnxruntime_is_one_fused_kernel_per_layer_and_integer_in_int8(networks, tmp_path):
    """fp32: every convolution fused with its step (no comparison, no cast); int8: the spikes stay
    integer between layers (QLinearConv to QLinearConv, no dequantize/quantize around a step)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from stpcli.export.onnx_model import normalised, onnx_bytes, quantize_int8

    ckpt = load_checkpoint(networks["vgg"][1])
    fp32 = onnx_bytes(ckpt)
    images = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    int8 = quantize_int8(fp32, ckpt, images)
    for name, blob in (("fp32", fp32), ("int8", int8)):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
        assert not {"Greater", "Cast", "Where"} & set(ops), ops
        if name == "fp32":
            convs = [n for n in onnx.load(options.optimized_model_filepath).graph.node if n.op_type == "Conv"]
            assert convs and all(any(a.name == "activation" and a.s == b"Clip" for a in n.attribute) for n in convs)
        else:
            assert ops.count("QLinearConv") == 8 and ops.count("QuantizeLinear") == 1, ops  # the image, once
            assert ops.count("DequantizeLinear") == 1  # the logits, once
    assert normalised is not None


def test_an_int8_model_that_disagrees_with_fp32_below_the_floor_is_not_written(pipeline, tmp_path, monkeypatch):
    """The export measures how often int8 predicts what fp32 does on the test split, says it, and
    writes nothing below the floor unless --min-int8-agreement lowers it."""
    pytest.importorskip("onnxruntime")
    import stpcli.export as export_module

    real = export_module.onnx_predictions
    calls = []

    def every_other_wrong(model_bytes, images, batch=64):  # the second call is the int8 model's
        predicted = real(model_bytes, images, batch)
        calls.append(1)
        return predicted if len(calls) % 2 else (predicted + np.arange(len(predicted)) % 2) % 3

    monkeypatch.setattr(export_module, "onnx_predictions", every_other_wrong)
    out = tmp_path / "x.int8.onnx"
    result = run_cli(["export", pipeline["sa_t1"], "--format", "onnx", "--quantize", "int8", "--out", out,
                      "--device", "cpu"], expect=2)
    assert "predicts what the fp32 model does on only 50.0 %" in result.output and "floor 90 %" in result.output
    assert not out.exists()
    report = json.loads(run_cli(["export", pipeline["sa_t1"], "--format", "onnx", "--quantize", "int8", "--out", out,
                                 "--device", "cpu", "--min-int8-agreement", "0", "--json"]).stdout)
    assert report["int8_agreement"] == 50.0 and out.exists()
