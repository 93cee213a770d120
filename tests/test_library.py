"""The stages called from Python, without the CLI: what a notebook or another tool does."""

import pytest
import torch

from stpcli.checkpoint import load_checkpoint
from stpcli.engine.recipe import SNN_MILESTONES
from stpcli.engine.runtime import setup_runtime
from stpcli.options import (
    AddUnitOptions,
    ConvertOptions,
    DataOptions,
    SpatialPruneOptions,
    TemporalPruneOptions,
    TrainAnnOptions,
    option_field,
)
from stpcli.report import evaluate
from stpcli.run import Run
from stpcli.stages.ann import add_unit, train_ann
from stpcli.stages.saving import StageIO
from stpcli.stages.snn import convert, spatial_prune, temporal_prune


def test_the_whole_chain_from_python(dataset_dir, tmp_path):
    run = Run("library", setup_runtime("cpu"))
    data = DataOptions(location=str(dataset_dir))
    na = train_ann(run, TrainAnnOptions(width=0.125, image_size=32, epochs=1, batch_size=16, lr=0.02), data=data,
                   io=StageIO(tmp_path / "na.safetensors"))
    nb = add_unit(run, na, AddUnitOptions(unit_group=3, count=1, epochs=0), io=StageIO(tmp_path / "nb.safetensors"))
    sb = convert(run, nb, ConvertOptions(timesteps=2, percentile=99.7, scale=0.6, calibration_images=16, epochs=5,
                                         batch_size=16, lr=1e-3, dropout=0.0),
                 io=StageIO(tmp_path / "sb_t2.safetensors"))
    outputs = temporal_prune(run, sb, TemporalPruneOptions(schedule="1", epochs_per_stage="1", batch_size=16, lr=1e-3),
                             io=StageIO(tmp_path / "sb_t1.safetensors"))
    sa = spatial_prune(run, outputs[-1], SpatialPruneOptions(epochs=0), io=StageIO(tmp_path / "sa_t1.safetensors"))
    assert [h["stage"] for h in sa.history] == ["train-ann", "add-unit", "convert", "temporal-prune", "spatial-prune"]
    assert sa.timesteps == 1 and sa.model_spec["units"] is None
    assert sa.record["snn"]["spike_amplitude"] == "binary"
    # convert trained on the SNN recipe's step milestones though the config named none: 0.6, 0.8, 0.9 of
    # 5 epochs round to epochs 3, 4, 4 (x0.2, then x0.2 twice); the ANN's 0.45, 0.7, 0.9 would give 2, 4, 4
    rows = (tmp_path / "sb_t2.metrics.csv").read_text().splitlines()[1:]
    assert [float(row.split(",")[1]) for row in rows] == pytest.approx([1e-3, 1e-3, 1e-3, 2e-4, 8e-6])
    assert SNN_MILESTONES == [0.6, 0.8, 0.9] and load_checkpoint(tmp_path / "sb_t2.safetensors").sha256 == sb.sha256
    result = evaluate(run, sa, DataOptions())
    assert result["method"] == "STP" and result["images"] == 6 and torch.isfinite(torch.tensor(result["kappa"]))


def test_a_python_call_records_its_options_as_the_command_would(dataset_dir, tmp_path):
    """The lineage holds the resolved options under the command-line names whoever called the stage,
    so ``stp info --config`` can rerun a stage that a notebook ran."""
    run = Run("library", setup_runtime("cpu"))
    na = train_ann(run, TrainAnnOptions(width=0.125, image_size=32, dropout=0.25, epochs=1, batch_size=16, lr=0.02,
                                        seed=4),
                   data=DataOptions(location=str(dataset_dir)), io=StageIO(tmp_path / "na.safetensors"))
    sb = convert(run, na, ConvertOptions(timesteps=2, percentile=99.0, scale=0.5, calibration_images=8, epochs=1,
                                         batch_size=16, lr=1e-3, distill=0.5, dropout=0.1),
                 io=StageIO(tmp_path / "s_t2.safetensors"))
    trained, converted = na.history[-1]["options"], sb.history[-1]["options"]
    assert trained["image-size"] == 32 and trained["dropout"] == 0.25 and trained["lr"] == 0.02
    assert trained["seed"] == 4 and trained["data"] == str(dataset_dir) and "distill" not in trained
    assert converted["percentile"] == 99.0 and converted["calibration-images"] == 8 and converted["fc-dropout"] == 0.1
    assert converted["distill"] == 0.5 and converted["teacher"]["sha256"] == na.sha256
    for entry in (*na.history, *sb.history):
        unknown = {key for key in entry["options"] if option_field(entry["stage"], key) is None}
        assert not unknown, unknown


def test_an_architecture_registered_from_one_module_runs_through_every_stage_and_export(dataset_dir, tmp_path):
    """A researcher's own architecture: one registry entry (here a VGG of three layer groups, so 8-px
    multiples), made at test time through the public registry only, then the whole chain from the
    command line, evaluate, both exports (run by onnxruntime and read by nir) and the hardware check."""
    from conftest import run_cli

    from stpcli.models.registry import ARCHITECTURES, register

    @register("vgg-mini")
    def _vgg_mini() -> dict:
        return {"family": "vgg", "depths": [1, 1, 2], "channels": [16, 32, 32], "hidden": [32]}

    try:
        common = ["--device", "cpu", "--batch-size", "16"]
        run_cli(["train-ann", "--arch", "vgg-mini", "--image-size", "24", "--epochs", "2", "--data", dataset_dir,
                 *common, "--out", tmp_path / "na.safetensors"])
        run_cli(["add-unit", tmp_path / "na.safetensors", "--as", "3", "--m", "1", "--epochs", "1", *common,
                 "--out", tmp_path / "nb.safetensors"])
        run_cli(["convert", tmp_path / "nb.safetensors", "--timesteps", "2", "--epochs", "1", "--calibration-images",
                 "16", *common, "--out", tmp_path / "sb_t2.safetensors"])
        run_cli(["temporal-prune", tmp_path / "sb_t2.safetensors", "--schedule", "1", "--epochs-per-stage", "1",
                 *common, "--out", tmp_path / "sb_t1.safetensors"])
        run_cli(["spatial-prune", tmp_path / "sb_t1.safetensors", "--epochs", "1", *common,
                 "--out", tmp_path / "sa_t1.safetensors"])
        sa = load_checkpoint(tmp_path / "sa_t1.safetensors")
        assert sa.model_spec["arch"] == "vgg-mini" and sa.model_spec["depths"] == [1, 1, 2] and sa.timesteps == 1
        assert "test split, 6 images" in run_cli(["evaluate", tmp_path / "sa_t1.safetensors", "--device", "cpu"]).stdout
        run_cli(["export", tmp_path / "sa_t1.safetensors", "--format", "onnx", "--out", tmp_path / "sa.onnx"])
        run_cli(["export", tmp_path / "sa_t1.safetensors", "--format", "nir", "--out", tmp_path / "sa.nir"])
        ort, nir = pytest.importorskip("onnxruntime"), pytest.importorskip("nir")
        session = ort.InferenceSession(str(tmp_path / "sa.onnx"), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {"image": torch.zeros(2, 3, 24, 24).numpy()})
        assert logits.shape == (2, len(sa.classes))
        assert "input" in nir.read(str(tmp_path / "sa.nir")).nodes
        assert "loihi2" in run_cli(["hardware", tmp_path / "sa_t1.safetensors", "--json"]).stdout
    finally:
        del ARCHITECTURES["vgg-mini"]
