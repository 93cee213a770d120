"""Every stage's options: one frozen dataclass per stage command (``STAGE_OPTIONS``), plus where a
command reads its images (``DataOptions``) and how it runs (``RunOptions``).

Each field carries its flag, help text and default, and each stage's class checks its values
(``check()``). Everything that knows an option derives from these classes: the CLI's signatures
(``cli/stages.py``), a preset's parsing (``preset_values``) and its checks (``cli/presets.py``), the
lineage record (``recorded()``), ``stp info --config`` (``option_field``) and the Python API, whose
stage functions take these objects, so Python's defaults are the CLI's. A new option of a stage is
one field here and the line of the stage that reads it.

Torch-free: the CLI registers its commands from these classes when it starts.
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from stpcli.chain import parse_schedule
from stpcli.data.catalogue import KNOWN_DATASETS
from stpcli.defaults import (
    BAD_IMAGE_POLICIES,
    BALANCINGS,
    CONV_DROPOUT_PLACEMENTS,
    DEFAULT_LIF_BACKEND,
    DEFAULT_POOLING,
    DEFAULT_RECIPE,
    DEFAULT_SCHEDULE,
    DEFAULT_TIMESTEPS,
    DEFAULT_UNITS,
    LIF_BACKENDS,
    MAX_BALANCE_STEPS,
    NORMALISATIONS,
    RECIPES,
    RENAMED_OPTIONS,
    SPIKE_AMPLITUDES,
)
from stpcli.engine.recipe import TRAIN_OPTIONS, TrainConfig
from stpcli.errors import StpError
from stpcli.models.registry import ARCHITECTURES
from stpcli.schema import check_timesteps
from stpcli.spiking.settings import Conversion, SpikingSettings

MAX_CALIBRATION_IMAGES = 1_000_000
MAX_THRESHOLD_SCALE = 100.0  # DIET-SNN uses 0.2-0.3, TP 1.0


def option(*declarations: str, default: Any, help: str, metavar: str | None = None, envvar: str | None = None) -> Any:
    """A field set by the command-line option ``declarations`` (as Typer takes them: ``"--timesteps",
    "-T"``; ``"--amsgrad/--no-amsgrad"`` for a switch with its negation)."""
    return field(default=default, metadata={"declarations": declarations, "help": help, "metavar": metavar,
                                            "envvar": envvar})


def flag(item: Field) -> str:
    """The name users know an option by: its first long flag without dashes (``as``, ``image-size``)."""
    return item.metadata["declarations"][0].split("/")[0][2:]


def option_fields(cls) -> list[Field]:
    return [item for item in fields(cls) if "declarations" in item.metadata]


def field_types(cls) -> dict[str, Any]:
    """Each field's real type (the annotations are strings under ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


class Options:
    """What every options class can do: be built from named values, and record itself."""

    @classmethod
    def from_values(cls, values: dict[str, Any]):
        """The options among ``values`` (a command's parameters by field name); the others ignored."""
        return cls(**{item.name: values[item.name] for item in fields(cls) if item.name in values})  # type: ignore[arg-type]

    def recorded(self) -> dict[str, Any]:
        """The options under their flag names, as the lineage records them."""
        return {flag(item): getattr(self, item.name) for item in option_fields(self)}


# --- where a command reads its images, and how it runs ---------------------------------------------

