"""The chip stage: ``quantize`` (a one-time-step SNN fine-tuned with fake-quantized weights, then
stored with its integer form: integer weights, per-channel steps, integer thresholds)."""

from __future__ import annotations

import torch

from stpcli.checkpoint import Checkpoint
from stpcli.errors import StpError
from stpcli.models.plan import build_plan
from stpcli.options import DataOptions, QuantizeOptions
from stpcli.restore import input_stats, model_from_checkpoint, require_kind
from stpcli.run import Run, load_checkpoint_data
from stpcli.schema import recorded_input
from stpcli.spiking.quantize import (
    IntegerSNN,
    check_quantizable,
    fake_quantize,
    integer_form,
    quantization_record,
    read_stored_values,
    remove_fake_quantization,
)
from stpcli.stages.saving import StageIO, child_record
from stpcli.stages.snn import recorded_recipe
from stpcli.stages.training import split_accuracy, train_and_finish


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
    stats = input_stats(source.record)
    check_quantizable(snn, parts.dataset.images.dtype)
    first_scale = read_stored_values(snn, stats)
    fake_quantize(snn, weight_bits, input_layer_bits, first_scale)
    stored = recorded_input(source.record)
    bands = len(stored["mean"])
    record = child_record(source, input={**source.record["input"], "mean": [0.0] * bands, "std": [1.0] * bands,
                                         "divisor": 1.0, "normalisation": "scale"},
                          quantized={**quantization_record(weight_bits, input_layer_bits),
                                     "float_input": {k: stored[k] for k in ("mean", "std", "divisor")}})
    before = split_accuracy(snn, parts, "test", record, run.runtime)
    run.say(f"[quantize] {weight_bits}-bit weights ({input_layer_bits}-bit first layer): test accuracy before "
            f"fine-tuning {before:.2f}% (float SNN {source.record.get('metrics', {}).get('test_accuracy', float('nan')):.2f}%)")
    torch.manual_seed(config.seed)

    def integer_network(snn):
        remove_fake_quantization(snn, first_scale)
        pixel_max = int(parts.dataset.images.abs().max())
        integers = integer_form(snn.cpu(), weight_bits, input_layer_bits, max(pixel_max, 1))
        return IntegerSNN(snn.spec, build_plan(snn.spec), {**snn.state_dict(), **integers}), integers

    return train_and_finish(run, snn, parts, config, record, io,
                            resume_identity={"parent": source.sha256, **options.stage_recorded()},
                            metrics={"test_accuracy_before_training": before}, options=recorded, parent=source,
                            trained=integer_network)
