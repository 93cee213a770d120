"""The pipeline commands: train-ann, add-unit, convert, temporal-prune, spatial-prune.

Each declares its own options; the options every training command shares come from the groups in
``cli/common.py`` (``with_options``), with each command's recipe defaults.
"""

from __future__ import annotations

from typing import Annotated

import typer

from stpcli.cli.common import (
    ANN_TRAINING,
    COMMAND_OPTIONS,
    RECORDED_DATA,
    SNN_TRAINING,
    CacheDir,
    OnBadImage,
    Out,
    Source,
    make_data,
    make_io,
    make_run,
    make_train_config,
    resolve,
    stp_command,
    training_options,
    with_options,
)
from stpcli.data.catalogue import KNOWN_DATASETS
from stpcli.defaults import DEFAULT_POOLING, DEFAULT_RECIPE, DEFAULT_SCHEDULE, DEFAULT_TIMESTEPS, DEFAULT_UNITS, RECIPES
from stpcli.errors import StpError
from stpcli.models.registry import ARCHITECTURES

# The stages (and torch) are imported by each command when it runs, not when the CLI registers it.

app = typer.Typer()

UnitGroup = Annotated[int | None, typer.Option("--as", help="Layer group whose trailing layers are the Units: the paper's stage AS, 1-based (default: the recorded Units).")]
UnitCount = Annotated[int | None, typer.Option("--m", help="Number of Units (layers).")]


@stp_command(app, "train-ann")
@with_options(training_options(lr=0.05, optimizer="sgd", weight_decay=5e-4, lr_schedule="cosine"),
              [("on_bad_image", OnBadImage, "fail"), ("cache_dir", CacheDir, None)], COMMAND_OPTIONS)
def train_ann_command(
    ctx: typer.Context,
    out: Out,
    arch: Annotated[str, typer.Option("--arch", help=" | ".join(ARCHITECTURES) + ".")] = "vgg11",
    width: Annotated[float, typer.Option("--width", help="Channel width multiplier.")] = 1.0,
    data: Annotated[str | None, typer.Option("--data", help="ImageFolder root or data pack; default: the embedded synthetic dataset.")] = None,
    image_size: Annotated[int, typer.Option("--image-size", help="Training resolution (pixels).")] = 64,
    train_ratio: Annotated[float, typer.Option("--train-ratio", help="Training share of each class.")] = 0.8,
    val_ratio: Annotated[float, typer.Option("--val-ratio", help="Share of the training part kept for validation.")] = 0.1,
    known: Annotated[str | None, typer.Option("--dataset", help="The published dataset the data should be (" + ", ".join(KNOWN_DATASETS) + "): its classes and counts are compared and what differs is said; its band names name unnamed bands.")] = None,
    split_file: Annotated[str | None, typer.Option("--split-file", help="A published split instead of the seeded one: its training list (e.g. TorchGeo's uc_merced-train.txt), with the val and test lists beside it; one image per line.")] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 30,
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout in the classifier.")] = 0.5,
    pool: Annotated[str, typer.Option("--pool", help="avg (the paper's average pooling) | max (max pooling of spikes: they stay binary, as Akida 1.0 pools; see stp hardware). VGG's pooling layers and ResNet's stem; carried through every later stage.")] = DEFAULT_POOLING,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="Local torchvision ImageNet weights.")] = None,
    bands: Annotated[str | None, typer.Option("--bands", help="Read these bands of each file, in this order: 1-based numbers (4,3,2) or the names the files give (B04,B03,B02). Default: all bands of files that are not 8-bit RGB.")] = None,
    normalisation: Annotated[str, typer.Option("--normalise", help="auto (ImageNet's for 8-bit RGB without --scale, else dataset) | imagenet | dataset (per-band mean and std of the training split) | scale (--scale only) | stretch (per-image 2-98 % stretch to 8-bit grey, stp's earlier behaviour).")] = "auto",
    scale: Annotated[float | None, typer.Option("--scale", help="A fixed factor applied to stored values first (e.g. 1e-4 for Sentinel-2 reflectance). Default: 1/255 for 8-bit, 1 otherwise.")] = None,
    **options,
):
    """Train the base ANN (Na).

    Example: stp train-ann --arch vgg11 --width 0.5 --image-size 64 --data ucm16/ --epochs 60 --out na.safetensors
    """
    from stpcli.stages.ann import train_ann

    values = resolve(ctx, locals())
    run = make_run("train-ann", values)
    train_ann(run, arch=values["arch"], width=values["width"], image_size=values["image_size"],
              dropout=values["dropout"], data=make_data(values), train_ratio=values["train_ratio"],
              val_ratio=values["val_ratio"], config=make_train_config(values), io=make_io(values),
              pretrained=values["pretrained"], bands=values["bands"], normalisation=values["normalisation"],
              scale=values["scale"], split_file=values["split_file"], known=values["known"], pool=values["pool"])


