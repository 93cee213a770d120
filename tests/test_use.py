"""Using a trained model: predict, NIR/ONNX export, plots, remote-sensing metrics, methods, rerunnable
configs and CLI polish, run as a user runs them."""

import csv
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY, run_cli
from PIL import Image
from test_models import randomise_bn

from stpcli.checkpoint import load_checkpoint
from stpcli.engine.evaluate import Scores
from stpcli.models.ann import ANN
from stpcli.models.registry import make_spec
from stpcli.restore import model_from_checkpoint
from stpcli.spiking.convert import balance_thresholds, snn_from_ann
from stpcli.spiking.settings import SpikingSettings


def as_json(result):
    return json.loads(result.stdout)


# predict -------------------------------------------------------------------------------------

def test_predict_folders_and_files_with_top_k_json_and_csv(pipeline, dataset_dir, tmp_path):
    images = tmp_path / "new"
    shutil.copytree(dataset_dir / "lakes", images / "nested" / "lakes")
    (images / "broken.jpg").write_bytes(b"not an image")
    single = dataset_dir / "roads" / "img000.png"
    result = as_json(run_cli(["predict", pipeline["sa_t1"], images, single, "--top-k", "2", "--json",
                              "--device", "cpu"]))
    assert result["method"] == "STP" and result["timesteps"] == 1
    assert result["images"] == 13 and [u["path"] for u in result["unreadable"]] == [str(images / "broken.jpg")]
    for row in result["predictions"]:
        probabilities = [t["probability"] for t in row["top"]]
        assert len(row["top"]) == 2 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6 and {t["class"] for t in row["top"]} <= {"fields", "lakes", "roads"}
    table = tmp_path / "p.csv"
    text = run_cli(["predict", pipeline["na"], images, "--csv", table, "--device", "cpu"]).stdout
    assert "12 image(s) predicted, 1 unreadable" in text
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 12 * 3 + 1 and rows[0].keys() == {"path", "rank", "class", "probability"}


def test_predict_agrees_with_the_model_on_the_training_pipeline(pipeline, dataset_dir):
    """The top-1 class of predict equals the argmax of the model on the same decoded, normalised image."""
    ckpt = load_checkpoint(pipeline["sb_t1"])
    files = sorted((dataset_dir / "fields").iterdir())[:5]
    result = as_json(run_cli(["predict", pipeline["sb_t1"], *files, "--json", "--device", "cpu"]))
    from stpcli.data.imagefolder import decode_image
    from stpcli.data.loader import normalise
    from stpcli.restore import input_stats

    model = model_from_checkpoint(ckpt).eval()
    batch = normalise(torch.stack([decode_image(f, 32)[0] for f in files]), input_stats(ckpt.record))
    with torch.no_grad():
        expected = [ckpt.classes[i] for i in model(batch).argmax(1).tolist()]
    assert [row["top"][0]["class"] for row in result["predictions"]] == expected


def test_predict_refuses_missing_paths_and_bad_options(pipeline, tmp_path):
    result = run_cli(["predict", pipeline["na"], tmp_path / "absent.jpg"], expect=2)
    assert "does not exist" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files" in run_cli(["predict", pipeline["na"], empty], expect=2).output
    assert "--top-k must be at least 1" in run_cli(["predict", pipeline["na"], empty.parent, "--top-k", "0"], expect=2).output


# metrics -------------------------------------------------------------------------------------

def test_overall_average_accuracy_and_kappa_against_a_hand_computation():
    matrix = torch.tensor([[8, 2, 0], [1, 5, 4], [0, 0, 10]])
    scores = Scores(matrix, 0.0)
    n = 30
    assert scores.overall_accuracy == pytest.approx(100 * 23 / n)
    assert scores.average_accuracy == pytest.approx(100 * (0.8 + 0.5 + 1.0) / 3)
    p_o = 23 / n
    p_e = (10 * 9 + 10 * 7 + 10 * 14) / n ** 2
    assert scores.kappa == pytest.approx((p_o - p_e) / (1 - p_e))


