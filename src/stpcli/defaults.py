"""The commands' defaults and choices, in one torch-free place.

The CLI registers its commands from these (their defaults and help texts) without importing
torch or matplotlib, so ``stp --help`` answers at once; the stages, the chain and the exporters
read the same values from here.
"""

from __future__ import annotations

DEFAULT_UNITS = (5, 1)  # add-unit's --as and --m: one Unit at the end of layer group 5 (the paper's AS5)
DEFAULT_TIMESTEPS = 5  # convert's T
DEFAULT_SCHEDULE = (3, 2, 1)  # temporal-prune's --schedule
SPIKE_AMPLITUDES = ("threshold", "binary")
EXPORT_FORMATS = ("nir", "onnx")
FIGURE_FORMATS = (".png", ".pdf", ".svg")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
NORMALISATIONS = ("auto", "imagenet", "dataset", "scale", "stretch")  # train-ann's --normalise
SURROGATE_GAMMA = 0.3  # slope of the triangle surrogate (docs/method.md)
INITIAL_MEMBRANE = 0.5  # initial membrane as a fraction of the threshold (0: DIET-SNN/TP)