@stp_command(app, "add-unit")
@with_options(ANN_TRAINING, RECORDED_DATA, COMMAND_OPTIONS)
def add_unit_command(
    ctx: typer.Context,
    source: Source,
    out: Out,
    unit_group: Annotated[int, typer.Option("--as", help="Layer group that receives the Units: the paper's stage AS, 1-based (VGG 1..5, ResNet 1..4).")] = DEFAULT_UNITS[0],
    count: Annotated[int, typer.Option("--m", help="Number of Units to add.")] = DEFAULT_UNITS[1],
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs for Nb (0: none).")] = 10,
    **options,
):
    """Step 1: insert M identity-initialised Units at the end of layer group AS, then fine-tune (Nb).

    Example: stp add-unit na.safetensors --as 5 --m 1 --epochs 10 --out nb.safetensors
    """
    from stpcli.checkpoint import load_checkpoint
    from stpcli.stages.ann import add_unit

    values = resolve(ctx, locals())
    run = make_run("add-unit", values)
    add_unit(run, load_checkpoint(values["source"]), unit_group=values["unit_group"], count=values["count"],
             config=make_train_config(values), data=make_data(values), io=make_io(values))


def _recipes_say(field: str) -> str:
    """What each recipe makes an option default to, for its help text."""
    return "default: the recipe's (" + "; ".join(f"{name} {getattr(r, field)}" for name, r in RECIPES.items()) + ")"


