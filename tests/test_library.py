"""The stages called from Python, without the CLI: what a notebook or another tool does."""

import torch

from stpcli.checkpoint import load_checkpoint
from stpcli.engine.runtime import setup_runtime
from stpcli.engine.train import SNN_MILESTONES, TrainConfig
from stpcli.spiking.network import SpikingSettings
from stpcli.stages.ann import add_unit, train_ann
from stpcli.stages.common import DataOptions, Stage, StageIO
from stpcli.stages.report import evaluate
from stpcli.stages.snn import convert, spatial_prune, temporal_prune


def test_the_whole_chain_from_python(dataset_dir, tmp_path):
    stage = Stage("library", setup_runtime("cpu"))
    data = DataOptions(location=str(dataset_dir))
    na = train_ann(stage, arch="vgg11", width=0.125, image_size=32, dropout=0.5, data=data, train_ratio=0.8,
                   val_ratio=0.1, config=TrainConfig(epochs=1, batch_size=16, lr=0.02),
                   io=StageIO(tmp_path / "na.safetensors"))
    nb = add_unit(stage, na, unit_stage=3, count=1, config=TrainConfig(epochs=0),
                  data=DataOptions(), io=StageIO(tmp_path / "nb.safetensors"))
    snn_recipe = TrainConfig(epochs=1, batch_size=16, optimizer="adam", lr=1e-3, weight_decay=0.0)
    sb = convert(stage, nb, timesteps=2, percentile=99.7, scale=0.6, calibration_images=16, config=snn_recipe,
                 data=DataOptions(), io=StageIO(tmp_path / "sb_t2.safetensors"),
                 settings=SpikingSettings(dropout=0.0))
    outputs = temporal_prune(stage, sb, schedule=[1], configs=[snn_recipe], data=DataOptions(),
                             io=StageIO(tmp_path / "sb_t1.safetensors"))
    sa = spatial_prune(stage, outputs[-1], unit_stage=None, count=None, config=TrainConfig(epochs=0),
                       data=DataOptions(), io=StageIO(tmp_path / "sa_t1.safetensors"))
    assert [h["stage"] for h in sa.history] == ["train-ann", "add-unit", "convert", "temporal-prune", "spatial-prune"]
    assert sa.timesteps == 1 and sa.model_spec["units"] is None
    assert sa.record["snn"]["spike_amplitude"] == "binary"
    # the SNN stages trained on the SNN recipe's step milestones, as the CLI's do
    state_free = load_checkpoint(tmp_path / "sb_t2.safetensors")
    assert state_free.sha256 == sb.sha256
    assert TrainConfig(epochs=10).milestones is None and SNN_MILESTONES == [0.6, 0.8, 0.9]
    result = evaluate(stage, sa, DataOptions())
    assert result["method"] == "STP" and result["images"] == 6 and torch.isfinite(torch.tensor(result["kappa"]))