@dataclass(frozen=True)
class DataOptions(Options):
    """Where a command reads its images (``location``: a folder or pack; None: the recorded data or,
    for train-ann, the embedded set) and how it treats changed data and bad images."""

    location: str | None = option("--data", default=None,
                                  help="ImageFolder root or stp data pack; default: the recorded data (train-ann: the "
                                       "embedded synthetic dataset).")
    allow_data_change: bool = option("--allow-data-change", default=False, metavar="",
                                     help="Accept data whose fingerprint differs from the recorded one.")
    on_bad_image: str = option("--on-bad-image", default="fail", help="fail | skip images that do not decode.")
    cache_dir: Path | None = option("--cache-dir", default=None,
                                    help="Where decoded images are cached (default ~/.cache/stpcli).")

    def recorded(self) -> dict[str, Any]:
        return {**super().recorded(), "cache-dir": None if self.cache_dir is None else str(self.cache_dir)}

    def check(self) -> None:
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise StpError(f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {self.on_bad_image!r}")


@dataclass(frozen=True)
class RunOptions(Options):
    """How a stage command runs and writes; never part of what it makes (the LIF backend is recorded
    by the SNN stages as how their neurons ran)."""

    device: str = option("--device", default="auto", help="auto | cpu | cuda.")
    precision: str = option("--precision", default="fp32", help="fp32 | bf16 (autocast).")
    compile: bool = option("--compile", default=False, metavar="", help="torch.compile the training step.")
    lif_backend: str = option("--lif-backend", default=DEFAULT_LIF_BACKEND, envvar="STP_LIF_BACKEND",
                              help="How the LIF neurons run: " + " | ".join(LIF_BACKENDS) + " (torch: eager PyTorch; "
                                   "inductor: fused by torch.compile, the same results bit for bit, needs a C++ compiler "
                                   "on the CPU; triton: CUDA kernels). Recorded in the lineage.")
    force: bool = option("--force", default=False, metavar="", help="Overwrite an existing output / start over.")
    resume: bool = option("--resume", default=False, metavar="", help="Continue an interrupted run from its state file.")
    if_changed: bool = option("--if-changed", default=False, metavar="",
                              help="Make's rule, by lineage (what the Makefile, stp pipeline and stp study run): keep "
                                   "--out when it was made from the same input with the same options, rebuild it "
                                   "(saying which option changed) when not, resume an interrupted run.")
    config: Path | None = option("--config", default=None, help="YAML file of option values; flags win.")


# --- the training options every training stage has, each stage with its own defaults -----------------

def epochs_option(default: int, help: str = "Training epochs.") -> Any:
    return option(TRAIN_OPTIONS["epochs"], default=default, help=help)


def lr_option(default: float) -> Any:
    return option(TRAIN_OPTIONS["lr"], default=default, help="Learning rate (the schedule's peak).")


def optimizer_option(default: str) -> Any:
    return option(TRAIN_OPTIONS["optimizer"], default=default, help="sgd | adam.")


def weight_decay_option(default: float) -> Any:
    return option(TRAIN_OPTIONS["weight_decay"], default=default, help="L2 weight decay.")


def lr_schedule_option(default: str) -> Any:
    return option(TRAIN_OPTIONS["schedule"], default=default, help="step (divide by 5 at fixed fractions) | cosine | constant.")


@dataclass(frozen=True)
class Training(Options):
    """The recipe options of every training stage (``train_config()``; their flags are the engine
    recipe's, ``TRAIN_OPTIONS``); the ANN stages' defaults."""

    batch_size: int = option(TRAIN_OPTIONS["batch_size"], default=64, help="Global batch size.")
    lr: float = lr_option(0.01)
    optimizer: str = optimizer_option("sgd")
    momentum: float = option(TRAIN_OPTIONS["momentum"], default=0.9, help="SGD momentum.")
    weight_decay: float = weight_decay_option(5e-4)
    lr_schedule: str = lr_schedule_option("cosine")
    amsgrad: bool | None = option(TRAIN_OPTIONS["amsgrad"] + "/--no-amsgrad", default=None,
                                  help="Adam's AMSGrad variant (default: on in the reference recipe's SNN stages, else off).")
    seed: int = option(TRAIN_OPTIONS["seed"], default=0, help="Seed for split, initialisation, shuffling, augmentation.")

    def train_config(self, recipe: str | None = None) -> TrainConfig:
        """The engine's recipe; ``amsgrad`` None becomes the conversion recipe's (an SNN stage), or
        off (an ANN stage: ``recipe`` None)."""
        return TrainConfig(**self.recipe_values()).for_recipe(recipe)

    def recipe_values(self) -> dict[str, Any]:
        """The engine recipe's fields these options set (``TrainConfig``'s names)."""
        return {"epochs": getattr(self, "epochs", 0), "batch_size": self.batch_size, "optimizer": self.optimizer,
                "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "schedule": self.lr_schedule, "seed": self.seed, "amsgrad": self.amsgrad}

    def check(self) -> Any:
        """These options within their bounds, checked before anything is read."""
        self.train_config().check()

    def recorded(self, recipe: str | None = None) -> dict[str, Any]:
        """The options as the stage used them, under their flag names, as the lineage records them
        (``recipe``: the conversion recipe of an SNN stage's input, whose defaults it took)."""
        return {**self.stage_recorded(), **self.train_config(recipe).recorded()}

    def stage_recorded(self) -> dict[str, Any]:
        """The stage's own options (not the recipe's) under their flag names: with the recipe's
        (``TrainConfig``), what an interrupted run must share with the run that resumes it."""
        recipe = {"epochs", *recipe_field_names()}  # recorded from the engine's recipe (amsgrad resolved)
        return {flag(item): getattr(self, item.name) for item in option_fields(self) if item.name not in recipe}


@dataclass(frozen=True)
class SnnTraining(Training):
    """The SNN stages' recipe options: Adam at 1e-4 on a step schedule, and distillation."""

    lr: float = lr_option(1e-4)
    optimizer: str = optimizer_option("adam")
    weight_decay: float = weight_decay_option(0.0)
    lr_schedule: str = lr_schedule_option("step")
    distill: float = option(TRAIN_OPTIONS["distill_weight"], default=0.0,
                            help="Loss weight of matching the teacher's soft outputs, 0..1 (0: off).")
    distill_temperature: float = option(TRAIN_OPTIONS["distill_temperature"], default=4.0,
                                        help="Softmax temperature for --distill.")
    teacher: Path | None = option("--teacher", default=None,
                                  help="Checkpoint to distil from (default: the ANN this SNN was converted from).")

    def recipe_values(self) -> dict[str, Any]:
        return {**super().recipe_values(), "distill_weight": self.distill,
                "distill_temperature": self.distill_temperature}



def recipe_field_names() -> set[str]:
    """The options every (SNN) training stage shares, besides its epochs."""
    return {item.name for item in fields(SnnTraining)}


# --- the stages ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainAnnOptions(Training):
    """train-ann: the base ANN (Na)."""

    COMMAND: ClassVar[str] = "train-ann"

    arch: str = option("--arch", default="vgg11", help=" | ".join(ARCHITECTURES) + ".")
    width: float = option("--width", default=1.0, help="Channel width multiplier.")
    image_size: int = option("--image-size", default=64, help="Training resolution (pixels).")
    train_ratio: float = option("--train-ratio", default=0.8, help="Training share of each class.")
    val_ratio: float = option("--val-ratio", default=0.1, help="Share of the training part kept for validation.")
    known: str | None = option("--dataset", default=None,
                               help="The published dataset the data should be (" + ", ".join(KNOWN_DATASETS) + "): its "
                                    "classes and counts are compared and what differs is said; its band names name "
                                    "unnamed bands.")
    split_file: str | None = option("--split-file", default=None,
                                    help="A published split instead of the seeded one: its training list (e.g. "
                                         "TorchGeo's uc_merced-train.txt), with the val and test lists beside it; one "
                                         "image per line.")
    epochs: int = epochs_option(30)
    dropout: float = option("--dropout", default=0.5, help="Dropout in the classifier.")
    pool: str = option("--pool", default=DEFAULT_POOLING,
                       help="avg (the paper's average pooling) | max (max pooling of spikes: they stay binary, as "
                            "Akida 1.0 pools; see stp hardware). VGG's pooling layers and ResNet's stem; carried "
                            "through every later stage.")
    pretrained: str | None = option("--pretrained", default=None, help="Local torchvision ImageNet weights.")
    bands: str | None = option("--bands", default=None,
                               help="Read these bands of each file, in this order: 1-based numbers (4,3,2) or the names "
                                    "the files give (B04,B03,B02). Default: all bands of files that are not 8-bit RGB.")
    normalisation: str = option("--normalise", default="auto",
                                help="auto (ImageNet's for 8-bit RGB without --scale, else dataset) | imagenet | "
                                     "dataset (per-band mean and std of the training split) | scale (--scale only) | "
                                     "stretch (per-image 2-98 % stretch to 8-bit grey, stp's earlier behaviour).")
    scale: float | None = option("--scale", default=None,
                                 help="A fixed factor applied to stored values first (e.g. 1e-4 for Sentinel-2 "
                                      "reflectance). Default: 1/255 for 8-bit, 1 otherwise.")
    lr: float = lr_option(0.05)

    def check(self):
        """These options, checked before the data is read (the stage, and a preset's plan); returns the
        model spec they make (for 2 classes: the class count comes with the data)."""
        from stpcli.data.split import check_split_ratios, list_files
        from stpcli.models.registry import make_spec

        self.train_config().check(training_required=True)
        if self.normalisation not in NORMALISATIONS:
            raise StpError(f"--normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalisation!r}")
        if self.scale is not None and not (math.isfinite(self.scale) and 1e-12 <= self.scale <= 1e6):
            raise StpError(f"--scale must be a positive factor in [1e-12, 1e6] such as 1e-4, got {self.scale}")
        if self.scale is not None and self.normalisation in ("imagenet", "stretch"):
            raise StpError(f"--scale applies to --normalise dataset or scale, not {self.normalisation}")
        spec = make_spec(self.arch, 2, self.image_size, self.width, self.dropout, pool=self.pool)
        check_split_ratios(self.train_ratio, self.val_ratio)
        if self.split_file is not None:
            list_files(Path(self.split_file).expanduser())  # a name without 'train' is refused before any work
            if not Path(self.split_file).expanduser().is_file():
                raise StpError(f"--split-file {self.split_file} does not exist")
        if self.pretrained and not Path(self.pretrained).expanduser().is_file():
            raise StpError(f"--pretrained {self.pretrained} does not exist")
        if self.known is not None:
            from stpcli.data.catalogue import known_dataset

            known_dataset(self.known)
        return spec



@dataclass(frozen=True)
class AddUnitOptions(Training):
    """add-unit (Step 1): M identity-initialised Units at the end of layer group AS, then fine-tuning (Nb)."""

    COMMAND: ClassVar[str] = "add-unit"

    unit_group: int = option("--as", default=DEFAULT_UNITS[0],
                             help="Layer group that receives the Units: the paper's stage AS, 1-based (VGG 1..5, "
                                  "ResNet 1..4).")
    count: int = option("--m", default=DEFAULT_UNITS[1], help="Number of Units to add.")
    epochs: int = epochs_option(10, "Fine-tuning epochs for Nb (0: none).")


def recipe_option(declaration: str, name: str, help: str) -> Any:
    """An option whose default is the conversion recipe's ``Recipe.<name>`` (None until resolved); its
    help says what each recipe sets."""
    recipes = "; ".join(f"{recipe} {getattr(defaults, name)}" for recipe, defaults in RECIPES.items())
    return option(declaration, default=None, help=f"{help}; default: the recipe's ({recipes}).")


@dataclass(frozen=True)
class ConvertOptions(SnnTraining):
    """convert (Step 2a): ANN -> SNN at T, then hybrid training. An option left None takes the
    recipe's value (``resolved()``)."""

    COMMAND: ClassVar[str] = "convert"

    timesteps: int = option("--timesteps", "-T", default=DEFAULT_TIMESTEPS, help="Initial time steps T_init.")
    recipe: str = option("--recipe", default=DEFAULT_RECIPE,
                              help="stp (stp's defaults, chosen by measurement) | reference (what TP's and DIET-SNN's "
                                   "code computes: initial membrane 0, spikes into the unfolded weights, reference "
                                   "balancing, dropout after unpooled convolutions, AMSGrad). Sets the defaults of the "
                                   "options below and of the later SNN stages; an option given explicitly wins.")
    percentile: float | None = recipe_option("--percentile", "percentile",
                                             "Threshold = scale x this percentile of the input current")
    scale: float | None = recipe_option("--threshold-scale", "scale",
                                        "Threshold scale factor (formerly convert's --scale; train-ann's --scale "
                                        "scales the input)")
    calibration_images: int = option("--calibration-images", default=512,
                                     help="Training images used for threshold balancing.")
    balancing: str | None = recipe_option("--balancing", "balancing",
                                          "stp (each threshold scaled as it is set; the percentile of a sample) | "
                                          "reference (earlier layers at unscaled thresholds, exact percentile, a layer "
                                          "that never fires gets 0.1, all scaled at the end)")
    balance_steps: int | None = option("--balance-steps", default=None,
                                       help="Time steps simulated while balancing (the maximum over steps is kept); "
                                            "default: the recipe's (stp: T; reference 500, as TP's code; DIET-SNN's 100).")
    fold_thresholds: bool | None = recipe_option("--fold-thresholds/--no-fold-thresholds", "fold_thresholds",
                                                 "Binary spikes: fold each threshold into the weights that read its "
                                                 "spikes, so the SNN computes the ANN's function (TP's and DIET-SNN's "
                                                 "code does not)")
    epochs: int = epochs_option(10, "Hybrid (surrogate-gradient) training epochs at T.")
    dropout: float = option("--fc-dropout", default=0.2,
                            help="SNN dropout in hidden FC layers (one mask per image, shared by all steps; formerly "
                                 "convert's --dropout; train-ann's --dropout is the ANN's).")
    conv_dropout: float | None = recipe_option("--conv-dropout", "conv_dropout",
                                               "SNN dropout after convolutional neuron layers (one mask per image, "
                                               "shared by all steps)")
    conv_dropout_placement: str | None = recipe_option("--conv-dropout-placement", "conv_dropout_placement",
                                                       "all (every convolutional neuron layer) | unpooled (as TP's and "
                                                       "DIET-SNN's code: after convolutions not followed by pooling; in "
                                                       "a ResNet after each block's first convolution)")
    initial_membrane: float | None = recipe_option("--initial-membrane", "initial_membrane",
                                                   "Initial membrane as a fraction of the threshold (0: TP's and "
                                                   "DIET-SNN's code)")
    spike_amplitude: str = option("--spike-amplitude", default="binary",
                                  help="binary (a spike is 1, as in TP's and DIET-SNN's code) | threshold (a spike "
                                       "carries V).")

    def known_recipe(self) -> str:
        """``recipe``, refused in one line if stp has no such recipe."""
        if self.recipe not in RECIPES:
            raise StpError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        return self.recipe

    def settings(self) -> SpikingSettings:
        """The neurons' settings: the recipe's, with the options given applied."""
        return SpikingSettings.for_recipe(self.known_recipe(), dropout=self.dropout, conv_dropout=self.conv_dropout,
                                          conv_dropout_placement=self.conv_dropout_placement,
                                          initial_membrane=self.initial_membrane, spike_amplitude=self.spike_amplitude)

    def conversion(self) -> Conversion:
        """How the thresholds are set: the recipe's, with the options given applied."""
        return Conversion.for_recipe(self.known_recipe(), percentile=self.percentile, scale=self.scale,
                                     calibration_images=self.calibration_images, balancing=self.balancing,
                                     balance_steps=self.balance_steps, fold_thresholds=self.fold_thresholds)

    def check(self) -> None:
        """These options, checked before anything is read (the stage, and a preset's plan)."""
        check_timesteps(self.timesteps)
        self.train_config(self.known_recipe()).check()
        conversion, settings = self.conversion(), self.settings()
        if not 0 < conversion.percentile <= 100:
            raise StpError(f"--percentile must lie in (0, 100], got {conversion.percentile}")
        if not 0 < conversion.scale <= MAX_THRESHOLD_SCALE:
            raise StpError(f"--threshold-scale must lie in (0, {MAX_THRESHOLD_SCALE:g}], "
                           f"got {conversion.scale}")
        if not 0 < conversion.calibration_images <= MAX_CALIBRATION_IMAGES:
            raise StpError(f"--calibration-images must lie in 1..{MAX_CALIBRATION_IMAGES}, "
                           f"got {conversion.calibration_images}")
        if conversion.balancing not in BALANCINGS:
            raise StpError(f"--balancing must be one of {', '.join(BALANCINGS)}, got {conversion.balancing!r}")
        steps = conversion.balance_steps
        if steps is not None and (type(steps) is not int or not 1 <= steps <= MAX_BALANCE_STEPS):
            raise StpError(f"--balance-steps must lie in 1..{MAX_BALANCE_STEPS}, got {steps}")
        if not conversion.fold_thresholds and not settings.binary:
            raise StpError("--no-fold-thresholds needs --spike-amplitude binary (a spike of amplitude V carries its "
                           "threshold itself)")
        check_settings(settings)

    def used(self) -> ConvertOptions:
        """These options as the conversion uses them: the recipe's values where none was given."""
        names = {item.name for item in fields(self)}
        used = {**asdict(self.conversion()), **asdict(self.settings())}
        return replace(self, **{name: value for name, value in used.items() if name in names})

    def recorded(self, recipe: str | None = None) -> dict[str, Any]:
        """The options as the conversion used them: convert's recipe is its own ``--recipe`` (it
        makes the SNN), so ``recipe``, an input's recipe for the later stages, is not read."""
        return {**self.used().stage_recorded(), **self.train_config(self.known_recipe()).recorded()}


def check_settings(settings: SpikingSettings) -> None:
    """Neuron settings within their bounds (convert's options, and a record's)."""
    for name, value in (("--fc-dropout", settings.dropout), ("--conv-dropout", settings.conv_dropout),
                        ("--initial-membrane", settings.initial_membrane)):
        if not 0 <= value < 1:
            raise StpError(f"{name} must lie in [0, 1), got {value}")
    for name, choice, choices in (("--spike-amplitude", settings.spike_amplitude, SPIKE_AMPLITUDES),
                                  ("--conv-dropout-placement", settings.conv_dropout_placement, CONV_DROPOUT_PLACEMENTS),
                                  ("--recipe", settings.recipe, tuple(RECIPES))):
        if choice not in choices:
            raise StpError(f"{name} must be one of {', '.join(choices)}, got {choice!r}")
    if not settings.surrogate_gamma > 0:
        raise StpError(f"the surrogate slope must be positive, got {settings.surrogate_gamma}")


@dataclass(frozen=True)
class TemporalPruneOptions(SnnTraining):
    """temporal-prune (Step 2b): retraining at each T of the schedule down to T = 1. ``epochs_per_stage``
    and ``lr_schedule`` hold one value for every T ("15"), or one per T ("15,15,40"; "step,step,cosine")."""

    COMMAND: ClassVar[str] = "temporal-prune"

    schedule: str = option("--schedule", default=",".join(map(str, DEFAULT_SCHEDULE)),
                           help="Descending time steps ending at 1, e.g. 3,2,1.")
    epochs_per_stage: str = option("--epochs-per-stage", default="10",
                                   help="Training epochs at each T: one value, or one per T of --schedule (15,15,40).")
    lr_schedule: str = option(TRAIN_OPTIONS["schedule"], default="step",
                              help="step | cosine | constant: one, or one per T of --schedule (step,step,cosine).")

    def steps(self) -> list[int]:
        return parse_schedule(self.schedule)

    def train_configs(self, recipe: str | None = None) -> list[TrainConfig]:
        """One training recipe per T of the schedule."""
        steps = self.steps()
        try:
            counts = [int(c) for c in _per_timestep(self.epochs_per_stage, "--epochs-per-stage", steps)]
        except ValueError:
            raise StpError("--epochs-per-stage must be integers such as 15 or 15,15,40, "
                           f"got {self.epochs_per_stage!r}") from None
        schedules = _per_timestep(self.lr_schedule, "--lr-schedule", steps)
        base = replace(self, lr_schedule="step").train_config(recipe)
        return [replace(base, epochs=e, schedule=s) for e, s in zip(counts, schedules)]

    def check(self, source_timesteps: int | None = None) -> None:
        """These options, and against the input's T when it is known (the stage, and a preset's plan)."""
        steps = self.steps()
        for config in self.train_configs():
            config.check(training_required=True)
        if source_timesteps is not None and steps[0] > source_timesteps:
            raise StpError(f"--schedule starts at T={steps[0]}, above the checkpoint's T={source_timesteps}")

    def recorded(self, recipe: str | None = None) -> dict[str, Any]:
        """The options as the stage used them, with the recipe of its input."""
        configs = self.train_configs(recipe)
        return {"schedule": ",".join(map(str, self.steps())),
                "epochs-per-stage": _one_or_each([c.epochs for c in configs]),
                "lr-schedule": _one_or_each([c.schedule for c in configs]),
                **{k: v for k, v in configs[0].recorded().items() if k not in ("epochs", "lr-schedule")}}


def _per_timestep(text: str | int, name: str, schedule: list[int]) -> list[str]:
    values = [v.strip() for v in str(text).split(",")]
    if len(values) == 1:
        return values * len(schedule)
    if len(values) != len(schedule):
        raise StpError(f"{name} has {len(values)} values for the {len(schedule)} time steps of --schedule "
                       f"{','.join(map(str, schedule))}; give one value, or one per time step")
    return values


def _one_or_each(values: list) -> str:
    """How --epochs-per-stage and --lr-schedule spell per-T values: one value if all agree."""
    return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))


