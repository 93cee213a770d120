"""The checkpoint format: round trip, atomic writes, refusal of foreign, corrupt and future files."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_reliability import refused

from stpcli.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    read_record,
    save_checkpoint,
)
from stpcli.engine.train import changed_options
from stpcli.errors import StpError
from stpcli.files import check_output, finish_outputs, sha256_file
from stpcli.models.plan import build_plan, tensor_shapes
from stpcli.models.registry import make_spec
from stpcli.models.surgery import with_units
from stpcli.stages.saving import differences


def sample_record(kind="snn"):
    return {
        "kind": kind,
        "model": with_units(make_spec("vgg11", 2, 32, 0.125, 0.5), 5, 1),
        "classes": ["a", "b"],
        "input": {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
        "data": {"kind": "folder", "path": "/data/x", "fingerprint": "f" * 64, "num_files": 10},
        "split": {"train_ratio": 0.8, "val_ratio": 0.1, "seed": 3, "files": {"train": ["a/1"], "val": [], "test": ["b/2"]},
                  "sha256": "s"},
        "timesteps": 2 if kind == "snn" else None,
        "snn": {"surrogate_gamma": 0.3, "initial_membrane": 0.5} if kind == "snn" else None,
        "history": [{"stage": "train-ann", "command": "stp train-ann", "options": {"lr": 0.1}, "metrics": {"test_accuracy": 50.0},
                     "parent": None, "finished": "2026-01-01T00:00:00+00:00"}],
        "metrics": {"test_accuracy": 50.0},
    }


def sample_tensors(record: dict) -> dict[str, torch.Tensor]:
    """Random tensors of the model the record describes (names and shapes from the layer plan);
    thresholds positive and leaks in [0, 1], as a model's are."""
    shapes = tensor_shapes(build_plan(record["model"]), record["kind"], binary=False)
    return {name: torch.tensor(3) if name.endswith("num_batches_tracked")
            else torch.rand(shape).clamp(min=0.01) if name.endswith((".threshold", ".leak")) else torch.randn(shape)
            for name, shape in shapes.items()}


def test_round_trip_keeps_every_field_and_tensor(tmp_path):
    tensors = sample_tensors(sample_record())
    path = tmp_path / "c.safetensors"
    digest = save_checkpoint(Checkpoint(tensors, sample_record()), path)
    loaded = load_checkpoint(path)
    assert digest == sha256_file(path) == loaded.sha256
    for key, value in sample_record().items():
        assert loaded.record[key] == value
    assert loaded.record["format_version"] == FORMAT_VERSION and loaded.record["tool_version"]
    assert set(loaded.tensors) == set(tensors)
    for key in tensors:
        assert torch.equal(loaded.tensors[key], tensors[key])
    assert read_record(path) == loaded.record
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_a_format_1_file_is_read_in_this_format_and_its_child_is_written_in_it(tmp_path):
    """Format 1 named a Unit's layer group ``units.stage``; such files still load, unchanged on disk."""
    old = sample_record() | {"format": "stp-checkpoint", "format_version": 1, "tool_version": "0.4.0",
                             "created": "2026-01-01T00:00:00+00:00"}
    old["model"] = old["model"] | {"units": {"stage": 5, "count": 1}}
    path = tmp_path / "old.safetensors"
    save_file(sample_tensors(sample_record()), str(path), metadata={"stp": json.dumps(old)})
    digest = sha256_file(path)
    loaded = load_checkpoint(path)
    assert loaded.model_spec["units"] == {"group": 5, "count": 1} and loaded.record["format_version"] == 2
    assert loaded.sha256 == digest == sha256_file(path) and read_record(path)["model"]["units"]["group"] == 5
    save_checkpoint(Checkpoint(loaded.tensors, loaded.record), tmp_path / "child.safetensors")
    child = read_record(tmp_path / "child.safetensors")
    assert child["format_version"] == FORMAT_VERSION == 2 and child["model"]["units"] == {"group": 5, "count": 1}