@stp_command(app, "convert")
@with_options(SNN_TRAINING, RECORDED_DATA, COMMAND_OPTIONS)
def convert_command(
    ctx: typer.Context,
    source: Source,
    out: Out,
    timesteps: Annotated[int, typer.Option("--timesteps", "-T", help="Initial time steps T_init.")] = DEFAULT_TIMESTEPS,
    recipe: Annotated[str, typer.Option("--recipe", help="stp (stp's defaults, chosen by measurement) | reference (what TP's and DIET-SNN's code computes: initial membrane 0, spikes into the unfolded weights, reference balancing, dropout after unpooled convolutions, AMSGrad). Sets the defaults of the options below and of the later SNN stages; an option given explicitly wins.")] = DEFAULT_RECIPE,
    percentile: Annotated[float | None, typer.Option("--percentile", help="Threshold = scale x this percentile of the input current; " + _recipes_say("percentile") + ".")] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="Threshold scale factor; " + _recipes_say("scale") + ".")] = None,
    calibration_images: Annotated[int, typer.Option("--calibration-images", help="Training images used for threshold balancing.")] = 512,
    balancing: Annotated[str | None, typer.Option("--balancing", help="stp (each threshold scaled as it is set; the percentile of a sample) | reference (earlier layers at unscaled thresholds, exact percentile, a layer that never fires gets 0.1, all scaled at the end); " + _recipes_say("balancing") + ".")] = None,
    balance_steps: Annotated[int | None, typer.Option("--balance-steps", help="Time steps simulated while balancing (the maximum over steps is kept); default: the recipe's (stp: T; reference 500, as TP's code; DIET-SNN's 100).")] = None,
    fold_thresholds: Annotated[bool | None, typer.Option("--fold-thresholds/--no-fold-thresholds", help="Binary spikes: fold each threshold into the weights that read its spikes, so the SNN computes the ANN's function (TP's and DIET-SNN's code does not); " + _recipes_say("fold_thresholds") + ".")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Hybrid (surrogate-gradient) training epochs at T.")] = 10,
    dropout: Annotated[float, typer.Option("--dropout", help="SNN dropout in hidden FC layers (one mask per image, shared by all steps).")] = 0.2,
    conv_dropout: Annotated[float | None, typer.Option("--conv-dropout", help="SNN dropout after convolutional neuron layers (one mask per image, shared by all steps); " + _recipes_say("conv_dropout") + ".")] = None,
    conv_dropout_placement: Annotated[str | None, typer.Option("--conv-dropout-placement", help="all (every convolutional neuron layer) | unpooled (as TP's and DIET-SNN's code: after convolutions not followed by pooling; in a ResNet after each block's first convolution); " + _recipes_say("conv_dropout_placement") + ".")] = None,
    initial_membrane: Annotated[float | None, typer.Option("--initial-membrane", help="Initial membrane as a fraction of the threshold (0: TP's and DIET-SNN's code); " + _recipes_say("initial_membrane") + ".")] = None,
    spike_amplitude: Annotated[str, typer.Option("--spike-amplitude", help="binary (a spike is 1, as in TP's and DIET-SNN's code) | threshold (a spike carries V).")] = "binary",
    **options,
):
    """Step 2a: ANN -> SNN (BN folding, threshold balancing), then hybrid training at T.

    Example: stp convert nb.safetensors --timesteps 5 --epochs 8 --lr 1e-3 --out sb_t5.safetensors
    """
    from stpcli.checkpoint import load_checkpoint
    from stpcli.stages.snn import convert

    values = resolve(ctx, locals())
    run = make_run("convert", values)
    convert(run, load_checkpoint(values["source"]), timesteps=values["timesteps"], data=make_data(values),
            io=make_io(values), teacher=values["teacher"], **conversion_arguments(values))


def conversion_arguments(values: dict) -> dict:
    """convert's recipe, neuron settings and conversion from its resolved values (None: the recipe's)."""
    from stpcli.spiking.settings import Conversion, SpikingSettings

    recipe = values["recipe"]
    if recipe not in RECIPES:
        raise StpError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    settings = SpikingSettings.for_recipe(recipe, dropout=values["dropout"], conv_dropout=values["conv_dropout"],
                                          conv_dropout_placement=values["conv_dropout_placement"],
                                          initial_membrane=values["initial_membrane"],
                                          spike_amplitude=values["spike_amplitude"])
    conversion = Conversion.for_recipe(recipe, percentile=values["percentile"], scale=values["scale"],
                                       calibration_images=values["calibration_images"], balancing=values["balancing"],
                                       balance_steps=values["balance_steps"], fold_thresholds=values["fold_thresholds"])
    return {"settings": settings, "conversion": conversion, "config": make_train_config(values).for_recipe(recipe)}


def timestep_recipes(values: dict) -> tuple[list[int], list]:
    """temporal-prune's schedule and one training recipe per T, from its resolved values."""
    from stpcli.chain import parse_schedule
    from stpcli.stages.snn import timestep_configs

    steps = parse_schedule(values["schedule"])
    base = make_train_config({k: v for k, v in values.items() if k != "lr_schedule"})  # set per T
    return steps, timestep_configs(base, steps, values["epochs_per_stage"], values["lr_schedule"])