@dataclass(frozen=True)
class SpatialPruneOptions(SnnTraining):
    """spatial-prune (Step 3, Algorithm 2): the Units removed, every other layer copied, fine-tuning (Sa).
    ``unit_group`` and ``count`` None: the Units the checkpoint records."""

    COMMAND: ClassVar[str] = "spatial-prune"

    unit_group: int | None = option("--as", default=None,
                                    help="Layer group whose trailing layers are the Units: the paper's stage AS, "
                                         "1-based (default: the recorded Units).")
    count: int | None = option("--m", default=None, help="Number of Units (layers).")
    epochs: int = epochs_option(10, "Fine-tuning epochs at the checkpoint's T.")


@dataclass(frozen=True)
class QuantizeOptions(SnnTraining):
    """quantize: a one-time-step SNN fine-tuned with fake-quantized weights, then stored as integers."""

    COMMAND: ClassVar[str] = "quantize"

    weight_bits: int = option("--weight-bits", default=8,
                              help="Bits of every weight after the first layer: 8 | 4 | 2 (signed, one step per "
                                   "output channel).")
    input_layer_bits: int = option("--input-layer-bits", default=8,
                                   help="Bits of the first layer's weights, which read the stored image values: 8 | 4 | 2.")
    epochs: int = epochs_option(4, "Fine-tuning epochs with fake-quantized weights (0: quantize as trained).")

    def check(self) -> None:
        from stpcli.spiking.quantize import WEIGHT_BITS

        for name, bits in (("--weight-bits", self.weight_bits), ("--input-layer-bits", self.input_layer_bits)):
            if bits not in WEIGHT_BITS:
                raise StpError(f"{name} must be one of {', '.join(map(str, WEIGHT_BITS))}, got {bits}")
        self.train_config().check()