def test_output_rules(tmp_path):
    existing = tmp_path / "x.safetensors"
    existing.write_bytes(b"keep me")
    with pytest.raises(StpError, match="exists; pass --force"):
        check_output(existing, force=False, suffix=".safetensors")
    check_output(existing, force=True, suffix=".safetensors")
    with pytest.raises(StpError, match="must end in .safetensors"):
        check_output(tmp_path / "x.pt", force=False, suffix=".safetensors")
    linked = tmp_path / "hard-link.safetensors"
    os.link(existing, linked)
    with pytest.raises(StpError, match="is this command's input"):  # one file by inode, even with --force
        check_output(linked, force=True, inputs=(existing,))
    for not_a_file in (tmp_path, Path("/dev/null")):
        with pytest.raises(StpError, match="not a regular file"):
            check_output(not_a_file, force=True)
    assert existing.read_bytes() == b"keep me"
    # a missing folder is created, and removed again (while empty) when the command fails
    nested = tmp_path / "runs" / "a" / "x.safetensors"
    check_output(nested, force=False)
    assert nested.parent.is_dir()
    finish_outputs(succeeded=False)
    assert not (tmp_path / "runs").exists()
    check_output(nested, force=False)
    finish_outputs(succeeded=True)
    assert nested.parent.is_dir()



def test_refuses_foreign_corrupt_truncated_and_future_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(StpError, match="not an stp checkpoint"):
        load_checkpoint(foreign)
    good = tmp_path / "good.safetensors"
    save_checkpoint(Checkpoint(sample_tensors(sample_record()), sample_record()), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(StpError, match="not a readable safetensors"):
        load_checkpoint(truncated)
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    with pytest.raises(StpError, match="not a readable safetensors"):
        load_checkpoint(text)
    future = tmp_path / "future.safetensors"
    record = sample_record() | {"format": "stp-checkpoint", "format_version": FORMAT_VERSION + 1}
    save_file(sample_tensors(record), str(future), metadata={"stp": json.dumps(record)})
    with pytest.raises(StpError, match="newer than this stp"):
        load_checkpoint(future)
    with pytest.raises(StpError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(StpError, match="ANN checkpoint"):
        load_checkpoint(good, expect_kind="ann")


def test_a_record_from_before_pool_existed_means_average_pooling(tmp_path):
    """Checkpoints and state files written before train-ann's --pool hold no pool: they average, and
    a rerun with the default neither rebuilds nor refuses to resume them; --pool max does, by name."""
    spec = make_spec("vgg11", 10, 32, 0.25)
    del spec["pool"]
    assert {entry["mode"] for entry in build_plan(spec) if entry["type"] == "pool"} == {"avg"}
    entry = {"stage": "train-ann", "options": {"arch": "vgg11"}}
    assert differences(entry, "train-ann", None, {"arch": "vgg11", "pool": "avg"}) == []
    assert differences(entry, "train-ann", None, {"arch": "vgg11", "pool": "max"}) == [
        "options changed: --pool avg -> max"]
    assert changed_options({"arch": "vgg11"}, {"arch": "vgg11", "pool": "avg"}) == []
    assert changed_options({"arch": "vgg11"}, {"arch": "vgg11", "pool": "max"}) == ["--pool"]  # named by its flag
    assert changed_options({"timesteps": 5}, {"timesteps": 5}) == []  # other stages have no pool
    refused(["train-ann", "--pool", "min", "--out", tmp_path / "na.safetensors"], "--pool must be one of avg, max",
            tmp_path / "na.safetensors")


def test_the_record_schema_accepts_exactly_the_values_the_options_offer():
    """Each closed set of values a record holds is spelt twice, as the options' choices and as the
    schema's types; a value an option offers that the schema refuses would make files stp cannot read."""
    import typing

    from stpcli.checkpoint import KINDS
    from stpcli.defaults import CONV_DROPOUT_PLACEMENTS, NORMALISATIONS, POOLINGS, RECIPES, SPIKE_AMPLITUDES
    from stpcli.models.plan import PLAN_BUILDERS
    from stpcli.schema import InputSpec, NeuronRecord, Quantized, Record
    from stpcli.spec import ModelSpec
    from stpcli.spiking.quantize import WEIGHT_BITS

    def accepted(annotation):
        return set(typing.get_args(annotation))

    spec = typing.get_type_hints(ModelSpec)
    assert accepted(spec["pool"]) == set(POOLINGS)
    assert accepted(spec["family"]) == set(PLAN_BUILDERS)
    assert accepted(NeuronRecord.model_fields["spike_amplitude"].annotation) == set(SPIKE_AMPLITUDES)
    assert accepted(NeuronRecord.model_fields["conv_dropout_placement"].annotation) == set(CONV_DROPOUT_PLACEMENTS)
    assert accepted(NeuronRecord.model_fields["recipe"].annotation) == set(RECIPES)
    assert accepted(InputSpec.model_fields["normalisation"].annotation) == set(NORMALISATIONS) - {"auto"}
    for bits in ("weight_bits", "input_layer_bits"):
        assert accepted(Quantized.model_fields[bits].annotation) == set(WEIGHT_BITS)
    assert accepted(Record.model_fields["kind"].annotation) == set(KINDS)
