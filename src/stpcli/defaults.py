"""The choices, the conversion recipes and the defaults that more than the options classes read, in
one torch-free place.

The stage options (``options.py``) take their choices and recipe defaults from here, and the chain,
the exporters and the record readers read the same values (a chain's T and Units, the LIF backend,
pooling), without importing torch or matplotlib, so ``stp --help`` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_UNITS = (5, 1)  # add-unit's --as and --m: one Unit at the end of layer group 5 (the paper's AS5)
DEFAULT_TIMESTEPS = 5  # convert's T
DEFAULT_SCHEDULE = (3, 2, 1)  # temporal-prune's --schedule
SPIKE_AMPLITUDES = ("threshold", "binary")
EXPORT_FORMATS = ("nir", "onnx")
MIN_INT8_AGREEMENT = 90.0  # export --quantize int8: % of the test images on which int8 must predict what fp32 does
FIGURE_FORMATS = (".png", ".pdf", ".svg")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
# how the LIF neurons run: torch (eager PyTorch; the default, chosen by measurement in docs/results.md),
# inductor (elementwise steps fused by torch.compile, the same results bit for bit), triton (CUDA kernels)
LIF_BACKENDS = ("torch", "inductor", "triton")
DEFAULT_LIF_BACKEND = "torch"
# train-ann's --pool: how VGG's pooling layers (and ResNet's stem pooling) pool the spike maps; max pooling
# keeps spikes binary (Akida 1.0 pools that way), average pooling is the paper's
POOLINGS = ("avg", "max")
DEFAULT_POOLING = "avg"
# options added after checkpoints and state files recorded their options, with what a record without
# them means (so a file from before an option existed is not taken for one made with other options)
UNRECORDED_OPTIONS = {"pool": DEFAULT_POOLING}


# flags renamed so that each means one thing across commands (train-ann's --scale scales the input and
# its --dropout is the ANN classifier's): command -> {old flag: new flag}; records keep the old names
RENAMED_OPTIONS = {"convert": {"scale": "threshold-scale", "dropout": "fc-dropout"}}


def with_unrecorded(recorded: dict, current: dict) -> dict:
    """``recorded`` options (or a resume identity) under today's names (RENAMED_OPTIONS), with what a
    record from before an option of ``current`` existed means by it (UNRECORDED_OPTIONS)."""
    renamed = {old: new for names in RENAMED_OPTIONS.values() for old, new in names.items()
               if new in current and old not in current}
    recorded = {renamed.get(key, key): value for key, value in recorded.items()}
    return {key: value for key, value in UNRECORDED_OPTIONS.items() if key in current} | recorded
BAD_IMAGE_POLICIES = ("fail", "skip")  # --on-bad-image
NORMALISATIONS = ("auto", "imagenet", "dataset", "scale", "stretch")  # train-ann's --normalise
SURROGATE_GAMMA = 0.3  # slope of the triangle surrogate (docs/method.md)
BALANCINGS = ("stp", "reference")  # convert's --balancing
CONV_DROPOUT_PLACEMENTS = ("all", "unpooled")  # convert's --conv-dropout-placement
MAX_BALANCE_STEPS = 10_000


@dataclass(frozen=True)
class Recipe:
    """The defaults a conversion recipe gives the options of the SNN stages (each option, given
    on the command line or in a preset, wins over its recipe's value)."""

    initial_membrane: float  # fraction of the threshold
    fold_thresholds: bool  # binary spikes: each threshold folded into the weights that read its spikes
    balancing: str  # "stp": scale applied layer by layer, sampled percentile; "reference": see spiking/convert.py
    balance_steps: int | None  # time steps simulated while balancing (None: the conversion's T)
    percentile: float
    scale: float  # threshold = scale x percentile
    conv_dropout: float
    conv_dropout_placement: str
    amsgrad: bool  # Adam's AMSGrad variant in every SNN stage


RECIPES = {
    # stp's defaults, each chosen by a measurement in docs/results.md
    "stp": Recipe(initial_membrane=0.5, fold_thresholds=True, balancing="stp", balance_steps=None, percentile=99.7,
                  scale=0.6, conv_dropout=0.0, conv_dropout_placement="all", amsgrad=False),
    # what TP's reference code computes (SayeedChowdhury/IIR-SNN, built on DIET-SNN; docs/method.md section 7);
    # DIET-SNN's own balancing: --percentile 99.7 --threshold-scale 0.3 --balance-steps 100
    "reference": Recipe(initial_membrane=0.0, fold_thresholds=False, balancing="reference", balance_steps=500,
                        percentile=90.0, scale=1.0, conv_dropout=0.2, conv_dropout_placement="unpooled", amsgrad=True),
}
DEFAULT_RECIPE = "stp"
INITIAL_MEMBRANE = RECIPES[DEFAULT_RECIPE].initial_membrane  # the neuron's default (0: DIET-SNN/TP)