STAGE_OPTIONS: dict[str, type[Training]] = {cls.COMMAND: cls for cls in (
    TrainAnnOptions, AddUnitOptions, ConvertOptions, TemporalPruneOptions, SpatialPruneOptions, QuantizeOptions)}
"""Each stage command's options class."""


def command_classes(command: str) -> tuple[type[Options], ...]:
    """Every options class a stage command takes: its stage's, the data's, how it runs."""
    return (STAGE_OPTIONS[command], DataOptions, RunOptions)


def command_fields(command: str) -> list[Field]:
    """A stage command's option fields, the stage's own first, then its recipe's, the data's and how it
    runs; train-ann defines the data, so it has no --allow-data-change."""
    stage, recipe = option_fields(STAGE_OPTIONS[command]), recipe_field_names()
    items = ([item for item in stage if item.name not in recipe] + [item for item in stage if item.name in recipe]
             + option_fields(DataOptions) + option_fields(RunOptions))
    return [item for item in items if not (command == "train-ann" and item.name == "allow_data_change")]


def option_field(command: str, spelling: str) -> Field | None:
    """The field a preset key names by its flag (``image-size``, ``image_size``, ``--as``)."""
    key = str(spelling).lstrip("-").replace("_", "-")
    return next((item for item in command_fields(command) if flag(item) == key), None)