def test_evaluate_reports_remote_sensing_metrics_and_writes_plots(pipeline, tmp_path):
    result = as_json(run_cli(["evaluate", pipeline["sa_t1"], "--json", "--device", "cpu", "--plots", tmp_path]))
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == result["images"]
    assert result["overall_accuracy"] == pytest.approx(100 * np.trace(matrix) / matrix.sum())
    recalls = [100 * matrix[i, i] / matrix[i].sum() for i in range(3)]
    assert result["average_accuracy"] == pytest.approx(np.mean(recalls))
    assert -1 <= result["kappa"] <= 1 and result["method"] == "STP"
    for name in ("sa_t1.confusion.png", "sa_t1.spike_rates.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width > 300 and image.height > 200
    text = run_cli(["evaluate", pipeline["na"], "--device", "cpu"]).stdout
    assert "average accuracy" in text and "kappa" in text and "confusion matrix" in text


def test_training_writes_curves_and_the_csv_has_validation_loss_and_spike_rate(pipeline):
    folder = pipeline["sa_t1"].parent
    with Image.open(folder / "sa_t1.png") as image:
        assert image.width > 600
    header = (folder / "sa_t1.metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_loss", "spike_rate"} <= set(header)
    assert "spike_rate" not in (folder / "na.metrics.csv").read_text().splitlines()[0]


def test_progress_line_estimates_the_time_left_from_the_epochs_after_the_first():
    from stpcli.engine.train import time_left

    first_only = [{"epoch": 1, "seconds": 30.0}]
    assert time_left(first_only, 5) == "  ~2 min left"  # 4 epochs x 30 s
    warmed = [{"epoch": 1, "seconds": 100.0}, {"epoch": 2, "seconds": 10.0}, {"epoch": 3, "seconds": 20.0}]
    assert time_left(warmed, 6) == "  ~45 s left"  # 3 epochs x 15 s: the warm-up epoch is left out
    assert time_left(warmed, 3) == ""
    assert time_left([{"epoch": 1, "seconds": 3600.0}], 4) == "  ~3.0 h left"
    suspended = [{"epoch": e, "seconds": 600.0 if e == 4 else 9.0} for e in range(1, 6)]  # stopped 10 min in epoch 4
    assert time_left(suspended, 15) == "  ~2 min left"  # 10 epochs x 9 s (the median), not x 157 s (the mean)


def test_accuracy_axis_spans_at_least_twenty_points_within_zero_and_hundred(tmp_path, monkeypatch):
    from stpcli import plots

    spans, span = [], plots._accuracy_span
    monkeypatch.setattr(plots, "_accuracy_span", lambda axis, acc: (span(axis, acc), spans.append(axis.get_ylim())))
    rows = [{"checkpoint": "ann.safetensors", "method": "ANN", "accuracy": 91.0, "energy_uj": 10.0},
            {"checkpoint": "stp.safetensors", "method": "STP", "accuracy": 90.0, "energy_uj": 1.0}]
    plots.accuracy_vs_energy(rows, "close", tmp_path / "close.png")
    plots.accuracy_vs_energy([{**row, "accuracy": row["accuracy"] + 8.5} for row in rows], "top", tmp_path / "top.png")
    (low, high), (top_low, top_high) = spans
    assert high - low >= 20 and low < 90 and high > 91  # a 1-point gap drawn as 1 point of 20, not of 1.2
    assert top_high == 100 and top_high - top_low >= 20  # 98.5 and 99.5: the span stops at 100
    assert (tmp_path / "close.png").stat().st_size > 5_000


def test_study_series_are_told_apart_by_recipe_and_unit_setting():
    """A recipe sweep draws the reference recipe dashed in its method's colour; a Unit sweep gives
    each setting its own colour and each method its own marker."""
    from stpcli.plots import METHOD_COLOURS, series_styles

    recipes = series_styles([{"series": f"TP ({recipe})", "method": "TP", "units": "", "recipe": recipe}
                             for recipe in ("stp", "reference")])
    assert recipes["TP (stp)"]["linestyle"] == "-" and recipes["TP (reference)"]["linestyle"] == "--"
    assert recipes["TP (stp)"]["color"] == recipes["TP (reference)"]["color"] == METHOD_COLOURS["TP"]
    units = series_styles([{"series": f"{method} {setting}", "method": method, "units": setting, "recipe": ""}
                           for setting in ("AS1 M1", "AS5 M1") for method in ("STP", "STP (Units kept)")])
    assert units["STP AS1 M1"]["color"] != units["STP AS5 M1"]["color"]
    assert units["STP AS1 M1"]["color"] == units["STP (Units kept) AS1 M1"]["color"]
    assert units["STP AS1 M1"]["marker"] != units["STP (Units kept) AS1 M1"]["marker"]


# method, compare plot, info --config ---------------------------------------------------------

def test_compare_names_the_method_of_every_row_and_plots_accuracy_against_energy(pipeline, tmp_path):
    plot = tmp_path / "compare.png"
    rows = as_json(run_cli(["compare", pipeline["na"], pipeline["nb"], pipeline["sb_t1"], pipeline["sa_t1"],
                            "--json", "--device", "cpu", "--plot", plot]))
    assert [r["method"] for r in rows] == ["ANN", "ANN with Units", "STP (Units kept)", "STP"]
    assert plot.stat().st_size > 10_000
    tp = tmp_path / "s_t2.safetensors"
    run_cli(["convert", pipeline["na"], "--timesteps", "2", "--epochs", "0", "--calibration-images", "8",
             "--device", "cpu", "--out", tp])
    assert as_json(run_cli(["compare", tp, "--json", "--device", "cpu"]))[0]["method"] == "TP"


def test_info_config_reruns_the_stage_with_the_same_options(pipeline, tmp_path):
    text = run_cli(["info", pipeline["nb"], "--config"]).stdout
    preset = yaml.safe_load(text)
    assert list(preset) == ["add-unit"] and preset["add-unit"]["as"] == 3 and preset["add-unit"]["m"] == 1
    config = tmp_path / "again.yaml"
    config.write_text(text)
    again = tmp_path / "nb.safetensors"
    run_cli(["add-unit", pipeline["na"], "--config", config, "--out", again])
    first, second = (load_checkpoint(p).history[-1]["options"] for p in (pipeline["nb"], again))
    assert {k: v for k, v in first.items() if k != "out"} == {k: v for k, v in second.items() if k != "out"}
    assert {"as", "m", "epochs", "batch-size"} <= set(second)


# export --------------------------------------------------------------------------------------

def run_nir(graph, image: torch.Tensor, timesteps: int) -> torch.Tensor:
    """A small discrete-time interpreter for the graphs stp writes (dt = 1, summed edges,
    soft reset and initial membrane from each neuron's metadata, logits summed over time)."""
    import nir

    order, placed = [], set()
    while len(order) < len(graph.nodes):
        for name in graph.nodes:
            inputs = [a for a, b in graph.edges if b == name]
            if name not in placed and all(a in placed for a in inputs):
                order.append(name)
                placed.add(name)

    def tensor(value):
        return torch.as_tensor(np.asarray(value), dtype=torch.float32)

    membranes, total = {}, 0
    for _ in range(timesteps):
        values = {}
        for name in order:
            node = graph.nodes[name]
            inputs = [values[a] for a, b in graph.edges if b == name]
            x = sum(inputs[1:], inputs[0]) if inputs else None
            if isinstance(node, nir.Input):
                out = image
            elif isinstance(node, nir.Conv2d):
                out = F.conv2d(x, tensor(node.weight), tensor(node.bias), tuple(node.stride), tuple(node.padding))
            elif isinstance(node, nir.AvgPool2d):
                out = F.avg_pool2d(x, tuple(int(k) for k in node.kernel_size), tuple(int(s) for s in node.stride),
                                   tuple(int(p) for p in node.padding))
            elif isinstance(node, nir.Flatten):
                out = x.flatten(1)
            elif isinstance(node, nir.Affine):
                out = F.linear(x, tensor(node.weight), tensor(node.bias))
            elif isinstance(node, nir.Scale):
                out = x * tensor(node.scale)
            elif isinstance(node, (nir.LIF, nir.IF)):
                threshold = tensor(node.v_threshold)
                if isinstance(node, nir.LIF):
                    tau, r = tensor(node.tau), tensor(node.r)
                    decay, gain = 1 - 1 / tau, r / tau
                else:
                    decay, gain = 1.0, tensor(node.r)
                state = membranes.get(name, torch.full_like(x, float(node.metadata["initial_membrane"])))
                u = decay * state + gain * x
                out = (u > threshold).float()
                membranes[name] = u - threshold * out  # soft reset ("reset": "subtract")
            elif isinstance(node, nir.Output):
                out = x
            else:
                raise AssertionError(f"unexpected node {type(node).__name__}")
            values[name] = out
        total = total + values["output"]
    return total


def test_nir_export_reads_back_and_reproduces_stps_logits(pipeline, dataset_dir, tmp_path):
    nir = pytest.importorskip("nir", reason="the nir package is not installed (pip install 'stpcli[export]')")

    out = tmp_path / "sa_t1.nir"
    run_cli(["export", pipeline["sa_t1"], "--format", "nir", "--nir-graph", "stp", "--out", out])
    graph = nir.read(str(out))
    kinds = {type(node).__name__ for node in graph.nodes.values()}
    assert {"Input", "Conv2d", "AvgPool2d", "Flatten", "Affine", "Output"} <= kinds and kinds & {"LIF", "IF"}
    ckpt = load_checkpoint(pipeline["sa_t1"])
    model = model_from_checkpoint(ckpt).eval()
    x = torch.randn(4, 3, 32, 32)
    for steps in (ckpt.timesteps, 3):
        model.timesteps = steps
        with torch.no_grad():
            torch.testing.assert_close(run_nir(graph, x, steps), model(x), rtol=1e-4, atol=1e-4)
    refused = run_cli(["export", pipeline["na"], "--format", "nir", "--out", tmp_path / "na.nir"], expect=2)
    assert "exports SNN checkpoints" in refused.output


@pytest.mark.parametrize("amplitude", ["threshold", "binary"])
def test_nir_graph_of_a_resnet_with_leaky_neurons_and_shortcuts(amplitude):
    nir = pytest.importorskip("nir", reason="the nir package is not installed (pip install 'stpcli[export]')")

    from stpcli.export import nir_graph

    torch.manual_seed(0)
    spec = make_spec("resnet18", num_classes=4, image_size=32, width=0.125, dropout=0.0)
    ann = ANN(spec).eval()
    randomise_bn(ann)
    snn = snn_from_ann(ann, 2, SpikingSettings(dropout=0.0, spike_amplitude=amplitude)).eval()
    x = torch.randn(3, 3, 32, 32)
    balance_thresholds(snn, x, 99.0, 0.5)
    for index, (_, neuron) in enumerate(snn.neurons()):
        neuron.leak.data.fill_(1.0 if index % 2 else 0.8)  # both IF and LIF nodes
    graph = nir_graph(snn, "stp")
    assert any(isinstance(n, nir.Scale) for n in graph.nodes.values())  # identity shortcuts
    with torch.no_grad():
        torch.testing.assert_close(run_nir(graph, x, 2), snn(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_of_an_ann_runs_in_onnxruntime(pipeline, tmp_path):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "na.onnx"
    run_cli(["export", pipeline["na"], "--format", "onnx", "--out", out])
    onnx.checker.check_model(onnx.load(str(out)))
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    model = model_from_checkpoint(load_checkpoint(pipeline["na"])).eval()
    x = torch.randn(5, 3, 32, 32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=1e-4, atol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map  # what a deploying user reads, through onnxruntime
    record = load_checkpoint(pipeline["na"]).record
    assert json.loads(meta["stp.classes"]) == record["classes"] and meta["stp.image_size"] == "32"
    assert json.loads(meta["stp.mean"]) == record["input"]["mean"] and json.loads(meta["stp.std"]) == record["input"]["std"]


# CLI polish ----------------------------------------------------------------------------------

COMMANDS = ["train-ann", "add-unit", "convert", "temporal-prune", "spatial-prune", "evaluate", "info", "compare",
            "predict", "export", "pipeline"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_an_example_and_flags_show_as_flags(command):
    text = run_cli([command, "--help"]).stdout
    assert "Example: stp " in text
    for line in text.splitlines():
        if any(flag in line for flag in ("--json ", "--force ", "--resume ", "--verify ")):
            assert "<bool>" not in line, line


def test_bare_stp_prints_the_help_and_config_typos_get_a_suggestion(tmp_path):
    result = run_cli([], expect=None)
    assert "Usage" in result.output and "train-ann" in result.output
    bad = tmp_path / "typo.yaml"
    bad.write_text("train-ann:\n  image-sise: 32\n")
    result = run_cli(["train-ann", "--config", bad, "--out", tmp_path / "x.safetensors"], expect=2)
    assert "did you mean 'image-size'" in result.output


def test_outputs_follow_the_users_umask(dataset_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "na.safetensors"
        run_cli(["train-ann", *TINY, "--data", dataset_dir, "--epochs", "1", "--out", out])
        pack = tmp_path / "p.safetensors"
        run_cli(["data", "pack", dataset_dir, "--image-size", "32", "--out", pack])
    finally:
        os.umask(previous)
    for path in (out, pack, tmp_path / "na.metrics.csv", tmp_path / "na.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
