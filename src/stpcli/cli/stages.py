"""The pipeline commands: train-ann, add-unit, convert, temporal-prune, spatial-prune, quantize.

Each command's options are the fields of its stage's options class (``stpcli/options.py``), with
the data's and how it runs (``with_stage_options``); a command here only names the stage function
it calls and says what it does.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict

import typer

from stpcli.cli.common import Out, Source, make_io, make_run, stage_command_options, stp_command, with_stage_options
from stpcli.options import STAGE_OPTIONS

app = typer.Typer()

# command -> (module.function of the stage, the help text); the stages (and torch) are imported by a
# command when it runs, not when the CLI registers it
STAGE_FUNCTIONS = {
    "train-ann": ("stpcli.stages.ann.train_ann", """Train the base ANN (Na).

    Example: stp train-ann --arch vgg11 --width 0.5 --image-size 64 --data ucm16/ --epochs 60 --out na.safetensors
    """),
    "add-unit": ("stpcli.stages.ann.add_unit", """Step 1: insert M identity-initialised Units at the end of layer group AS, then fine-tune (Nb).

    Example: stp add-unit na.safetensors --as 5 --m 1 --epochs 10 --out nb.safetensors
    """),
    "convert": ("stpcli.stages.snn.convert", """Step 2a: ANN -> SNN (BN folding, threshold balancing), then hybrid training at T.

    Example: stp convert nb.safetensors --timesteps 5 --epochs 8 --lr 1e-3 --out sb_t5.safetensors
    """),
    "temporal-prune": ("stpcli.stages.snn.temporal_prune", """Step 2b: retrain at each T of the schedule down to T=1, one checkpoint per T.

    Example: stp temporal-prune sb_t5.safetensors --schedule 3,2,1 --out sb_t1.safetensors  (also writes sb_t3, sb_t2)
    """),
    "spatial-prune": ("stpcli.stages.snn.spatial_prune", """Step 3 (Algorithm 2): remove the Units, copy every other layer, fine-tune (Sa).

    Example: stp spatial-prune sb_t1.safetensors --out sa_t1.safetensors
    """),
    "quantize": ("stpcli.stages.quantize.quantize", """A one-time-step SNN as integers for a chip: fine-tune with fake-quantized weights, then store integer
    weights, per-channel steps and integer thresholds (biases folded in); stp evaluate runs that integer network.
    See `stp hardware` for which chip it fits.

    Example: stp quantize sa_t1.safetensors --weight-bits 4 --epochs 4 --out sa_t1_w4.safetensors
    """),
}


def _stage_function(command: str):
    module, name = STAGE_FUNCTIONS[command][0].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _register(command: str) -> None:
    """One stage command: its options checked (and filled from --config), its input read, its stage run."""
    if command == "train-ann":  # the first stage reads no checkpoint
        def run(ctx: typer.Context, out: Out, **values):
            options, data, running = stage_command_options(ctx, command, values)
            _stage_function(command)(make_run(command, asdict(running)), options, data=data, io=make_io(out, running))
    else:
        def run(ctx: typer.Context, source: Source, out: Out, **values):  # type: ignore[misc]
            from stpcli.checkpoint import load_checkpoint

            options, data, running = stage_command_options(ctx, command, values)
            _stage_function(command)(make_run(command, asdict(running)), load_checkpoint(source), options, data=data,
                                     io=make_io(out, running))
    run.__doc__ = STAGE_FUNCTIONS[command][1]
    run.__name__ = command.replace("-", "_") + "_command"
    stp_command(app, command)(with_stage_options(command)(run))


for _command in STAGE_OPTIONS:  # a stage without its function here fails at start-up, never silently
    _register(_command)