def recorded_field(command: str, key: str) -> Field | None:
    """The field a lineage record's option names, also under a name it had before (RENAMED_OPTIONS)."""
    return option_field(command, RENAMED_OPTIONS.get(command, {}).get(key, key))


def renamed_hint(command: str, spelling: str) -> str:
    """What an old flag of ``command`` is called now, as a hint ('' if it was not renamed)."""
    new = RENAMED_OPTIONS.get(command, {}).get(str(spelling).lstrip("-").replace("_", "-"))
    return f"; {command}'s {spelling} is now {new!r} (each flag means one thing across commands)" if new else ""


# --- presets: YAML files of option values, one section per command -----------------------------------

PRESET_ONLY_SECTIONS = ("study",)  # read by stp study, not an option section of a command


def preset_values(command: str, data: dict, path: Path) -> dict[str, tuple[str, Any]]:
    """The values a preset gives a stage command's options: field name -> (the key as written, the value
    converted to the option's type). A preset may hold one section per command (``train-ann:``,
    ``convert:``, ...) beside shared top-level keys; a command reads its own section (every key must be
    one of its options) and the shared keys it has an option for. Nothing is ignored without a word: a
    section must name a command, a shared key must be an option of some command, and a value must have
    its option's type (``2.9`` is not an integer, ``true`` is not a number)."""
    check_preset_layout(data, path)
    sections = {k for k, v in data.items() if isinstance(v, dict)}
    own = data.get(command, {}) if sections else data
    chosen: dict[str, tuple[str, Any, bool]] = {}
    for key, value in (data.items() if sections else []):
        item = None if key in sections else option_field(command, key)
        if item is not None and item.name != "config":
            chosen[item.name] = (key, value, False)
    for key, value in own.items():
        item = option_field(command, key)
        if item is None or item.name == "config":
            spellings = [flag(i) for i in command_fields(command)]
            close = difflib.get_close_matches(str(key), spellings, n=1)
            hint = renamed_hint(command, key) or (f"; did you mean {close[0]!r}?" if close else "")
            raise StpError(f"--config {path}: unknown option {key!r} for {command}{hint}")
        chosen[item.name] = (key, value, True)
    types = {name: kind for cls in command_classes(command) for name, kind in field_types(cls).items()}
    values = {}
    for name, (key, value, in_section) in chosen.items():
        where = f"--config {path}" + (f", {command}" if in_section and sections else "")
        values[name] = (key, converted(types[name], value, f"{where}: bad value for {key!r}"))
    return values