@stp_command(app, "temporal-prune")
@with_options([entry for entry in SNN_TRAINING if entry[0] != "lr_schedule"], RECORDED_DATA, COMMAND_OPTIONS)
def temporal_prune_command(
    ctx: typer.Context,
    source: Source,
    out: Out,
    schedule: Annotated[str, typer.Option("--schedule", help="Descending time steps ending at 1, e.g. 3,2,1.")] = ",".join(map(str, DEFAULT_SCHEDULE)),
    epochs_per_stage: Annotated[str, typer.Option(
        "--epochs-per-stage", help="Training epochs at each T: one value, or one per T of --schedule (15,15,40).")] = "10",
    lr_schedule: Annotated[str, typer.Option(
        "--lr-schedule", help="step | cosine | constant: one, or one per T of --schedule (step,step,cosine).")] = "step",
    **options,
):
    """Step 2b: retrain at each T of the schedule down to T=1, one checkpoint per T.

    Example: stp temporal-prune sb_t5.safetensors --schedule 3,2,1 --out sb_t1.safetensors  (also writes sb_t3, sb_t2)
    """
    from stpcli.checkpoint import load_checkpoint
    from stpcli.stages.snn import temporal_prune

    values = resolve(ctx, locals())
    steps, configs = timestep_recipes(values)
    run = make_run("temporal-prune", values)
    temporal_prune(run, load_checkpoint(values["source"]), schedule=steps, configs=configs,
                   data=make_data(values), io=make_io(values), teacher=values["teacher"])


@stp_command(app, "spatial-prune")
@with_options(SNN_TRAINING, RECORDED_DATA, COMMAND_OPTIONS)
def spatial_prune_command(
    ctx: typer.Context,
    source: Source,
    out: Out,
    unit_group: UnitGroup = None,
    count: UnitCount = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs at the checkpoint's T.")] = 10,
    **options,
):
    """Step 3 (Algorithm 2): remove the Units, copy every other layer, fine-tune (Sa).

    Example: stp spatial-prune sb_t1.safetensors --out sa_t1.safetensors
    """
    from stpcli.checkpoint import load_checkpoint
    from stpcli.stages.snn import spatial_prune

    values = resolve(ctx, locals())
    run = make_run("spatial-prune", values)
    spatial_prune(run, load_checkpoint(values["source"]), unit_group=values["unit_group"],
                  count=values["count"], config=make_train_config(values), data=make_data(values),
                  io=make_io(values), teacher=values["teacher"])


@stp_command(app, "quantize")
@with_options(SNN_TRAINING, RECORDED_DATA, COMMAND_OPTIONS)
def quantize_command(
    ctx: typer.Context,
    source: Source,
    out: Out,
    weight_bits: Annotated[int, typer.Option("--weight-bits", help="Bits of every weight after the first layer: 8 | 4 | 2 (signed, one step per output channel).")] = 8,
    input_layer_bits: Annotated[int, typer.Option("--input-layer-bits", help="Bits of the first layer's weights, which read the stored image values: 8 | 4 | 2.")] = 8,
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs with fake-quantized weights (0: quantize as trained).")] = 4,
    **options,
):
    """A one-time-step SNN as integers for a chip: fine-tune with fake-quantized weights, then store
    integer weights, per-channel steps and integer thresholds (biases folded in); stp evaluate runs
    that integer network. See `stp hardware` for which chip it fits.

    Example: stp quantize sa_t1.safetensors --weight-bits 4 --epochs 4 --out sa_t1_w4.safetensors
    """
    from stpcli.checkpoint import load_checkpoint
    from stpcli.stages.quantize import quantize

    values = resolve(ctx, locals())
    run = make_run("quantize", values)
    quantize(run, load_checkpoint(values["source"]), weight_bits=values["weight_bits"],
             input_layer_bits=values["input_layer_bits"], config=make_train_config(values), data=make_data(values),
             io=make_io(values))
