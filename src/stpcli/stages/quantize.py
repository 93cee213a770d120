"""The chip stage: ``quantize`` (a one-time-step SNN fine-tuned with fake-quantized weights, then
stored with its integer form: integer weights, per-channel steps, integer thresholds)."""

from __future__ import annotations

import torch

from stpcli.checkpoint import Checkpoint, StageEntry
from stpcli.errors import StpError
from stpcli.models.plan import build_plan
from stpcli.options import DataOptions, QuantizeOptions
from stpcli.restore import input_stats, model_from_checkpoint, require_kind
from stpcli.run import Run, load_checkpoint_data
from stpcli.spiking.quantize import (
    IntegerSNN,
    check_quantizable,
    fake_quantize,
    integer_form,
    quantization_record,
    read_stored_values,
    remove_fake_quantization,
)
from stpcli.stages.saving import StageIO, child_record, finish_stage
from stpcli.stages.snn import recorded_recipe
from stpcli.stages.training import split_accuracy, train_stage


def quantize(run: Run, source: Checkpoint, options: QuantizeOptions | None = None, *, data: DataOptions | None = None,
             io: StageIO) -> Checkpoint:
    """Q: the SNN's first layer made to read stored image values, every synapse fake-quantized per
    output channel (``options.weight_bits``; the first layer ``input_layer_bits``), fine-tuned for
    ``options.epochs``, then stored with its integer form, which ``stp evaluate`` runs."""
    options, data = options or QuantizeOptions(), data or DataOptions()
    run = run.named("quantize")
    require_kind(source, "quantize", "snn")
    if source.record.get("quantized"):
        raise StpError(f"{source.path} is quantized already; quantize the float SNN it came from")
    options.check()
    weight_bits, input_layer_bits = options.weight_bits, options.input_layer_bits
    config = options.train_config(recorded_recipe(source))
    recorded = {**options.recorded(recorded_recipe(source)), **data.recorded()}
    existing = io.current(run, source, recorded)
    if existing is not None:
        return existing
    snn = model_from_checkpoint(source)
    io.check(will_train=config.epochs > 0, inputs=(source.path,))
    parts = load_checkpoint_data(run, source, data)
    check_quantizable(snn, input_stats(source.record), parts.dataset.images.dtype)
    stats = input_stats(source.record)
    first_scale = read_stored_values(snn, stats)
    fake_quantize(snn, weight_bits, input_layer_bits, first_scale)
    bands = len(source.record["input"]["mean"])
    record = child_record(source, input={**source.record["input"], "mean": [0.0] * bands, "std": [1.0] * bands,
                                         "divisor": 1.0, "normalisation": "scale"},
                          quantized={**quantization_record(weight_bits, input_layer_bits),
                                     "float_input": {k: source.record["input"][k] for k in ("mean", "std")}
                                     | {"divisor": source.record["input"].get("divisor", 255.0)}})
    before = split_accuracy(snn, parts, "test", record, run.runtime)
    run.say(f"[quantize] {weight_bits}-bit weights ({input_layer_bits}-bit first layer): test accuracy before "
            f"fine-tuning {before:.2f}% (float SNN {source.record.get('metrics', {}).get('test_accuracy', float('nan')):.2f}%)")
    metrics: dict = {"test_accuracy_before_training": before}
    torch.manual_seed(config.seed)
    if config.epochs > 0:
        result = train_stage(run, snn, parts, config, record, io,
                             {"parent": source.sha256, **options.stage_recorded()})
        metrics.update({"val_accuracy": result.best_val, "best_epoch": result.best_epoch,
                        "seconds": round(result.seconds, 1)})
    remove_fake_quantization(snn, first_scale)
    pixel_max = int(parts.dataset.images.abs().max())
    integers = integer_form(snn.cpu(), weight_bits, input_layer_bits, max(pixel_max, 1))
    integer = IntegerSNN(snn.spec, build_plan(snn.spec), {**snn.state_dict(), **integers})
    metrics["test_accuracy"] = split_accuracy(integer, parts, "test", record, run.runtime)
    run.say(f"[quantize] the integer network: test accuracy {metrics['test_accuracy']:.2f}%")
    entry = StageEntry(run.name, io.command, recorded, metrics)
    return finish_stage(run, snn, record, entry, io, parent=source, extra=integers)