def converted(kind: Any, value: Any, what: str) -> Any:
    """``value`` (from YAML) as an option of type ``kind``, or one error line starting with ``what``."""
    kinds = [k for k in typing.get_args(kind) if k is not type(None)] or [kind]
    optional = type(None) in typing.get_args(kind)
    target = kinds[0]
    if value is None and optional:
        return None
    if target is bool:
        if not isinstance(value, bool):
            raise StpError(f"{what}: expected true or false, got {value!r}")
        return value
    if isinstance(value, (bool, dict, list)) or value is None:
        expected = "a single value" if isinstance(value, (dict, list)) else f"a value of type {target.__name__}"
        raise StpError(f"{what}: expected {expected}, got {value!r}")
    if target is int:
        if isinstance(value, float):
            raise StpError(f"{what}: expected an integer, got {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise StpError(f"{what}: {value!r} is not a valid integer") from None
    if target is float:
        try:
            return float(str(value).strip())
        except ValueError:
            raise StpError(f"{what}: {value!r} is not a valid float") from None
    if target is Path:
        return Path(str(value))
    return str(value)


def check_preset_layout(data: dict, path: Path) -> None:
    """Every section of a preset names a command, and every shared key is an option of one."""
    known_sections = [*STAGE_OPTIONS, *PRESET_ONLY_SECTIONS]
    shared = {flag(item) for command in STAGE_OPTIONS for item in command_fields(command)}
    shared |= {name.replace("-", "_") for name in shared}
    for key, value in data.items():
        key = str(key)
        if isinstance(value, dict):
            if key not in known_sections:
                close = difflib.get_close_matches(key.replace("_", "-"), known_sections, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise StpError(f"--config {path}: unknown section {key!r} (sections name commands){hint}")
        elif key in known_sections:
            raise StpError(f"--config {path}: section {key!r} must be a mapping of option names to values, got {value!r}")
        elif any(isinstance(v, dict) for v in data.values()) and key.lstrip("-") not in shared:
            close = difflib.get_close_matches(key, sorted(n for n in shared if "_" not in n), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StpError(f"--config {path}: unknown option {key!r} (not an option of any stage command){hint}")


def command_options(command: str, values: dict[str, Any]) -> tuple[Training, DataOptions, RunOptions]:
    """A stage command's three options objects from its values by field name (the others default)."""
    return (STAGE_OPTIONS[command].from_values(values), DataOptions.from_values(values),
            RunOptions.from_values(values))


def preset_command_options(command: str, data: dict, path: Path, arguments: dict[str, Any]):
    """What a stage command of a preset's chain runs with: its defaults, the preset's values, then
    ``arguments`` (field name -> value: what the chain's driver passes, e.g. ``--seed``) over them."""
    values = {name: value for name, (_, value) in preset_values(command, data, path).items()}
    return command_options(command, {**values, **arguments})


def recipe_table() -> str:
    """Each stage command's training defaults as a Markdown table (README's, checked by a test)."""
    lines = ["| command | epochs | optimizer | lr | lr schedule | weight decay | batch size |",
             "|---|---|---|---|---|---|---|"]
    for command, cls in STAGE_OPTIONS.items():
        options: Any = cls()
        epochs = getattr(options, "epochs", None)
        epochs = f"{epochs}" if epochs is not None else f"{options.epochs_per_stage} per T"
        lines.append(f"| `{command}` | {epochs} | {options.optimizer} | {options.lr:g} | {options.lr_schedule} | "
                     f"{options.weight_decay:g} | {options.batch_size} |")
    return "\n".join(lines) + "\n"
